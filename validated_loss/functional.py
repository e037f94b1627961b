"""cross_entropy: torch's signature and semantics, one call into the fused ops.

This layer only normalises arguments (legacy size_average/reduce, reduction names, 1-D inputs,
dtype promotion of probability targets) and asks checks.py to explain metadata misuse before
the kernel runs. Value checks (target range, non-finite logits) happen inside the kernel's own
pass, and the op raises the package's exception classes itself, fields filled
(csrc/python_errors.cpp), so they are the same inside torch.compile graphs; how CUDA reports them is
the validate mode, decided once per call by _deferred.policy.
"""

import functools
import operator

import torch
from torch._C._functorch import TransformType
from torch.autograd import forward_ad
from torch.nn import _reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _deferred, _ops, _reference, checks
from ._autocast import autocast_dtype, autocast_enabled
from ._llm_options import NO_LLM_OPTIONS, llm_options
from ._ops import VALIDATE_NAMES as VALIDATE_MODES, LossOptions, Reduction
from ._text import LOGIT_DTYPES
from .target_range import find_out_of_range


def cross_entropy(
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
    label_smoothing=0.0,
    *,
    validate="sync",
    check_finite=False,
    lse_square_scale=0.0,
    softcap=None,
    return_lse=False,
    inplace_backward=False,
):
    """Drop-in for torch.nn.functional.cross_entropy, computed by validated_loss's fused kernels.

    Extra keyword arguments:
      validate: "sync" (default), "deferred" or "off" — how a bad target found on a CUDA device is
        reported (see README); on the CPU every mode raises at once, at no cost.
      check_finite: also report the first NaN/inf logit (row and class), from the same pass.
    LLM-training options (class-index targets; the defaults change nothing):
      lse_square_scale: z-loss, + lse_square_scale * lse^2 for every non-ignored row, unweighted,
        added to the cross-entropy before the reduction ('mean' divides by the same total weight;
        without class weights: the mean over non-ignored rows, as Liger and flash-attn).
      softcap: logits x become softcap * tanh(x / softcap) before the softmax (Gemma 2).
      return_lse: return (loss, lse), lse the log-sum-exp of each row's (capped) logits in the
        target's shape, float32 (float64 for float64 logits), 0 for ignored rows; differentiable.
      inplace_backward: the backward writes the gradient over the logits' memory instead of
        allocating one (class-index targets; see README for when it falls back and what it refuses).
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            cross_entropy, (input, target, weight), input, target, weight=weight, size_average=size_average,
            ignore_index=ignore_index, reduce=reduce, reduction=reduction, label_smoothing=label_smoothing,
            validate=validate, check_finite=check_finite, lse_square_scale=lse_square_scale, softcap=softcap,
            return_lse=return_lse, inplace_backward=inplace_backward,
        )
    if (weight is None and size_average is None and reduce is None and reduction == "mean" and validate == "sync"
            and check_finite is False and softcap is None and return_lse is False and inplace_backward is False
            and type(label_smoothing) is float and label_smoothing == 0.0 and type(lse_square_scale) is float
            and lse_square_scale == 0.0 and type(ignore_index) is int and -(2**63) <= ignore_index < 2**63
            and _common_case(input, target)):
        options = _COMMON_OPTIONS if ignore_index == -100 else _COMMON_OPTIONS._replace(ignore_index=ignore_index)
        return _ops.forward(input, target, None, options)[0]
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)  # warns as torch does
    reduction_code = _reduction.get_enum(reduction)  # ValueError for unknown names, as torch
    ignore_index, label_smoothing = check_argument_types(input, target, weight, ignore_index, label_smoothing)
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {sorted(VALIDATE_MODES)}, got {validate!r}")
    llm = llm_options(lse_square_scale, softcap, return_lse)
    mode = checks.check_inputs(input, target, weight, ignore_index, label_smoothing)
    if mode == "probs" and llm.any:
        raise NotImplementedError("lse_square_scale, softcap and return_lse need class-index targets; "
                                  "this target has the input's shape (class probabilities)")
    if inplace_backward and mode == "probs":
        raise NotImplementedError("inplace_backward needs class-index targets; this target has the input's shape "
                                  "(class probabilities): pass inplace_backward=False")
    # torch's autocast runs cross_entropy under its fp32 policy: float32 results from half and
    # bfloat16 operands. Our kernels read those as they are, accumulate in float32 anyway and
    # write a float32 loss (acc_loss): no float32 copy of the logits.
    autocast = autocast_enabled(input)
    if not torch.compiler.is_compiling():
        _deferred.check_pending()  # an earlier call's bad target surfaces here at the latest (never waits)

    if not _ops.has_kernel(input.device.type) or _needs_torch_composite(input, target):
        input, target, weight = _autocast_to_float32(autocast, input, target, weight)
        return _torch_fallback(input, target, weight, reduction_code, ignore_index, label_smoothing, mode, llm)
    if mode == "probs":
        return _probability_loss(input, target, weight, reduction_code, label_smoothing, check_finite, autocast)
    # Only our autograd writes in place (torch's fallbacks above compute their own gradient), and
    # not under torch.compile, which traces the normal backward: there the option is ignored, and so
    # is its check.
    inplace_backward = bool(inplace_backward) and not torch.compiler.is_compiling()
    if inplace_backward:
        checks.check_inplace_backward(input)
    return _class_index_loss(input, target, weight, reduction_code, ignore_index, label_smoothing, check_finite,
                             VALIDATE_MODES[validate], llm, acc_loss=autocast, inplace_backward=inplace_backward)


# The common case (issue 16: small calls cost what torch's do), decided in one place. Every option at
# its default (ignore_index any int), no weight, and tensors for which every check of
# checks.check_inputs holds by construction: 2-D logits of a kernel dtype and a 1-D int64 target of
# the same length, both on the CPU (where validation is always 'sync' and the op raises bad values
# itself); eager, outside autocast, functorch transforms and forward-mode AD, with no deferred check
# pending. Such a call goes straight to the op with the options the general path would compute.
_COMMON_OPTIONS = LossOptions(reduction=int(Reduction.MEAN), validate=VALIDATE_MODES["sync"])
_CPU_KERNELS = _ops.has_kernel("cpu")


def _common_case(input, target):
    return (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor) and _CPU_KERNELS
            and input.dim() == 2 and target.dim() == 1 and input.is_cpu and target.is_cpu
            and target.dtype == torch.int64 and input.dtype in LOGIT_DTYPES and input.shape[0] == target.shape[0]
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and torch._C._functorch.peek_interpreter_stack() is None and not _forward_ad_active()
            and not _deferred.pending_count())


def _forward_ad_active():
    """Whether a forward-mode AD level is open (tensors have tangents only inside one);
    forward_ad.unpack_dual answers per tensor, at ten times the cost."""
    return forward_ad._current_level >= 0


def _autocast_to_float32(autocast, *tensors):
    """What autocast's fp32 policy does to the operands (half and bfloat16 cast to float32,
    float64 left alone), for the paths that hand them to torch's ops rather than our kernels."""
    if not autocast:
        return tensors
    return tuple(t if t is None else t.to(autocast_dtype(t)) for t in tensors)


def _needs_torch_composite(input, target):
    """torch.func.grad/jvp and forward-mode AD: the autograd torch.library gives our ops supports
    neither in torch 2.13 (grad raises, forward AD would give a silently zero tangent), so those
    calls are computed by torch's composite, after the same checks."""
    if torch.compiler.is_compiling():
        return False
    interpreter = torch._C._functorch.peek_interpreter_stack()
    if interpreter is not None and interpreter.key() in (TransformType.Grad, TransformType.Jvp):
        return True
    return any(forward_ad.unpack_dual(t).tangent is not None for t in (input, target))


def check_argument_types(input, target, weight, ignore_index, label_smoothing):
    """The TypeErrors torch's argument parser raises, with its wording (distributed's loss too)."""
    for position, (name, value) in enumerate((("input", input), ("target", target)), start=1):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"cross_entropy_loss(): argument '{name}' (position {position}) must be Tensor, "
                            f"not {type(value).__name__}")
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError("cross_entropy_loss(): argument 'weight' (position 3) must be Tensor, "
                        f"not {type(weight).__name__}")
    ignore_index = int_argument(ignore_index, "cross_entropy_loss(): argument 'ignore_index' (position 5)")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError("Overflow when unpacking long long")
    label_smoothing = float_argument(label_smoothing, "cross_entropy_loss(): argument 'label_smoothing' (position 6)")
    return ignore_index, label_smoothing


def int_argument(value, argument):
    """An int argument as torch's parser takes it (bool refused); `argument` names it in the error."""
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{argument} must be int, not {type(value).__name__}") from None


def float_argument(value, argument):
    """A float argument as torch's parser takes it (int or 0-dim tensor accepted, bool refused)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be float, not {type(value).__name__}")
    return float(value)


# csrc/row_geometry.h's kMaxRowDims: how many row dimensions that do not merge the kernels address.
_KERNEL_ROW_DIMS = 16


def _addressable(t):
    """Logits (or probability targets) the kernels can address. Past _KERNEL_ROW_DIMS row
    dimensions their strides may not merge: such a (rare) tensor is read through a contiguous copy,
    whose row dimensions merge into two at most. Differentiable, like any copy."""
    return t.contiguous() if t.dim() - 1 > _KERNEL_ROW_DIMS else t


def _class_index_loss(input, target, weight, reduction, ignore_index, label_smoothing, check_finite, validate,
                      llm=None, acc_loss=False, inplace_backward=False):
    llm = llm or NO_LLM_OPTIONS
    one_dim = input.dim() == 1  # (C,) logits with a () or (1,) target: one row
    logits = input.unsqueeze(0) if one_dim else _addressable(input)
    rows = target.reshape(1) if one_dim else target
    options = LossOptions(reduction, ignore_index, label_smoothing, llm.lse_square_scale, llm.softcap_code,
                          check_finite, _deferred.policy(validate, logits.device))
    loss, row_stats, _, _ = _ops.forward(logits, rows, weight, options, acc_loss, inplace_backward)
    loss = loss.reshape(()) if one_dim and reduction == Reduction.NONE else loss
    if not llm.return_lse:
        return loss
    # max + log_sum: autograd routes its gradient into the op's backward (see csrc/autograd.cpp).
    return loss, (row_stats[:, 0] + row_stats[:, 1]).reshape(target.shape)


def _probability_loss(input, target, weight, reduction, label_smoothing, check_finite, autocast=False):
    # torch computes in result_type(input, target[, weight]) (under autocast: of the float32 its
    # fp32 policy makes of half and bfloat16 operands); promote (a no-op when they agree).
    operands = (input, target) if weight is None else (input, target, weight)
    dtype = functools.reduce(torch.promote_types, (autocast_dtype(t) for t in operands))
    # Autocast with half or bfloat16 logits and targets of that same dtype: the kernel reads both
    # as they are (weights are read in float32 anyway) and writes a float32 loss. Mixed dtypes
    # are cast to the promoted one, as torch does.
    direct = autocast and input.dtype == target.dtype and _ops.loss_dtype(input, True) == dtype
    if not direct:
        input, target = input.to(dtype), target.to(dtype)
        weight = weight.to(dtype) if weight is not None else None
    one_dim = input.dim() == 1
    if one_dim:
        logits, probs = input.unsqueeze(0), target.unsqueeze(0)
    else:
        logits, probs = _addressable(input), _addressable(target)
    if check_finite:
        _deferred.policy(_deferred.SYNC, logits.device)  # check_finite is 'sync' here; under capture the op queues it
    loss, _, _ = _ops.prob_forward(logits, probs, weight, reduction, label_smoothing, check_finite, direct)
    return loss.reshape(()) if one_dim and reduction == Reduction.NONE else loss


def _torch_fallback(input, target, weight, reduction, ignore_index, label_smoothing, mode, llm=None):
    """A device with no kernel of ours (mps, xpu, ...) or a transform our ops do not support: the
    same checks, then torch computes."""
    if mode == "index":
        error = find_out_of_range(input, target, ignore_index)
        if error is not None:
            raise error
    if llm is not None and llm.any:
        loss, lse = _reference.cross_entropy(input, target, weight, Reduction(reduction).label, ignore_index,
                                             label_smoothing, llm.lse_square_scale, llm.softcap)
        return (loss, lse.to(_ops.accumulate_dtype(input.dtype))) if llm.return_lse else loss
    # torch's function captured at import: torch.nn.functional.cross_entropy is ours while patched.
    return _reference.torch_cross_entropy(input, target, weight, ignore_index=ignore_index,
                                          reduction=Reduction(reduction).label, label_smoothing=label_smoothing)
