"""The one typed boundary to the compiled ops: loads _C, mirrors the C++ enums, registers each op's
fake kernel, and wraps each op in a Python function with named arguments. No other module of the
package touches torch.ops.validated_loss (tests/test_package_layout.py checks it).

The schemas themselves are written once, in csrc/ops.cpp. Fake kernels give output metadata for
torch.compile and meta tensors; they must match what the C++ kernels allocate. Autograd for the
ops is registered by _autograd.py, the forward op's in C++ (csrc/autograd.cpp).
"""

import enum
from typing import NamedTuple

import torch

from ._library import _C  # noqa: F401  (loading the library registers torch.ops.validated_loss)

ops = torch.ops.validated_loss  # the tests call the raw ops through this name too


class Reduction(enum.IntEnum):
    """csrc/xent_row.h's `enum Reduction` (tests/test_package_layout.py compares the two); the values
    are torch's own (torch.nn._reduction.get_enum)."""
    NONE = 0
    MEAN = 1
    SUM = 2

    @property
    def label(self) -> str:
        """torch's name for it: 'none', 'mean' or 'sum'."""
        return _REDUCTION_LABELS[self]


_REDUCTION_LABELS = {Reduction.NONE: "none", Reduction.MEAN: "mean", Reduction.SUM: "sum"}


class Validate(enum.IntEnum):
    """The ops' `validate` argument (csrc/ops.cpp documents it; csrc/validation/deferred_cuda.cu acts on it)."""
    OFF = 0
    SYNC = 1
    DEFERRED = 2


# validate= as users spell it.
VALIDATE_NAMES = {"off": int(Validate.OFF), "sync": int(Validate.SYNC), "deferred": int(Validate.DEFERRED)}


class LossOptions(NamedTuple):
    """Everything a loss op takes besides its tensors, as one immutable value. reduction and
    validate hold Reduction and Validate values, as plain ints (what the ops and torch.compile's
    graphs take); softcap 0 means none (the ops' encoding)."""
    reduction: int = int(Reduction.MEAN)
    ignore_index: int = -100
    label_smoothing: float = 0.0
    lse_square_scale: float = 0.0
    softcap: float = 0.0
    check_finite: bool = False
    validate: int = int(Validate.SYNC)


def accumulate_dtype(dtype):
    """float64 logits accumulate in float64, all others in float32 (as the kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_shape(logits):
    return logits.shape[:1] + logits.shape[2:]


def loss_dtype(logits, acc_loss):
    """The forward ops' loss dtype: the logits', or the accumulate dtype for acc_loss (autocast)."""
    return accumulate_dtype(logits.dtype) if acc_loss else logits.dtype


# ---------------------------------------------------------------------------------------------
# Typed wrappers: one per op, the options passed as one value.

_fwd, _bwd, _bwd_inplace, _fwd_grad = (ops.cross_entropy_fwd, ops.cross_entropy_bwd, ops.cross_entropy_bwd_,
                                       ops.cross_entropy_fwd_grad)


def forward(logits, target, weight, o: LossOptions, acc_loss=False, inplace_backward=False):
    """Class-index loss: (loss, lse (max, log_sum) per row, total weight, status)."""
    return _fwd(logits, target, weight, o.reduction, o.ignore_index, o.label_smoothing, o.check_finite, o.validate,
                o.lse_square_scale, o.softcap, acc_loss, inplace_backward)


def backward(grad_loss, logits, target, weight, lse, total_weight, o: LossOptions, grad_lse=None):
    """d loss / d logits (plus grad_lse times d log_sum / d logits)."""
    return _bwd(grad_loss, logits, target, weight, lse, total_weight, o.reduction, o.ignore_index,
                o.label_smoothing, o.lse_square_scale, o.softcap, grad_lse)


def backward_in_place(logits, grad_loss, target, weight, lse, total_weight, o: LossOptions, grad_lse=None):
    """The same gradient written over the logits."""
    _bwd_inplace(logits, grad_loss, target, weight, lse, total_weight, o.reduction, o.ignore_index,
                 o.label_smoothing, o.lse_square_scale, o.softcap, grad_lse)


def forward_grad(logits, target, weight, o: LossOptions, grad_loss=None, grad_lse=None):
    """linear_cross_entropy's chunk step: the forward, then the gradient written over the logits."""
    return _fwd_grad(logits, target, weight, o.reduction, o.ignore_index, o.label_smoothing, o.lse_square_scale,
                     o.softcap, grad_loss, grad_lse, o.check_finite, o.validate)


def row_lse(logits):
    """(max, log_sum) of each row of (N, C, d1..dk) logits, shape (R, 2), from the kernel's own row
    pass (target 0, a valid class, keeps every row), without validation."""
    dummy = torch.zeros(rows_shape(logits), dtype=torch.int64, device=logits.device)
    return forward(logits, dummy, None, _ROW_LSE)[1]


_ROW_LSE = LossOptions(reduction=int(Reduction.NONE), validate=int(Validate.OFF))


def prob_forward(logits, target, weight, reduction, label_smoothing, check_finite, acc_loss=False):
    """Probability targets: (loss, lse, status)."""
    return ops.cross_entropy_prob_fwd(logits, target, weight, reduction, label_smoothing, check_finite, acc_loss)


def prob_backward(grad_loss, logits, target, weight, lse, reduction, label_smoothing, target_grad):
    """(d loss / d logits, d loss / d target or an empty tensor)."""
    return ops.cross_entropy_prob_bwd(grad_loss, logits, target, weight, lse, reduction, label_smoothing, target_grad)


def raise_for_status(status, target_shape, num_classes, ignore_index, logits_shape):
    """Raise what a host status record describes (TargetOutOfRangeError, NonFiniteLogitsError)."""
    ops.raise_for_status(status, list(target_shape), num_classes, ignore_index, list(logits_shape))


def deferred_submit(status, target_shape, num_classes, ignore_index, logits_shape):
    """Queue a status record made elsewhere for the deferred check."""
    ops.deferred_submit(status, list(target_shape), num_classes, ignore_index, list(logits_shape))


def check_deferred():
    """Raise the first error an earlier call's queued or published status shows; never waits."""
    ops.check_deferred()


def empty_gradient_cache():
    return ops.empty_gradient_cache()


def set_gradient_cache_limit(limit):
    return ops.set_gradient_cache_limit(limit)


def gradient_cache_bytes():
    return ops.gradient_cache_bytes()


def set_gradient_cache_enabled(enabled):
    return ops.set_gradient_cache_enabled(enabled)


# ---------------------------------------------------------------------------------------------
# Fake kernels. The forward ops' are C++ Meta kernels (csrc/meta.cpp) built on the allocation
# routine the CPU and CUDA ops share (op_common's empty_forward_outputs); the backward ops'
# outputs are shaped like their inputs.


@torch.library.register_fake("validated_loss::cross_entropy_bwd")
def _bwd_fake(grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
              lse_square_scale=0.0, softcap=0.0, grad_lse=None):
    return torch.empty_like(logits)


@torch.library.register_fake("validated_loss::cross_entropy_bwd_")
def _bwd_inplace_fake(logits, grad_loss, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
                      lse_square_scale=0.0, softcap=0.0, grad_lse=None):
    return None


@torch.library.register_fake("validated_loss::cross_entropy_prob_bwd")
def _prob_bwd_fake(grad_loss, logits, target, weight, lse, reduction, label_smoothing, target_grad):
    grad_target = torch.empty_like(target) if target_grad else logits.new_empty((0,))
    return torch.empty_like(logits), grad_target


@torch.library.register_fake("validated_loss::raise_for_status")
def _raise_fake(status, target_shape, num_classes, ignore_index, logits_shape):
    return None


def _devices_with_kernels():
    keys = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}  # Meta: the fake kernels (shapes only)
    return frozenset(device for device, key in keys.items()
                     if torch._C._dispatch_has_kernel_for_dispatch_key("validated_loss::cross_entropy_fwd", key))


# Computed once: torch.compile traces a constant set lookup, not a dispatcher query.
KERNEL_DEVICES = _devices_with_kernels()


def has_kernel(device_type):
    """Whether this build has kernels of its own for a device type ('cpu', 'cuda', ...)."""
    return device_type in KERNEL_DEVICES
