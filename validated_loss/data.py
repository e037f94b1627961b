"""validated_loss.data: check_loader. The code is in validated_loss/tools/data.py; this is its public
import path."""

from .tools.data import *  # noqa: F401,F403
from .tools.data import __all__  # noqa: F401
