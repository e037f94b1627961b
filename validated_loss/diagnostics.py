"""Diagnostics for ``cross_entropy``: exception types, metadata checks, messages.

Everything here is pure Python + torch. ``check_inputs`` reads only tensor
metadata (shape, dtype, device, requires_grad), never values, so it costs
nothing on the hot path and works on meta and fake tensors under
``torch.compile``. ``check_batch`` is the debugging tool: it also reads target
values (and may synchronise with the device to do so).

Exceptions
----------
Every exception is a ``ValidatedLossError`` and also an instance of each
built-in type torch 2.13 raises for some variant of the same misuse, so an
existing ``except ValueError`` / ``except RuntimeError`` clause keeps working.
When torch raises different types for variants of one misuse (a 0-dim target
gets ValueError, IndexError or RuntimeError depending on the batch size and
rank), the class inherits all of them.

Messages
--------
Each message starts with torch's own text for the same check (so a search for
torch's message still finds it), then lists the tensors involved, then a
``Likely cause:`` and a ``Fix:`` line when the shapes allow a guess.

Out-of-range targets are found by the kernel (or by ``check_batch``). The
message is one line, in this exact format, the same as the C++ kernel's
(``invalid_target_message`` in csrc/op_common.cpp)::

    Target {value} is out of bounds. target[{i}, {j}, ...] = {value} is not a
    class index in [0, {C}) and is not ignore_index ({ii}); {count} of {numel}
    targets are invalid. Likely cause: {cause}

``{i}, {j}, ...`` is the row-major unravelling of the flat position of the
first invalid target (``target[]`` for a 0-dim target). ``{cause}`` is the
first rule that applies:

1. value < 0:    negative labels used as padding or 'no label': pass
                 ignore_index={value} (or map them to the ignore_index in force).
2. value == C:   labels numbered 1..{C} instead of 0..{C-1} (subtract 1), or a
                 model head with one class too few.
3. value == 255: a segmentation mask whose 'void'/border pixels are 255 (pass
                 ignore_index=255), or grey values 0..255 that were never
                 mapped to class indices.
4. otherwise:    a model head with fewer outputs ({C}) than the label set, or
                 labels from another dataset or label map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import re

import torch

__all__ = [
    "ValidatedLossError",
    "BatchSizeMismatchError",
    "TargetShapeError",
    "TargetSizeError",
    "ScalarTargetError",
    "ProbabilityTargetShapeError",
    "TargetDtypeError",
    "LowPrecisionTargetError",
    "InputDtypeError",
    "InputShapeError",
    "WeightShapeError",
    "ScalarWeightError",
    "WeightDtypeError",
    "WeightRequiresGradError",
    "IgnoreIndexError",
    "LabelSmoothingRangeError",
    "DeviceMismatchError",
    "TargetOutOfRangeError",
    "NonFiniteLogitsError",
    "InplaceBackwardError",
    "LogitsModifiedError",
    "check_inputs",
    "check_batch",
    "BatchReport",
]


# =============================================================================
# Exceptions
# =============================================================================


class ValidatedLossError(Exception):
    """Base of every misuse error raised by validated_loss."""


class BatchSizeMismatchError(ValidatedLossError, ValueError, RuntimeError):
    """Input and target hold different numbers of samples.

    torch raises ValueError; RuntimeError is added because much user code
    catches that for any torch error.
    """


class TargetShapeError(ValidatedLossError, RuntimeError):
    """A class-index target of the wrong rank or spatial size."""


class TargetSizeError(TargetShapeError, ValueError):
    """A target shape error that torch reports as a ValueError: logits flattened
    but not the target (or the reverse), or a 1-D input with several targets."""


class ScalarTargetError(TargetSizeError, IndexError):
    """A 0-dim target for a batched input. Depending on the batch size and the
    input rank torch raises ValueError, IndexError or RuntimeError."""


class ProbabilityTargetShapeError(TargetShapeError, ValueError):
    """A floating target meant as class probabilities whose shape differs from
    the input's. ValueError too: a transposed one trips torch's batch check."""


class TargetDtypeError(ValidatedLossError, RuntimeError):
    """The target dtype does not fit the mode chosen by its shape."""


class LowPrecisionTargetError(TargetDtypeError, NotImplementedError):
    """A float8 probability target (RuntimeError, or NotImplementedError with
    label smoothing)."""


class InputDtypeError(ValidatedLossError, NotImplementedError):
    """Integer, bool, complex or float8 logits."""


class InputShapeError(ValidatedLossError, IndexError, RuntimeError):
    """Logits with no usable class dimension: 0-dim (torch: IndexError), or zero
    classes with a K-dim target (torch: RuntimeError)."""


class WeightShapeError(ValidatedLossError, RuntimeError):
    """The class weight does not have one entry per class."""


class ScalarWeightError(WeightShapeError, IndexError):
    """A 0-dim weight that torch only rejects with an IndexError (label
    smoothing with a K-dimensional input and one class)."""


class WeightDtypeError(ValidatedLossError, RuntimeError):
    """The class weight dtype differs from the logits' (class-index path) or
    cannot be promoted (probability path)."""


class WeightRequiresGradError(ValidatedLossError, RuntimeError):
    """A weight that requires grad, on the class-index path."""


class IgnoreIndexError(ValidatedLossError, RuntimeError):
    """ignore_index >= 0 with class-probability targets."""


class LabelSmoothingRangeError(ValidatedLossError, RuntimeError):
    """label_smoothing > 1 (or inf)."""


class DeviceMismatchError(ValidatedLossError, RuntimeError):
    """Input, target and weight are not all on one device."""


class TargetOutOfRangeError(ValidatedLossError, IndexError):
    """A class index outside [0, C) that is not ignore_index.

    ``position`` is the full index of the first invalid target, a tuple
    (``target[position] == value``); ``count`` is how many targets are invalid.
    """

    def __init__(self, message, *, position=None, value=None, num_classes=None,
                 count=None, ignore_index=None):
        super().__init__(message)
        if position is None:  # raised by an op (csrc/python_errors.h): the message states the facts
            facts = _target_facts(message)
            position, value, count = facts.get("position"), facts.get("value", value), facts.get("count", count)
            num_classes, ignore_index = facts.get("classes", num_classes), facts.get("ignore", ignore_index)
        self.position = position
        self.value = value
        self.num_classes = num_classes
        self.count = count
        self.ignore_index = ignore_index


class NonFiniteLogitsError(ValidatedLossError, ValueError, RuntimeError):
    """A NaN or infinite logit (only with check_finite=True)."""

    def __init__(self, message, *, row=None, column=None, value=None):
        super().__init__(message)
        if row is None:  # raised by an op (csrc/python_errors.h): the message states the facts
            facts = _NONFINITE_FACTS.search(str(message))
            row, column = (int(facts["row"]), int(facts["cls"])) if facts else (None, column)
        self.row = row
        self.column = column
        self.value = value


class InplaceBackwardError(ValidatedLossError, ValueError):
    """inplace_backward=True for logits the gradient must not be written over (a leaf that
    requires grad, or a view of one)."""


class LogitsModifiedError(ValidatedLossError, RuntimeError):
    """Backward found the logits modified in place after the loss. validated_loss keeps the logits
    themselves for the backward (torch keeps their log-softmax, a second logits-sized tensor), so
    an edit made after the loss (logits.div_(T) for sampling) is refused where torch's backward
    would not notice it."""


def logits_modified_error(error: RuntimeError) -> Exception:
    """autograd's "modified by an inplace operation" error at the loss's backward, explained; any
    other error as it is."""
    if "modified by an inplace operation" not in str(error):
        return error
    return LogitsModifiedError(
        "backward of the cross-entropy loss: the logits were modified in place after the loss was computed "
        "(e.g. logits.div_(temperature) for sampling, or masked_fill_ for metrics). validated_loss keeps the "
        "logits themselves for the backward, where torch keeps a log-softmax copy (a second logits-sized "
        "tensor), so torch would not have noticed the edit.\n"
        "Fix: edit a copy (logits / T, or logits.detach().clone()), or run backward before editing.\n"
        f"(autograd: {error})")


# =============================================================================
# Small formatting helpers
# =============================================================================

# torch's C++ names for dtypes, as they appear in its messages.
_CPP_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
    torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
    torch.uint16: "UInt16", torch.uint32: "UInt32", torch.uint64: "UInt64",
}

# The dtypes log_softmax has kernels for.
_LOGIT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _cpp_name(dtype: torch.dtype) -> str:
    # float8 names are the Python name capitalised: float8_e5m2 -> Float8_e5m2.
    name = _CPP_DTYPE_NAMES.get(dtype)
    if name is None:
        short = str(dtype).replace("torch.", "")
        name = short[:1].upper() + short[1:]
    return name


def _shape(shape: Sequence) -> str:
    """Python tuple style: (2, 7, 5), (14,), ()."""
    return str(tuple(int(s) for s in shape))


def _torch_list(shape: Sequence) -> str:
    """torch's C++ style, used inside its messages: [2, 7, 5]."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _describe(name: str, t: torch.Tensor, device: bool = False) -> str:
    text = f"  {name + ':':<8}shape {_shape(t.shape)}, dtype {t.dtype}"
    return text + (f", device {t.device}" if device else "")


def _message(torch_text: str, lines: Sequence[str], cause: Optional[str] = None,
             fix: Optional[str] = None) -> str:
    parts = [torch_text, *lines]
    if cause:
        parts.append(f"Likely cause: {cause}")
    if fix:
        parts.append(f"Fix: {fix}")
    return "\n".join(parts)


def _both(input, target) -> List[str]:
    return [_describe("input", input), _describe("target", target)]


def _class_dim(input) -> int:
    return 0 if input.dim() == 1 else 1


def _num_classes(input):
    # No int(): under torch.compile a symbolic size would be specialised to one value.
    return input.shape[_class_dim(input)]


def _index_shapes(input) -> List[Tuple[int, ...]]:
    """The class-index target shapes torch accepts for this input (none for 0-dim)."""
    if input.dim() == 0:
        return []
    if input.dim() == 1:
        return [(), (1,)]
    return [(int(input.shape[0]),) + tuple(int(s) for s in input.shape[2:])]


def _expected_line(input) -> str:
    wanted = " or ".join(_shape(s) for s in _index_shapes(input))
    return (f"  expected: class indices (int64) of shape {wanted}, or class "
            f"probabilities (floating) of shape {_shape(input.shape)}")


def _is_low_precision_float(dtype: torch.dtype) -> bool:
    # float8 / float4 types: floating, one byte, and not promotable.
    return dtype.is_floating_point and dtype.itemsize == 1


def check_inplace_backward(input) -> None:
    """inplace_backward=True writes the gradient over the logits' memory and hands that memory to
    autograd as their gradient. For a leaf that requires grad (or a view of one) that gradient
    would be accumulated into .grad as the leaf's own storage, its values overwritten: refused."""
    base = input if input._base is None else input._base
    if not (input.requires_grad and base.is_leaf and torch.is_grad_enabled()):
        return
    what = "a leaf tensor that requires grad" if base is input else "a view of a leaf tensor that requires grad"
    raise InplaceBackwardError(_message(
        f"inplace_backward=True writes the gradient over the logits, but the input is {what}",
        [_describe("input", input)],
        "autograd would accumulate the leaf's own storage, overwritten by its gradient, into its "
        ".grad (inplace_backward hands the logits' memory to autograd as their gradient).",
        "inplace_backward=False, or pass logits produced by the model (e.g. hidden @ W.T); a copy "
        "(input.clone()) works but allocates what inplace_backward saves."))


def autocast_enabled(t: torch.Tensor) -> bool:
    """Whether torch's autocast is on for t's device (then cross_entropy runs under its fp32
    policy)."""
    device = t.device.type
    return _autocast_available(device) and torch.is_autocast_enabled(device)


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    # Fixed for a process. Marked constant because torch.compile in torch 2.6 and 2.11 cannot trace
    # torch._C._is_autocast_available (a graph break, an error under fullgraph).
    return torch.amp.is_autocast_available(device_type)


def autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype torch computes cross_entropy with for t: under autocast's fp32 policy half and
    bfloat16 count as float32 (float64 stays); outside autocast, t's own."""
    if t.dtype in (torch.float16, torch.bfloat16) and autocast_enabled(t):
        return torch.float32
    return t.dtype


def _index_dtype_ok(input, target) -> bool:
    """Would the class-index path accept this target dtype?"""
    if target.dtype == torch.int64:
        return True
    return target.dtype == torch.uint8 and input.dim() <= 2


def _dtype_note(input, target) -> Optional[str]:
    if _index_dtype_ok(input, target):
        return None
    return (f"  also: class indices must be int64, the target is {target.dtype}; "
            f"add .long()")


# =============================================================================
# check_inputs: torch's metadata checks, in torch's order
# =============================================================================


def check_inputs(input, target, weight=None, ignore_index=-100,
                 label_smoothing=0.0) -> str:
    """Check what torch checks on metadata for ``cross_entropy``.

    Raises the first error torch 2.13 would raise, as one of this module's
    exceptions, with an explanatory message. Returns ``"probs"`` when
    ``input.shape == target.shape`` (class-probability targets: torch decides
    the mode by shape equality only) and ``"index"`` otherwise.
    """
    smoothing = float(label_smoothing)
    # Ranks first: torch.compile in torch 2.6 compares tuples of different lengths element by
    # element and specialises the sizes it compared (a recompile per sequence length).
    if input.dim() == target.dim() and tuple(input.shape) == tuple(target.shape):
        _check_probability_mode(input, target, weight, ignore_index, smoothing)
        return "probs"
    _check_index_mode(input, target, weight, smoothing)
    return "index"


def _check_probability_mode(input, target, weight, ignore_index, smoothing):
    # Order of cross_entropy_loss_symint + cross_entropy_loss_prob_target.
    _check_probability_target_dtype(input, target)
    _check_ignore_index_for_probabilities(input, target, ignore_index)
    _check_input_rank(input, probability_mode=True)
    _check_weight_shape_for_probabilities(input, weight)
    if input.numel() > 0:  # log_softmax skips empty tensors, whatever their dtype
        _check_input_dtype(input, target, _log_softmax_kernel(input))
    _check_smoothing_range(smoothing)
    _check_low_precision_target_scaling(input, target, smoothing)
    _check_devices(input, target, weight)
    _check_probability_promotion(input, target, weight)


def _check_index_mode(input, target, weight, smoothing):
    # Order of cross_entropy_loss_symint -> log_softmax -> nll_loss_nd ->
    # nll_loss / nll_loss2d (autograd check, device check, meta checks) -> kernel.
    _check_smoothing_range(smoothing)
    _check_input_rank(input, probability_mode=False)
    if input.numel() > 0:
        _check_input_dtype(input, target, _log_softmax_kernel(input))
    _check_batch_size(input, target)
    if input.dim() == 3 or input.dim() >= 5:
        _check_kd_target_size(input, target)
    _check_weight_requires_grad(input, weight)
    _check_devices(input, target, weight)
    if input.dim() <= 2:
        _check_target_rank_2d(input, target)
        _check_index_target_dtype(input, target)
        _check_target_size_2d(input, target)
        _check_weight_shape_2d(input, weight)
    else:
        if input.dim() == 4:
            _check_target_rank_4d(input, target)
        _check_index_target_dtype(input, target)
        _check_weight_numel_kd(input, weight)
        if input.dim() == 4:
            _check_spatial_sizes_4d(input, target)
        else:
            _check_reshaped_sizes_kd(input, target)
    if input.numel() == 0:  # log_softmax let it through; the NLL kernel's dispatch does not
        _check_input_dtype(input, target, _nll_kernel(input))
    _check_weight_dtype(input, target, weight)
    _check_byte_target_rank(input, target)
    if smoothing > 0.0:
        _check_smoothing_terms(input, target, weight)


# ---- checks shared by both modes ---------------------------------------------


def _check_smoothing_range(smoothing: float):
    # torch only tests `smoothing > 0` then `<= 1`: NaN and negatives pass.
    if not smoothing > 1.0:
        return
    torch_text = f"label_smoothing must be between 0.0 and 1.0. Got: {smoothing:g}"
    if math.isinf(smoothing):
        cause = "label_smoothing is infinite."
    elif smoothing <= 100.0:
        cause = (f"label_smoothing is a fraction in [0, 1] (typically 0.05 to 0.2); "
                 f"{smoothing:g} looks like a percentage.")
    else:
        cause = "label_smoothing is a fraction in [0, 1]."
    fix = f"label_smoothing={smoothing / 100:g}" if smoothing <= 100.0 else None
    raise LabelSmoothingRangeError(_message(torch_text, [], cause, fix))


def _check_input_rank(input, probability_mode: bool):
    if input.dim() != 0:
        return
    # Both texts are torch's: size(1) on the probability path, log_softmax(dim=1) otherwise.
    if probability_mode:
        torch_text = "Dimension specified as 1 but tensor has no dimensions"
    else:
        torch_text = "Dimension out of range (expected to be in range of [-1, 0], but got 1)"
    raise InputShapeError(_message(
        torch_text, [_describe("input", input)],
        "the input is a 0-dim scalar, so it has no class dimension. Was a loss "
        "or a reduced value (.sum(), .max()) passed instead of the logits?",
        "pass logits of shape (C,) for one sample or (N, C) for a batch."))


def _log_softmax_kernel(input) -> str:
    # The class dim is the last one for 1-D and 2-D inputs only.
    return "log_softmax_lastdim_kernel_impl" if input.dim() <= 2 else "log_softmax_kernel_impl"


def _nll_kernel(input) -> str:
    return "nll_loss_out_frame" if input.dim() <= 2 else "nll_loss2d_forward_out_frame"


def _check_input_dtype(input, target, kernel):
    """The dtype dispatch of `kernel` (log_softmax's, or the NLL kernel's for empty inputs)."""
    if input.dtype in _LOGIT_DTYPES:
        return
    torch_text = f'"{kernel}" not implemented for \'{_cpp_name(input.dtype)}\''
    if target.is_floating_point() and not input.is_floating_point():
        cause = ("input and target look swapped: the input holds integers and the "
                 "target floats.")
        fix = "call cross_entropy(logits, labels), logits first."
    elif input.is_complex():
        cause = "complex logits are not supported."
        fix = "pass real logits (e.g. input.real or input.abs())."
    elif input.is_floating_point():
        cause = f"log_softmax has no kernel for {input.dtype} logits."
        fix = "upcast first: input.float() (or input.bfloat16())."
    else:
        cause = (f"the logits are {input.dtype}; cross_entropy needs floating-point "
                 "scores. Predicted class ids (argmax) were perhaps passed instead "
                 "of the raw logits.")
        fix = "pass the model's raw floating-point output, or input.float()."
    raise InputDtypeError(_message(torch_text, _both(input, target), cause, fix))


def _check_devices(input, target, weight):
    others = [("target", target)] + ([("weight", weight)] if weight is not None else [])
    for name, t in others:
        if t.device == input.device:
            continue
        torch_text = (f"Expected all tensors to be on the same device, but got {name} "
                      f"is on {t.device}, different from other tensors on {input.device}")
        lines = [_describe("input", input, device=True), _describe(name, t, device=True)]
        raise DeviceMismatchError(_message(
            torch_text, lines,
            f"the {name} was not moved to the model's device.",
            f"{name} = {name}.to(input.device) (or .to(device) where the batch is loaded)."))


# ---- probability mode ------------------------------------------------------


def _check_probability_target_dtype(input, target):
    if target.is_floating_point():
        return
    torch_text = (f"Expected floating point type for target with class probabilities, "
                  f"got {_cpp_name(target.dtype)}")
    lines = _both(input, target) + [
        "  the target has the same shape as the input, so torch reads it as class "
        "probabilities (the mode is chosen by shape alone)"]
    cause, fix = _probability_dtype_hint(input, target)
    raise TargetDtypeError(_message(torch_text, lines, cause, fix))


def _probability_dtype_hint(input, target):
    if target.is_complex():
        return "complex targets are not supported.", "pass real class probabilities."
    if input.dim() == 0:
        return ("the input is a 0-dim scalar: it has no class dimension.",
                "pass logits of shape (N, C) with class indices of shape (N,).")
    if _num_classes(input) == 1:
        return ("the logits have a single class, so softmax is constant and the loss "
                "is always 0; this looks like binary classification.",
                "F.binary_cross_entropy_with_logits(input, target.float()), or give "
                "the model 2 outputs and pass class indices.")
    if input.dim() == 1:
        return ("a 1-D input is one sample; a target of the same size looks like a "
                "one-hot vector.",
                "pass the class index: target.argmax() (0-dim), or target.float() "
                "for probabilities.")
    index_shape = _shape(_index_shapes(input)[0])
    return ("the target looks like one-hot labels stored as integers.",
            f"target.argmax(1) gives class indices of shape {index_shape}; or use "
            f"target.float() to treat them as probabilities.")


def _check_ignore_index_for_probabilities(input, target, ignore_index):
    if ignore_index < 0:
        return
    torch_text = "ignore_index is not supported for floating point target"
    lines = _both(input, target) + [
        f"  ignore_index={ignore_index}; the target has the same shape as the input, "
        "so it is read as class probabilities, where ignore_index must be negative"]
    fix = ("to skip positions with probability targets, use reduction='none' and mask the "
           "loss")
    if input.dim() > 0:
        index_shape = " or ".join(_shape(s) for s in _index_shapes(input))
        fix += f"; for class indices pass an int64 target of shape {index_shape}"
    raise IgnoreIndexError(_message(
        torch_text, lines, "ignore_index only applies to class-index targets.", fix + "."))


def _check_weight_shape_for_probabilities(input, weight):
    classes = _num_classes(input)
    if weight is None or (weight.dim() == 1 and weight.numel() == classes):
        return
    torch_text = (f"cross_entropy: weight tensor should be defined either for all "
                  f"{classes} classes or no classes but got weight tensor of shape: "
                  f"{_torch_list(weight.shape)}")
    cause, fix = _weight_shape_hint(input, weight)
    raise WeightShapeError(_message(
        torch_text, [_describe("input", input), _describe("weight", weight)], cause, fix))


def _check_low_precision_target_scaling(input, target, smoothing):
    # With smoothing, torch first scales the target by (1 - eps): no float8 kernel.
    if smoothing > 0.0 and _is_low_precision_float(target.dtype):
        torch_text = f'"mul_cpu_reduced_float" not implemented for \'{_cpp_name(target.dtype)}\''
        raise LowPrecisionTargetError(_message(
            torch_text, _both(input, target),
            f"torch has no arithmetic kernels for {target.dtype} probability targets.",
            "target.to(input.dtype)"))


def _check_probability_promotion(input, target, weight):
    # input * target * weight: float8 types do not promote with anything. Float8 logits
    # only get here when empty (log_softmax skipped them).
    if _is_low_precision_float(input.dtype):
        if _is_low_precision_float(target.dtype):  # same dtype: no promotion, no kernel
            torch_text = f'"neg_cpu" not implemented for \'{_cpp_name(input.dtype)}\''
        else:
            torch_text = (f"Promotion for Float8 Types is not supported, attempted to promote "
                          f"{_cpp_name(input.dtype)} and {_cpp_name(target.dtype)}")
        raise InputDtypeError(_message(
            torch_text, _both(input, target), f"{input.dtype} logits are not supported.",
            "upcast first: input.float() (or input.bfloat16())."))
    if _is_low_precision_float(target.dtype):
        torch_text = (f"Promotion for Float8 Types is not supported, attempted to promote "
                      f"{_cpp_name(input.dtype)} and {_cpp_name(target.dtype)}")
        raise LowPrecisionTargetError(_message(
            torch_text, _both(input, target),
            f"{target.dtype} probability targets cannot be mixed with {input.dtype} logits.",
            "target.to(input.dtype)"))
    if weight is not None and _is_low_precision_float(weight.dtype):
        product = torch.promote_types(input.dtype, target.dtype)
        torch_text = (f"Promotion for Float8 Types is not supported, attempted to promote "
                      f"{_cpp_name(product)} and {_cpp_name(weight.dtype)}")
        raise WeightDtypeError(_message(
            torch_text, [_describe("input", input), _describe("weight", weight)],
            f"a {weight.dtype} weight cannot be mixed with {product} values.",
            "weight.to(input.dtype)"))


# ---- class-index mode: shape ------------------------------------------------


def _target_batch_size(target):
    # torch reads sizes()[0] even of a 0-dim target and, in practice, gets 0.
    return target.shape[0] if target.dim() > 0 else 0


def _check_batch_size(input, target):
    if input.dim() == 1 or input.shape[0] == _target_batch_size(target):
        return
    torch_text = (f"Expected input batch_size ({int(input.shape[0])}) to match target "
                  f"batch_size ({_target_batch_size(target)}).")
    _raise_target_shape(torch_text, input, target, at_batch_check=True)


def _check_kd_target_size(input, target):
    if target.dim() == 0:
        # Only reachable with N == 0 (else the batch check fired); torch then
        # fails while slicing the target's sizes.
        _raise_target_shape("ArrayRef: invalid slice, N = 1; size = 0", input, target)
    if tuple(target.shape[1:]) == tuple(input.shape[2:]):
        return
    expected = (input.shape[0],) + tuple(input.shape[2:])
    torch_text = f"Expected target size {_torch_list(expected)}, got {_torch_list(target.shape)}"
    _raise_target_shape(torch_text, input, target)


def _check_target_rank_2d(input, target):
    if target.dim() <= 1:
        return
    _raise_target_shape("0D or 1D target tensor expected, multi-target not supported",
                        input, target)


def _check_target_size_2d(input, target):
    if input.dim() == 1 and target.dim() == 1 and target.shape[0] != 1:
        _raise_one_dim_target_size(input, target)
    if input.dim() == 2 and target.dim() == 0:
        # Reachable with N == 0 only: torch then calls target.size(0).
        _raise_target_shape("Dimension specified as 0 but tensor has no dimensions",
                            input, target)


def _check_target_rank_4d(input, target):
    if target.dim() == 3:
        return
    torch_text = ("only batches of spatial targets supported (3D tensors) but got "
                  f"targets of dimension: {target.dim()}")
    _raise_target_shape(torch_text, input, target)


def _check_spatial_sizes_4d(input, target):
    if tuple(target.shape[1:]) == tuple(input.shape[2:]):
        return
    # Sic: torch's message has no closing parenthesis.
    torch_text = (f"size mismatch (got input: {_torch_list(input.shape)} , target: "
                  f"{_torch_list(target.shape)}")
    _raise_target_shape(torch_text, input, target)


def _check_reshaped_sizes_kd(input, target):
    # torch views 3-D and >=5-D inputs as (N, C, 1, -1), or (N, C, 0, 0) when empty, and
    # targets as (N, 1, -1) or (N, 0, 0): with zero classes the two disagree.
    if input.numel() > 0 or target.numel() == 0:
        return
    n = int(input.shape[0])
    torch_text = (f"size mismatch (got input: {_torch_list((n, _num_classes(input), 0, 0))} , "
                  f"target: {_torch_list((n, 1, int(target.numel()) // n))}")
    raise InputShapeError(_message(
        torch_text, _both(input, target),
        "the input has no classes: its class dimension (dim 1) has size 0.",
        "check the model's output layer (num_classes)."))


def _raise_one_dim_target_size(input, target):
    count = int(target.shape[0])
    torch_text = f"For 1D input, 1D target must have size 1, but got target size: {count}"
    classes = int(input.shape[0])
    cause = (f"a 1-D input is one sample with {classes} class scores, so it takes one "
             f"class index (shape () or (1,)); this target holds {count}.")
    if count > 0:
        cause += (f" If these are {count} samples, the batch dimension of the logits was "
                  "lost (a .squeeze() with batch size 1, or indexing logits[i]).")
    fix = f"pass logits of shape ({count}, C) for {count} samples, or one class index."
    lines = _both(input, target) + [_expected_line(input)]
    note = _dtype_note(input, target)
    raise TargetSizeError(_message(torch_text, lines + ([note] if note else []), cause, fix))


# ---- class-index mode: dtype, weight ----------------------------------------


def _check_index_target_dtype(input, target):
    if target.dtype in (torch.int64, torch.uint8):
        return
    torch_text = (f"expected target dtype to be Long or Byte, but got "
                  f"{_cpp_name(target.dtype)}")
    cause, fix = _index_dtype_hint(input, target)
    raise TargetDtypeError(_message(torch_text, _both(input, target), cause, fix))


def _index_dtype_hint(input, target):
    if target.is_floating_point():
        return ("class indices stored as floats (from a float array or DataFrame, or "
                "torch.Tensor(list), which makes float32). A floating target is read as "
                f"class probabilities only when its shape equals the input's "
                f"{_shape(input.shape)}.",
                "target.long()")
    if target.dtype == torch.bool:
        return ("bool labels: binary classification?",
                "target.long() with 2-class logits, or "
                "F.binary_cross_entropy_with_logits(logit, target.float()) with one logit.")
    if target.is_complex():
        return "complex targets are not supported.", "pass int64 class indices."
    if target.dtype == torch.int32:
        return ("int32 labels, typically from a numpy int32 array (numpy's default "
                "integer on Windows before numpy 2) through torch.from_numpy.",
                "target.long()")
    return (f"{target.dtype} labels; torch needs int64 class indices.", "target.long()")


def _check_byte_target_rank(input, target):
    # The meta check allows Byte, but the K-dim kernel reads int64 only.
    if target.dtype != torch.uint8 or input.dim() <= 2:
        return
    raise TargetDtypeError(_message(
        "expected scalar type Long but found Byte", _both(input, target),
        "uint8 targets are accepted only for 1-D and 2-D inputs; masks read from "
        "images are usually uint8.",
        "target.long()"))


def _check_weight_requires_grad(input, weight):
    if weight is None or not weight.requires_grad or not torch.is_grad_enabled():
        return
    function = "nll_loss_forward" if input.dim() <= 2 else "nll_loss2d_forward"
    torch_text = (f"The function '{function}' is not differentiable with respect to "
                  "argument 'weight'. This input cannot have requires_grad True.")
    raise WeightRequiresGradError(_message(
        torch_text, [_describe("weight", weight) + ", requires_grad=True"],
        "the class weight is a learnable Parameter, or computed from one; the loss "
        "with class-index targets has no gradient for it.",
        "pass weight.detach(), or keep the weight in a buffer (register_buffer)."))


def _check_weight_shape_2d(input, weight):
    classes = _num_classes(input)
    if weight is None or (weight.dim() == 1 and weight.numel() == classes):
        return
    torch_text = (f"weight tensor should be defined either for all {classes} classes or "
                  f"no classes but got weight tensor of shape: {_torch_list(weight.shape)}")
    cause, fix = _weight_shape_hint(input, weight)
    raise WeightShapeError(_message(
        torch_text, [_describe("input", input), _describe("weight", weight)], cause, fix))


def _check_weight_numel_kd(input, weight):
    # The K-dim kernels check only numel: a (C, 1) weight passes.
    if weight is None or weight.numel() == _num_classes(input):
        return
    cause, fix = _weight_shape_hint(input, weight)
    raise WeightShapeError(_message(
        "weight tensor should be defined either for all or no classes",
        [_describe("input", input), _describe("weight", weight)], cause, fix))


def _weight_shape_hint(input, weight):
    classes, size = _num_classes(input), int(weight.numel())
    if size == classes:
        return (f"the weight has the right {classes} entries but shape "
                f"{_shape(weight.shape)}; it must be 1-D.", "weight.flatten()")
    head = f"the weight has {size} entries but the input has {classes} classes (dim {_class_dim(input)})"
    # The batch size equalling the weight length is usually a coincidence: look at dims >= 2.
    other_dims = [d for d in range(2, input.dim()) if int(input.shape[d]) == size]
    if other_dims:
        return (f"{head}; {size} is the size of input dim {other_dims[0]}, so the class "
                "dimension may be in the wrong place (it must be dim 1).", None)
    if size < classes:
        return (f"{head}: weights computed from the labels present in the data (np.unique, "
                "compute_class_weight, bincount without minlength) miss classes that never "
                "occur.", f"torch.bincount(labels, minlength={classes}) to count every class.")
    return (f"{head}: the model's output layer has fewer classes than the label set.",
            f"give the model {size} outputs, or a weight of {classes} entries.")


def _check_weight_dtype(input, target, weight):
    # Under autocast torch compares the dtypes its fp32 policy made of them.
    if weight is None or autocast_dtype(weight) == autocast_dtype(input):
        return
    torch_text = (f"expected scalar type {_cpp_name(autocast_dtype(input))} but found "
                  f"{_cpp_name(autocast_dtype(weight))}")
    if weight.dtype == torch.float64:
        cause = (f"float64 weights usually come from numpy (torch.tensor(np_array)); the "
                 f"logits are {input.dtype}.")
    elif not weight.is_floating_point():
        cause = "class weights must be floating point, with the logits' dtype."
    else:
        cause = (f"the weight is {weight.dtype} but the logits are {input.dtype} "
                 "(mixed precision / autocast changes the logits' dtype).")
    raise WeightDtypeError(_message(
        torch_text, [_describe("input", input), _describe("weight", weight)],
        cause, "weight.to(input.dtype)"))


def _check_smoothing_terms(input, target, weight):
    """What torch's smoothing term rejects after nll_loss accepted the arguments.

    Not reproduced: for reduction='mean' torch's weight.gather(0, target) fails
    for a uint8 target and for a (C, 1) weight, but only when some target is
    not ignored; that depends on values and on the reduction, so we compute
    the loss instead.
    """
    if input.dim() >= 3 and weight is not None and weight.dim() != 1:
        _check_smoothing_weight_view(input, weight)
    if input.dim() == 1 and target.dim() == 1:
        # The 0-dim smoothing term is masked in place with the (1,) ignore mask.
        raise TargetShapeError(_message(
            "output with shape [] doesn't match the broadcast shape [1]", _both(input, target),
            "torch's label-smoothing path cannot take a (1,) target for a 1-D input.",
            "pass a 0-dim target: target.view(())"))


def _check_smoothing_weight_view(input, weight):
    # The smoothing term views the weight as (1, C, 1, ...) from weight.size(0); the
    # K-dim nll_loss only checked its numel.
    lines = [_describe("input", input), _describe("weight", weight)]
    cause = "with label_smoothing > 0 the class weight must be 1-D."
    if weight.dim() == 0:
        raise ScalarWeightError(_message(
            "Dimension specified as 0 but tensor has no dimensions", lines, cause,
            "weight.reshape(1)"))
    if weight.shape[0] != _num_classes(input):
        view = [1] * input.dim()
        view[1] = int(weight.shape[0])
        torch_text = (f"shape '{_torch_list(view)}' is invalid for input of size "
                      f"{int(weight.numel())}")
        raise WeightShapeError(_message(torch_text, lines, cause, "weight.flatten()"))


# =============================================================================
# Target shape diagnosis: which layout mistake explains the shapes?
# =============================================================================


@dataclass(frozen=True)
class _Diagnosis:
    # kind picks the exception class: "scalar" (0-dim target), "probs" (a
    # probability target of the wrong shape), "layout" (a fixable layout
    # mistake), "batch" (genuinely different numbers of samples).
    kind: str
    cause: str
    fix: Optional[str] = None


def _raise_target_shape(torch_text, input, target, at_batch_check=False):
    diagnosis = _diagnose_target_shape(input, target, at_batch_check)
    lines = _both(input, target) + [_expected_line(input)]
    note = _dtype_note(input, target) if diagnosis.kind != "probs" else None
    if note:
        lines.append(note)
    cls = _shape_error_class(diagnosis.kind, at_batch_check)
    raise cls(_message(torch_text, lines, diagnosis.cause, diagnosis.fix))


def _shape_error_class(kind, at_batch_check):
    # torch raises ValueError at the batch check, RuntimeError elsewhere.
    if kind == "scalar":
        return ScalarTargetError
    if kind == "probs":
        return ProbabilityTargetShapeError
    if kind == "batch":
        return BatchSizeMismatchError
    return TargetSizeError if at_batch_check else TargetShapeError


def _diagnose_target_shape(input, target, at_batch_check) -> _Diagnosis:
    for hint in _SHAPE_HINTS:
        diagnosis = hint(input, target)
        if diagnosis is not None:
            return diagnosis
    if at_batch_check:
        return _hint_batch_sizes(input, target)
    return _Diagnosis("layout", "the target shape fits neither the class-index nor the "
                                "probability layout (see 'expected').")


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _without(shape, dim):
    return tuple(int(s) for i, s in enumerate(shape) if i != dim)


def _hint_scalar_target(input, target):
    if target.dim() != 0:
        return None
    n = int(input.shape[0])
    wanted = _shape(_index_shapes(input)[0])
    if input.dim() == 2 and n == 1:
        fix = "target.view(1)"
    else:
        fix = f"pass one class index per position, shape {wanted}."
    return _Diagnosis("scalar", f"the target is a single number (0-dim) but the input "
                                f"holds a batch of {n}.", fix)


def _hint_squeeze(input, target):
    # A size-1 dim too many: (N, 1) labels, (N, 1, H, W) masks, (N, C, 1) probabilities.
    wanted = _index_shapes(input)
    for dim in reversed(range(target.dim())):
        if int(target.shape[dim]) != 1:
            continue
        squeezed = _without(target.shape, dim)
        if squeezed in wanted:
            return _Diagnosis("layout", _extra_dim_cause(input, target, dim), f"target.squeeze({dim})")
        if squeezed == tuple(int(s) for s in input.shape) and target.is_floating_point():
            return _Diagnosis("probs", f"the probability target has an extra dimension of size 1 "
                                       f"at dim {dim}.", f"target.squeeze({dim})")
    return None


def _extra_dim_cause(input, target, dim):
    if input.dim() == 4 and dim == 1:
        return "masks loaded as single-channel images keep a channel dimension (N, 1, H, W)."
    if target.dim() == 2 and dim == 1:
        return "labels stored as a column (N, 1), e.g. from a DataFrame column or a (N, 1) array."
    return f"the target has an extra dimension of size 1 at dim {dim}."


def _hint_channel_last_logits(input, target):
    # (N, T, C) or (N, H, W, C) logits with a matching (N, T) / (N, H, W) target.
    if input.dim() < 3:
        return None
    if tuple(int(s) for s in target.shape) != tuple(int(s) for s in input.shape[:-1]):
        return None
    classes = int(input.shape[-1])
    if input.dim() == 3:
        n, t = int(input.shape[0]), int(input.shape[1])
        cause = (f"the logits are (batch, sequence, classes) = {_shape(input.shape)} with "
                 f"{classes} classes last, but torch takes dim 1 as the class dimension.")
        fix = (f"logits.transpose(1, 2) (shape ({n}, {classes}, {t})), or flatten both: "
               f"logits.flatten(0, 1) and target.flatten() (shapes ({n * t}, {classes}) "
               f"and ({n * t},)).")
    else:
        order = ", ".join(["0", str(input.dim() - 1)] + [str(d) for d in range(1, input.dim() - 1)])
        cause = (f"the logits are channels-last {_shape(input.shape)} with {classes} "
                 f"classes last, but torch takes dim 1 as the class dimension.")
        fix = (f"logits.permute({order}) (or logits.movedim(-1, 1)); or flatten both: "
               f"logits.reshape(-1, {classes}) and target.reshape(-1).")
    return _Diagnosis("layout", cause, fix)


def _hint_channel_last_target(input, target):
    # (N, d..., C) one-hot / probabilities, or (N, H, W, 3) colour masks.
    if input.dim() < 3 or target.dim() != input.dim():
        return None
    if tuple(int(s) for s in target.shape[:-1]) != _index_shapes(input)[0]:
        return None
    last, classes = int(target.shape[-1]), _num_classes(input)
    rgb = input.dim() >= 4 and last in (3, 4)
    rgb_fix = ("map each colour to its class index (compare against the palette) to get "
               f"an int64 mask of shape {_shape(_index_shapes(input)[0])}")
    if last == classes and target.is_floating_point():
        return _Diagnosis("probs", "class probabilities stored channels-last (classes in "
                                   "the last dim).", "target.movedim(-1, 1)")
    if last == classes:
        fix = "target.argmax(-1) for class indices"
        return _Diagnosis("layout", "one-hot labels with the classes in the last dim.",
                          fix + (f"; if it is an RGB mask, {rgb_fix}." if rgb else "."))
    if rgb:
        return _Diagnosis("layout", f"the target looks like an RGB{'A' if last == 4 else ''} "
                                    f"colour mask (last dim {last}).", rgb_fix + ".")
    return None


def _hint_probability_shape(input, target):
    # A floating target of the input's rank was meant as class probabilities.
    if not target.is_floating_point() or target.dim() != input.dim():
        return None
    ins = tuple(int(s) for s in input.shape)
    tgt = tuple(int(s) for s in target.shape)
    if sorted(ins) == sorted(tgt):
        if len(ins) == 2 and tgt == ins[::-1]:
            return _Diagnosis("probs", f"the probability target is transposed: {_shape(tgt)} "
                                       f"instead of {_shape(ins)}.", "target.t()")
        return _Diagnosis("probs", "the probability target has the input's sizes in another "
                                   "order.", f"permute the target to {_shape(ins)}.")
    diffs = [f"dim {d}: input {ins[d]}, target {tgt[d]}" for d in range(len(ins)) if ins[d] != tgt[d]]
    cause = "the probability target's shape differs from the input's (" + "; ".join(diffs) + ")."
    if len(diffs) == 1 and ins[_class_dim(input)] != tgt[_class_dim(input)]:
        cause = (f"the probability target has {tgt[_class_dim(input)]} classes but the logits "
                 f"have {ins[_class_dim(input)]}: the one-hot / soft labels and the model "
                 "disagree on the number of classes.")
    if input.dim() == 4 and tgt[1] in (3, 4):
        cause += " Or it is an RGB mask loaded with ToTensor: convert colours to class indices."
    return _Diagnosis("probs", cause)


def _hint_flattened_logits(input, target):
    # Logits flattened to (N*T, C), target still (N, T).
    if input.dim() != 2 or target.dim() < 2 or _numel(target.shape) != int(input.shape[0]):
        return None
    rows, classes = int(input.shape[0]), int(input.shape[1])
    sizes = ", ".join(str(int(s)) for s in target.shape)
    return _Diagnosis(
        "layout",
        f"the logits were flattened to {_shape(input.shape)} but the target is still "
        f"{_shape(target.shape)}.",
        f"target.flatten() (shape ({rows},)); or keep both unflattened: "
        f"logits.view({sizes}, {classes}).movedim(-1, 1) with the {_shape(target.shape)} target.")


def _hint_flattened_target(input, target):
    # Target flattened to (N*T,), logits still (N, T, C) or (N, C, d...).
    if input.dim() < 3 or target.dim() != 1:
        return None
    size = int(target.shape[0])
    n = int(input.shape[0])
    if input.dim() == 3 and n * int(input.shape[1]) == size:
        classes = int(input.shape[2])
        return _Diagnosis(
            "layout",
            f"the target was flattened to ({size},) = {n} x {int(input.shape[1])} but the "
            f"logits are still (batch, sequence, classes) = {_shape(input.shape)}.",
            f"logits.flatten(0, 1) (shape ({size}, {classes})).")
    if n * _numel(input.shape[2:]) == size:
        classes = int(input.shape[1])
        spatial = ", ".join(str(int(s)) for s in input.shape[2:])
        return _Diagnosis(
            "layout",
            f"the target was flattened to ({size},) but the logits are still "
            f"{_shape(input.shape)}.",
            f"logits.movedim(1, -1).reshape(-1, {classes}) (shape ({size}, {classes})), "
            f"or target.view({n}, {spatial}).")
    return None


def _hint_flattened_one_hot(input, target):
    # (N*C,) target for (N, C) logits: one-hot rows flattened.
    if input.dim() != 2 or target.dim() != 1:
        return None
    n, classes = int(input.shape[0]), int(input.shape[1])
    if n == 0 or classes < 2 or int(target.shape[0]) != n * classes:
        return None
    return _Diagnosis(
        "layout",
        f"the target has {n * classes} = {n} x {classes} entries: one-hot label rows "
        "flattened into one vector.",
        f"target.view({n}, {classes}).argmax(1) for class indices.")


def _hint_spatial_sizes(input, target):
    # Right rank, right batch, some spatial sizes differ.
    wanted = _index_shapes(input)[0]
    if input.dim() < 3 or target.dim() != len(wanted) or int(target.shape[0]) != wanted[0]:
        return None
    got = tuple(int(s) for s in target.shape)
    diffs = [f"target dim {d} has size {got[d]} but input dim {d + 1} has size {wanted[d]}"
             for d in range(1, len(wanted)) if got[d] != wanted[d]]
    cause = "spatial sizes differ: " + "; ".join(diffs) + "."
    if sorted(got[1:]) == sorted(wanted[1:]):
        if len(got) == 3:
            return _Diagnosis("layout", cause + " Height and width are swapped.", "target.transpose(1, 2)")
        return _Diagnosis("layout", cause + " The same sizes in another order.",
                          f"permute the target to {_shape(wanted)}.")
    factor = _common_scale(got[1:], wanted[1:])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(got) - 1)
    if factor is not None and mode is not None:
        return _Diagnosis(
            "layout", cause + f" All differ by the factor {factor:g}: the model output is "
                              "downsampled, or masks and images were resized differently.",
            f"F.interpolate(logits, size={tuple(got[1:])}, mode='{mode}') "
            "(or resize the masks with mode='nearest').")
    return _Diagnosis("layout", cause + " Images and masks were resized or cropped "
                                        "differently; apply the same transform to both.")


def _common_scale(got, wanted) -> Optional[float]:
    ratios = {g / w for g, w in zip(got, wanted) if w > 0}
    if len(ratios) == 1 and all(w > 0 for w in wanted):
        return ratios.pop()
    return None


def _hint_missing_dims(input, target):
    # (N,) target for (N, C, T) logits: one label per sample, per-position logits.
    wanted = _index_shapes(input)[0]
    if input.dim() < 3 or not 0 < target.dim() < len(wanted):
        return None
    if tuple(int(s) for s in target.shape) != wanted[:target.dim()]:
        return None
    extra = wanted[target.dim():]
    if all(e == 1 for e in extra):
        shape = (wanted[0], _num_classes(input)) + wanted[1:target.dim()]
        return _Diagnosis("layout", f"the logits have trailing size-1 dims {_shape(extra)}.",
                          f"logits.reshape{_shape(shape)}")
    return _Diagnosis(
        "layout",
        f"one label per sample, but the logits have extra dims {_shape(extra)} "
        "(per-token or per-pixel outputs).",
        "reduce the logits over those dims first (e.g. logits.mean(2), or the last step "
        f"logits[:, :, -1]), or give one label per position, shape {_shape(wanted)}.")


def _hint_multi_label(input, target):
    # (N, K) integer target for (N, C) logits, K != C.
    if input.dim() != 2 or target.dim() != 2 or int(target.shape[0]) != int(input.shape[0]):
        return None
    k, classes = int(target.shape[1]), int(input.shape[1])
    return _Diagnosis(
        "layout",
        f"the target has {k} columns per sample while the logits have {classes} classes: "
        "one-hot labels built for another number of classes, or multi-label targets.",
        "for one-hot labels target.argmax(1) (with a model of matching width); for "
        "several labels per sample use F.binary_cross_entropy_with_logits.")


def _looks_like_batch_size(n: int) -> bool:
    """The only evidence two counts give: batch sizes are nearly always chosen round, a power of
    two from 8 or a multiple of 10. Two final partial batches (1000 % 32 = 8 against
    1010 % 32 = 18) give counts that are not, and then nothing is said about a batch size."""
    return (n >= 8 and n & (n - 1) == 0) or (n >= 10 and n % 10 == 0)


def _hint_batch_sizes(input, target) -> _Diagnosis:
    n_in, n_tgt = int(input.shape[0]), int(_target_batch_size(target))
    small, large = min(n_in, n_tgt), max(n_in, n_tgt)
    sentences = [f"the input has {n_in} samples but the target has {n_tgt}."]
    if small == 0:
        return _Diagnosis("batch", sentences[0] + " One of them is empty.")
    if large % small == 0:
        per = (f"The target has {large // small} entries per input sample" if n_tgt > n_in
               else f"The input has {large // small} rows per target entry")
        sentences.append(f"{per}: a reshape, view(-1) or flatten merged a dimension into the "
                         "batch, or the two come from loaders with different batch_size.")
    if _looks_like_batch_size(large):
        sentences.append(f"If {large} is the batch size, {small} looks like a final partial batch: "
                         "inputs and targets are batched by different DataLoaders or datasets of "
                         "different lengths (drop_last=True on one side only, or an uneven "
                         "train/validation split).")
    return _Diagnosis("batch", " ".join(sentences),
                      "batch inputs and targets together: one Dataset returning "
                      "(input, target) pairs, one DataLoader.")


# Tried in order; the first that recognises the shapes wins.
_SHAPE_HINTS = (
    _hint_scalar_target,
    _hint_squeeze,
    _hint_channel_last_logits,
    _hint_channel_last_target,
    _hint_flattened_logits,
    _hint_probability_shape,
    _hint_missing_dims,
    _hint_flattened_target,
    _hint_flattened_one_hot,
    _hint_spatial_sizes,
    _hint_multi_label,
)


# =============================================================================
# Out-of-range targets
# =============================================================================


def _unravel(position: int, shape: Sequence[int]) -> Tuple[int, ...]:
    """Row-major multi-index of a flat position (a size-0 dim counts as 1, as in C++)."""
    index = []
    for size in reversed([max(int(s), 1) for s in shape]):
        index.append(position % size)
        position //= size
    return tuple(reversed(index))


# Fields of the int64[6] status record (csrc/status.h).
from ._status import STATUS_INVALID_COUNT as _STATUS_COUNT  # noqa: E402
from ._status import STATUS_INVALID_POSITION as _STATUS_POSITION  # noqa: E402
from ._status import STATUS_INVALID_VALUE as _STATUS_VALUE  # noqa: E402
from ._status import STATUS_SIZE as _STATUS_SIZE  # noqa: E402


def target_status(target, num_classes, ignore_index) -> torch.Tensor:
    """The kernel's status record for the targets alone, computed on target's device.

    int64[6] = (flat position of the first invalid target, its value, invalid
    count, -1, -1, -1): the non-finite-logit fields stay empty. No host sync:
    only the caller's ``.cpu()`` waits for it.
    """
    # Stacked from 0-dim fields, not written into by index: torch.func.vmap refuses in-place
    # writes of batched values into an unbatched tensor.
    none = torch.full((), -1, dtype=torch.int64, device=target.device)
    fields = [none] * _STATUS_SIZE
    flat = target.reshape(-1).long()
    if flat.numel() == 0:
        fields[_STATUS_COUNT] = torch.zeros_like(none)
        return torch.stack(fields)
    invalid = ((flat < 0) | (flat >= int(num_classes))) & (flat != ignore_index)
    count = invalid.sum()
    first = invalid.to(torch.uint8).argmax()  # argmax returns the first maximum
    found = count > 0
    fields[_STATUS_POSITION] = torch.where(found, first, -1)
    fields[_STATUS_VALUE] = torch.where(found, flat[first], -1)
    fields[_STATUS_COUNT] = count
    return torch.stack(fields)


def _find_out_of_range(input, target, ignore_index) -> Optional[TargetOutOfRangeError]:
    """The error an out-of-range target gets, worded by the extension's raise_for_status (the one
    place that message is written, csrc/op_common.cpp), or None."""
    from . import _ops  # loads the compiled library

    classes = _num_classes(input)
    # Under torch.func transforms (vmap of grad: per-sample gradients) the target may be a batched
    # wrapper, whose values vmap does not let Python read: the check runs on the plain tensor
    # underneath (every sample's targets; positions are that tensor's).
    target = _unwrapped(target)
    status = target_status(target, classes, ignore_index).cpu()
    if int(status[_STATUS_COUNT]) <= 0:
        return None
    try:
        _ops.ops.raise_for_status(status, list(target.shape), classes, ignore_index, list(input.shape))
    except IndexError as error:
        return target_error_from(error, ignore_index)
    return None


def _unwrapped(tensor):
    """The plain tensor under any torch.func wrappers (batched, grad-tracking)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


# The kernel's messages (csrc/op_common.cpp) are the one place they are worded; the numbers the
# exceptions carry as attributes are read back from them.
_TARGET_FACTS = re.compile(
    r"target\[(?P<index>[\d, ]*)\] = (?P<value>-?\d+) is not a class index in \[0, (?P<classes>\d+)\) "
    r"and is not ignore_index \((?P<ignore>-?\d+)\).*?(?P<count>\d+) of \d+ targets are invalid"
)
_NONFINITE_FACTS = re.compile(r"Non-finite logits: input\[(?P<index>[\d, ]*)\] \(row (?P<row>\d+)\), class (?P<cls>\d+)")


def _target_facts(message):
    """position (a tuple), value, classes, ignore and count from the kernel's message; {} if it is not one."""
    facts = _TARGET_FACTS.search(str(message))
    if facts is None:
        return {}
    found = {k: int(v) for k, v in facts.groupdict().items() if k != "index"}
    found["position"] = tuple(int(i) for i in facts["index"].split(",") if i.strip())
    return found


def target_error_from(error, ignore_index):
    """The kernel's error for a bad target as a TargetOutOfRangeError (same message). The ops raise
    that class already; this converts what other paths (and older builds) raise as IndexError."""
    if isinstance(error, TargetOutOfRangeError) or not _target_facts(error):
        return error
    return TargetOutOfRangeError(str(error), ignore_index=ignore_index)


def nonfinite_error_from(error):
    """The kernel's ValueError for a NaN/inf logit as a NonFiniteLogitsError (same message)."""
    if isinstance(error, NonFiniteLogitsError) or _NONFINITE_FACTS.search(str(error)) is None:
        return error
    return NonFiniteLogitsError(str(error))


# =============================================================================
# check_batch: a report instead of an exception
# =============================================================================


@dataclass
class BatchReport:
    """What ``check_batch`` found. ``error`` is what cross_entropy would raise."""

    ok: bool
    mode: str
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    error: Optional[Exception] = None

    def __str__(self) -> str:
        mode = "class-probability targets" if self.mode == "probs" else "class-index targets"
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"cross_entropy batch check: {status}, {len(self.warnings)} warning(s) ({mode})"]
        for title, texts in (("problem", self.problems), ("warning", self.warnings)):
            for text in texts:
                lines.append(f"- {title}: " + text.replace("\n", "\n    "))
        return "\n".join(lines)


def check_batch(input, target, weight=None, ignore_index=-100, label_smoothing=0.0, *,
                check_values=True) -> BatchReport:
    """Run ``check_inputs`` without raising, plus checks torch does not make.

    With ``check_values=True`` the target (and logit) values are read too:
    out-of-range class indices, all targets ignored, probability rows that are
    not distributions, logits that look like softmax outputs. This may
    synchronise with the device; it is a debugging tool.
    """
    for position, (name, value) in enumerate((("input", input), ("target", target)), start=1):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"check_batch(): argument '{name}' (position {position}) must be a Tensor, not "
                            f"{type(value).__name__} (as for cross_entropy: the logits and the targets of one "
                            f"batch; convert with torch.as_tensor(...))")
    mode = "probs" if tuple(input.shape) == tuple(target.shape) else "index"
    report = BatchReport(ok=True, mode=mode)
    try:
        check_inputs(input, target, weight, ignore_index, label_smoothing)
    except ValidatedLossError as exc:
        _record(report, exc)
        return report
    report.warnings += _layout_warnings(input, target, mode)
    if check_values and not (input.is_meta or target.is_meta):
        if mode == "index":
            error = _find_out_of_range(input, target, ignore_index)
            if error is not None:
                _record(report, error)
            report.warnings += _ignored_warnings(target, ignore_index)
        else:
            report.warnings += _probability_warnings(input, target)
        report.warnings += _logit_warnings(input)
    return report


def _record(report: BatchReport, error: Exception):
    report.ok = False
    report.error = error
    report.problems.append(str(error))


def _layout_warnings(input, target, mode) -> List[str]:
    # torch accepts (N, T, C) logits with an (N, T) target when T == C, reading T
    # as the classes: the same shapes fit the channels-last reading.
    if mode != "index" or input.dim() < 3:
        return []
    if tuple(target.shape[1:]) != tuple(input.shape[1:-1]):
        return []
    fix = "logits.transpose(1, 2)" if input.dim() == 3 else "logits.movedim(-1, 1)"
    return [f"logits {_shape(input.shape)} with target {_shape(target.shape)} are ambiguous: "
            f"torch takes dim 1 as the class dimension ({int(input.shape[1])} classes). If "
            f"the classes are the last dim (batch, ..., classes), the loss is silently "
            f"wrong: pass {fix}."]


def _ignored_warnings(target, ignore_index) -> List[str]:
    if target.numel() == 0 or not bool((target.long() == ignore_index).all()):
        return []
    return [f"every target equals ignore_index ({ignore_index}): with reduction='mean' "
            "the loss is NaN (0 / 0)."]


def _probability_warnings(input, target) -> List[str]:
    if target.numel() == 0 or input.dim() == 0:
        return []
    warnings = []
    if bool((target < 0).any()):
        warnings.append("the probability target has negative entries; torch accepts them "
                        "silently.")
    sums = target.sum(_class_dim(input), dtype=torch.float64)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        warnings.append("the probability target rows do not sum to 1 along the class dim; "
                        "torch accepts them silently.")
    return warnings


def _logit_warnings(input) -> List[str]:
    if input.numel() == 0 or input.dim() == 0:
        return []
    finite = torch.isfinite(input)
    if not bool(finite.all()):
        first = int((~finite).reshape(-1).to(torch.uint8).argmax())
        position = ", ".join(str(i) for i in _unravel(first, input.shape))
        return [f"the logits contain NaN or inf (first at input[{position}]); the loss "
                "will be NaN or inf."]
    sums = input.sum(_class_dim(input), dtype=torch.float64)
    if bool((input >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        return ["the input looks like probabilities (non-negative, summing to 1): "
                "cross_entropy applies log_softmax itself, so pass raw logits (remove the "
                "final softmax)."]
    return []
