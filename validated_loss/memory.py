"""validated_loss.memory: the CPU gradient cache's controls. The code is in
validated_loss/tools/memory.py; this is its public import path."""

from .tools.memory import *  # noqa: F401,F403
from .tools.memory import __all__  # noqa: F401
