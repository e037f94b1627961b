"""validated_loss: fused, validated cross-entropy for PyTorch.

Drop-in replacements for torch.nn.CrossEntropyLoss and torch.nn.functional.cross_entropy whose
kernels read the logits once per pass and check the targets in that same pass.
"""

from . import _ops  # noqa: F401  (registers the ops, their fake kernels and autograd)
from ._deferred import check_pending as check_deferred
from .diagnostics import *  # noqa: F401,F403  (exception classes, check_batch)
from .diagnostics import __all__ as _diagnostics_all
from .functional import cross_entropy
from .linear import linear_cross_entropy
from .loss import CrossEntropyLoss, LinearCrossEntropyLoss
from ._linear_module import LinearCrossEntropyOptions  # torch's, or the same fields where torch lacks it
from . import data  # check_loader
from .patching import patch, patched, unpatch
from .memory import empty_cache, gradient_cache_bytes, gradient_cache_disabled, set_gradient_cache_limit

__version__ = "0.1.0"

__all__ = ["CrossEntropyLoss", "cross_entropy", "check_deferred", "LinearCrossEntropyLoss", "LinearCrossEntropyOptions",
           "linear_cross_entropy",
           "patch", "unpatch", "patched", "empty_cache", "gradient_cache_bytes", "gradient_cache_disabled",
           "set_gradient_cache_limit", *_diagnostics_all]
