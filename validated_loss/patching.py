"""validated_loss.patching: patch(), unpatch(), patched(), is_patched(). The code is in
validated_loss/tools/patching.py; this is its public import path."""

from .tools.patching import *  # noqa: F401,F403
from .tools.patching import __all__  # noqa: F401
