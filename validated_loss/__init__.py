"""validated_loss: fused, validated cross-entropy for PyTorch.

Drop-in replacements for torch.nn.CrossEntropyLoss and torch.nn.functional.cross_entropy whose
kernels read the logits once per pass and check the targets in that same pass.
"""

import os as _os
import warnings as _warnings

import torch as _torch

from . import _torch_support

# The compiled extension is checked against the running torch: a build for another torch may fail
# to load (the error then says why and how to rebuild) or load and misbehave (a warning says so,
# once: this runs once per process). A library named by VALIDATED_LOSS_C_LIBRARY (the tests'
# emulated CUDA build, see _library.py) is not the build _build_info describes: no check then.
_checked = not _os.environ.get("VALIDATED_LOSS_C_LIBRARY")
try:
    from . import _build_info
except ImportError:  # a source tree never built
    _build_info = None
try:
    from ._library import _C  # noqa: F401
except (ImportError, OSError) as _error:
    if not _checked:
        raise
    _failure = _torch_support.load_failure(_build_info, _torch.__version__, _torch.version.cuda, _error)
    raise ImportError(_failure) from _error
_mismatch = _checked and _build_info and _torch_support.mismatch_warning(
    _build_info, _torch.__version__, _torch.version.cuda, _torch_support.gpu_visible())
if _mismatch:
    _warnings.warn(_mismatch, _torch_support.TorchMismatchWarning, stacklevel=2)

from . import _ops, _autograd  # noqa: F401  (the ops and their fake kernels; their autograd)
from ._deferred import check_pending as check_deferred
from .diagnostics import *  # noqa: F401,F403  (exception classes, check_batch)
from .diagnostics import __all__ as _diagnostics_all
from .functional import cross_entropy
from .linear import linear_cross_entropy
from .loss import CrossEntropyLoss, LinearCrossEntropyLoss
from ._linear_module import LinearCrossEntropyOptions  # torch's, or the same fields where torch lacks it
from . import data, memory, patching  # noqa: F401  (the tools' public paths: validated_loss.data, ...)
from .tools.patching import is_patched, patch, patched, unpatch
from .tools.memory import empty_cache, gradient_cache_bytes, gradient_cache_disabled, set_gradient_cache_limit

__version__ = "0.1.0"

__all__ = ["CrossEntropyLoss", "cross_entropy", "check_deferred", "LinearCrossEntropyLoss", "LinearCrossEntropyOptions",
           "linear_cross_entropy", "patch", "unpatch", "patched", "is_patched", "empty_cache", "gradient_cache_bytes",
           "gradient_cache_disabled",
           "set_gradient_cache_limit", *_diagnostics_all]
