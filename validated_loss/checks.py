"""check_inputs: torch's metadata checks for cross_entropy, in torch's order, raising the
package's exception classes with messages that start with torch's text, then the cause and fix.

Pure: reads shapes, dtypes, devices and requires_grad, never values, so it costs nothing on the hot
path and runs on meta and fake tensors under torch.compile. Also inplace_backward's check and the
explanation of logits edited after the loss.
"""

from __future__ import annotations

import math

import torch

from .errors import (BatchSizeMismatchError, DeviceMismatchError, IgnoreIndexError, InplaceBackwardError,
                     InputDtypeError, InputShapeError, LabelSmoothingRangeError, LogitsModifiedError,
                     LowPrecisionTargetError, ProbabilityTargetShapeError, ScalarTargetError, ScalarWeightError,
                     TargetDtypeError, TargetShapeError, TargetSizeError, WeightDtypeError, WeightRequiresGradError,
                     WeightShapeError)
from ._autocast import autocast_dtype
from .hints import diagnose_target_shape, index_dtype_hint, probability_dtype_hint, weight_shape_hint
from ._text import (LOGIT_DTYPES, class_count, compose, describe, describe_both, dtype_name, dtype_note,
                    expected_line, index_shapes, is_low_precision_float, shape_text, target_batch_size,
                    torch_list)


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


def check_inplace_backward(input) -> None:
    """inplace_backward=True writes the gradient over the logits' memory and hands that memory to
    autograd as their gradient. For a leaf that requires grad (or a view of one) that gradient
    would be accumulated into .grad as the leaf's own storage, its values overwritten: refused."""
    base = input if input._base is None else input._base
    if not (input.requires_grad and base.is_leaf and torch.is_grad_enabled()):
        return
    what = "a leaf tensor that requires grad" if base is input else "a view of a leaf tensor that requires grad"
    raise InplaceBackwardError(compose(
        f"inplace_backward=True writes the gradient over the logits, but the input is {what}",
        [describe("input", input)],
        "autograd would accumulate the leaf's own storage, overwritten by its gradient, into its "
        ".grad (inplace_backward hands the logits' memory to autograd as their gradient).",
        "inplace_backward=False, or pass logits produced by the model (e.g. hidden @ W.T); a copy "
        "(input.clone()) works but allocates what inplace_backward saves."))


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
    raise LabelSmoothingRangeError(compose(torch_text, [], cause, fix))


def _check_input_rank(input, probability_mode: bool):
    if input.dim() != 0:
        return
    # Both texts are torch's: size(1) on the probability path, log_softmax(dim=1) otherwise.
    if probability_mode:
        torch_text = "Dimension specified as 1 but tensor has no dimensions"
    else:
        torch_text = "Dimension out of range (expected to be in range of [-1, 0], but got 1)"
    raise InputShapeError(compose(
        torch_text, [describe("input", input)],
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
    if input.dtype in LOGIT_DTYPES:
        return
    torch_text = f'"{kernel}" not implemented for \'{dtype_name(input.dtype)}\''
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
    raise InputDtypeError(compose(torch_text, describe_both(input, target), cause, fix))


def _check_devices(input, target, weight):
    others = [("target", target)] + ([("weight", weight)] if weight is not None else [])
    for name, t in others:
        if t.device == input.device:
            continue
        torch_text = (f"Expected all tensors to be on the same device, but got {name} "
                      f"is on {t.device}, different from other tensors on {input.device}")
        lines = [describe("input", input, device=True), describe(name, t, device=True)]
        raise DeviceMismatchError(compose(
            torch_text, lines,
            f"the {name} was not moved to the model's device.",
            f"{name} = {name}.to(input.device) (or .to(device) where the batch is loaded)."))


# ---- probability mode ------------------------------------------------------


def _check_probability_target_dtype(input, target):
    if target.is_floating_point():
        return
    torch_text = (f"Expected floating point type for target with class probabilities, "
                  f"got {dtype_name(target.dtype)}")
    lines = describe_both(input, target) + [
        "  the target has the same shape as the input, so torch reads it as class "
        "probabilities (the mode is chosen by shape alone)"]
    cause, fix = probability_dtype_hint(input, target)
    raise TargetDtypeError(compose(torch_text, lines, cause, fix))


def _check_ignore_index_for_probabilities(input, target, ignore_index):
    if ignore_index < 0:
        return
    torch_text = "ignore_index is not supported for floating point target"
    lines = describe_both(input, target) + [
        f"  ignore_index={ignore_index}; the target has the same shape as the input, "
        "so it is read as class probabilities, where ignore_index must be negative"]
    fix = ("to skip positions with probability targets, use reduction='none' and mask the "
           "loss")
    if input.dim() > 0:
        index_shape = " or ".join(shape_text(s) for s in index_shapes(input))
        fix += f"; for class indices pass an int64 target of shape {index_shape}"
    raise IgnoreIndexError(compose(
        torch_text, lines, "ignore_index only applies to class-index targets.", fix + "."))


def _check_weight_shape_for_probabilities(input, weight):
    classes = class_count(input)
    if weight is None or (weight.dim() == 1 and weight.numel() == classes):
        return
    torch_text = (f"cross_entropy: weight tensor should be defined either for all "
                  f"{classes} classes or no classes but got weight tensor of shape: "
                  f"{torch_list(weight.shape)}")
    cause, fix = weight_shape_hint(input, weight)
    raise WeightShapeError(compose(
        torch_text, [describe("input", input), describe("weight", weight)], cause, fix))


def _check_low_precision_target_scaling(input, target, smoothing):
    # With smoothing, torch first scales the target by (1 - eps): no float8 kernel.
    if smoothing > 0.0 and is_low_precision_float(target.dtype):
        torch_text = f'"mul_cpu_reduced_float" not implemented for \'{dtype_name(target.dtype)}\''
        raise LowPrecisionTargetError(compose(
            torch_text, describe_both(input, target),
            f"torch has no arithmetic kernels for {target.dtype} probability targets.",
            "target.to(input.dtype)"))


def _check_probability_promotion(input, target, weight):
    # input * target * weight: float8 types do not promote with anything. Float8 logits
    # only get here when empty (log_softmax skipped them).
    if is_low_precision_float(input.dtype):
        if is_low_precision_float(target.dtype):  # same dtype: no promotion, no kernel
            torch_text = f'"neg_cpu" not implemented for \'{dtype_name(input.dtype)}\''
        else:
            torch_text = (f"Promotion for Float8 Types is not supported, attempted to promote "
                          f"{dtype_name(input.dtype)} and {dtype_name(target.dtype)}")
        raise InputDtypeError(compose(
            torch_text, describe_both(input, target), f"{input.dtype} logits are not supported.",
            "upcast first: input.float() (or input.bfloat16())."))
    if is_low_precision_float(target.dtype):
        torch_text = (f"Promotion for Float8 Types is not supported, attempted to promote "
                      f"{dtype_name(input.dtype)} and {dtype_name(target.dtype)}")
        raise LowPrecisionTargetError(compose(
            torch_text, describe_both(input, target),
            f"{target.dtype} probability targets cannot be mixed with {input.dtype} logits.",
            "target.to(input.dtype)"))
    if weight is not None and is_low_precision_float(weight.dtype):
        product = torch.promote_types(input.dtype, target.dtype)
        torch_text = (f"Promotion for Float8 Types is not supported, attempted to promote "
                      f"{dtype_name(product)} and {dtype_name(weight.dtype)}")
        raise WeightDtypeError(compose(
            torch_text, [describe("input", input), describe("weight", weight)],
            f"a {weight.dtype} weight cannot be mixed with {product} values.",
            "weight.to(input.dtype)"))


# ---- class-index mode: shape ------------------------------------------------


def _check_batch_size(input, target):
    if input.dim() == 1 or input.shape[0] == target_batch_size(target):
        return
    torch_text = (f"Expected input batch_size ({int(input.shape[0])}) to match target "
                  f"batch_size ({target_batch_size(target)}).")
    _raise_target_shape(torch_text, input, target, at_batch_check=True)


def _check_kd_target_size(input, target):
    if target.dim() == 0:
        # Only reachable with N == 0 (else the batch check fired); torch then
        # fails while slicing the target's sizes.
        _raise_target_shape("ArrayRef: invalid slice, N = 1; size = 0", input, target)
    if tuple(target.shape[1:]) == tuple(input.shape[2:]):
        return
    expected = (input.shape[0],) + tuple(input.shape[2:])
    torch_text = f"Expected target size {torch_list(expected)}, got {torch_list(target.shape)}"
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
    torch_text = (f"size mismatch (got input: {torch_list(input.shape)} , target: "
                  f"{torch_list(target.shape)}")
    _raise_target_shape(torch_text, input, target)


def _check_reshaped_sizes_kd(input, target):
    # torch views 3-D and >=5-D inputs as (N, C, 1, -1), or (N, C, 0, 0) when empty, and
    # targets as (N, 1, -1) or (N, 0, 0): with zero classes the two disagree.
    if input.numel() > 0 or target.numel() == 0:
        return
    n = int(input.shape[0])
    torch_text = (f"size mismatch (got input: {torch_list((n, class_count(input), 0, 0))} , "
                  f"target: {torch_list((n, 1, int(target.numel()) // n))}")
    raise InputShapeError(compose(
        torch_text, describe_both(input, target),
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
    lines = describe_both(input, target) + [expected_line(input)]
    note = dtype_note(input, target)
    raise TargetSizeError(compose(torch_text, lines + ([note] if note else []), cause, fix))


# ---- class-index mode: dtype, weight ----------------------------------------


def _check_index_target_dtype(input, target):
    if target.dtype in (torch.int64, torch.uint8):
        return
    torch_text = (f"expected target dtype to be Long or Byte, but got "
                  f"{dtype_name(target.dtype)}")
    cause, fix = index_dtype_hint(input, target)
    raise TargetDtypeError(compose(torch_text, describe_both(input, target), cause, fix))


def _check_byte_target_rank(input, target):
    # The meta check allows Byte, but the K-dim kernel reads int64 only.
    if target.dtype != torch.uint8 or input.dim() <= 2:
        return
    raise TargetDtypeError(compose(
        "expected scalar type Long but found Byte", describe_both(input, target),
        "uint8 targets are accepted only for 1-D and 2-D inputs; masks read from "
        "images are usually uint8.",
        "target.long()"))


def _check_weight_requires_grad(input, weight):
    if weight is None or not weight.requires_grad or not torch.is_grad_enabled():
        return
    function = "nll_loss_forward" if input.dim() <= 2 else "nll_loss2d_forward"
    torch_text = (f"The function '{function}' is not differentiable with respect to "
                  "argument 'weight'. This input cannot have requires_grad True.")
    raise WeightRequiresGradError(compose(
        torch_text, [describe("weight", weight) + ", requires_grad=True"],
        "the class weight is a learnable Parameter, or computed from one; the loss "
        "with class-index targets has no gradient for it.",
        "pass weight.detach(), or keep the weight in a buffer (register_buffer)."))


def _check_weight_shape_2d(input, weight):
    classes = class_count(input)
    if weight is None or (weight.dim() == 1 and weight.numel() == classes):
        return
    torch_text = (f"weight tensor should be defined either for all {classes} classes or "
                  f"no classes but got weight tensor of shape: {torch_list(weight.shape)}")
    cause, fix = weight_shape_hint(input, weight)
    raise WeightShapeError(compose(
        torch_text, [describe("input", input), describe("weight", weight)], cause, fix))


def _check_weight_numel_kd(input, weight):
    # The K-dim kernels check only numel: a (C, 1) weight passes.
    if weight is None or weight.numel() == class_count(input):
        return
    cause, fix = weight_shape_hint(input, weight)
    raise WeightShapeError(compose(
        "weight tensor should be defined either for all or no classes",
        [describe("input", input), describe("weight", weight)], cause, fix))


def _check_weight_dtype(input, target, weight):
    # Under autocast torch compares the dtypes its fp32 policy made of them.
    if weight is None or autocast_dtype(weight) == autocast_dtype(input):
        return
    torch_text = (f"expected scalar type {dtype_name(autocast_dtype(input))} but found "
                  f"{dtype_name(autocast_dtype(weight))}")
    if weight.dtype == torch.float64:
        cause = (f"float64 weights usually come from numpy (torch.tensor(np_array)); the "
                 f"logits are {input.dtype}.")
    elif not weight.is_floating_point():
        cause = "class weights must be floating point, with the logits' dtype."
    else:
        cause = (f"the weight is {weight.dtype} but the logits are {input.dtype} "
                 "(mixed precision / autocast changes the logits' dtype).")
    raise WeightDtypeError(compose(
        torch_text, [describe("input", input), describe("weight", weight)],
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
        raise TargetShapeError(compose(
            "output with shape [] doesn't match the broadcast shape [1]", describe_both(input, target),
            "torch's label-smoothing path cannot take a (1,) target for a 1-D input.",
            "pass a 0-dim target: target.view(())"))


def _check_smoothing_weight_view(input, weight):
    # The smoothing term views the weight as (1, C, 1, ...) from weight.size(0); the
    # K-dim nll_loss only checked its numel.
    lines = [describe("input", input), describe("weight", weight)]
    cause = "with label_smoothing > 0 the class weight must be 1-D."
    if weight.dim() == 0:
        raise ScalarWeightError(compose(
            "Dimension specified as 0 but tensor has no dimensions", lines, cause,
            "weight.reshape(1)"))
    if weight.shape[0] != class_count(input):
        view = [1] * input.dim()
        view[1] = int(weight.shape[0])
        torch_text = (f"shape '{torch_list(view)}' is invalid for input of size "
                      f"{int(weight.numel())}")
        raise WeightShapeError(compose(torch_text, lines, cause, "weight.flatten()"))



def _raise_target_shape(torch_text, input, target, at_batch_check=False):
    diagnosis = diagnose_target_shape(input, target, at_batch_check)
    lines = describe_both(input, target) + [expected_line(input)]
    note = dtype_note(input, target) if diagnosis.kind != "probs" else None
    if note:
        lines.append(note)
    cls = _shape_error_class(diagnosis.kind, at_batch_check)
    raise cls(compose(torch_text, lines, diagnosis.cause, diagnosis.fix))


def _shape_error_class(kind, at_batch_check):
    # torch raises ValueError at the batch check, RuntimeError elsewhere.
    if kind == "scalar":
        return ScalarTargetError
    if kind == "probs":
        return ProbabilityTargetShapeError
    if kind == "batch":
        return BatchSizeMismatchError
    return TargetSizeError if at_batch_check else TargetShapeError
