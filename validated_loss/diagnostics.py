"""validated_loss.diagnostics: the public names of the package's diagnostics, in one place.

The code lives in modules of one job each: errors.py (the exception classes), checks.py
(check_inputs: torch's metadata checks in torch's order), hints.py (likely causes and fixes),
batch_check.py (check_batch, a report instead of an exception), target_range.py (out-of-range
targets found with torch ops) and _reference.py (target_status, the status record in torch ops).
This module re-exports them so that `validated_loss.diagnostics.X` keeps working.
"""

from .batch_check import BatchReport, check_batch
from .checks import check_inputs
from .checks import check_inplace_backward, logits_modified_error  # noqa: F401
from ._autocast import autocast_dtype, autocast_enabled  # noqa: F401
from .errors import *  # noqa: F401,F403  (the exception classes)
from .errors import __all__ as _errors_all
from ._reference import target_status  # noqa: F401

__all__ = [*_errors_all, "check_inputs", "check_batch", "BatchReport"]
