"""linear_cross_entropy: torch's F.linear_cross_entropy (torch 2.13) with chunks of this project's
fused kernel, so that the (N, C) logits never exist at once.

This file handles torch's arguments (same signature, defaults, checks and messages), the same
validation and diagnostics as cross_entropy (metadata through diagnostics.check_inputs on a
stand-in for the logits, target values checked once up front over the whole target), and picks
the path:
  * chunked (_linear_chunked): class-index targets, a 2-D linear_weight, a device with our
    kernels, one floating dtype throughout (class weights of any floating dtype where `options`
    asks for torch's chunked path, as torch takes them there); `options` contributes its
    batch_chunk_size, allow_retain_graph and the accumulate dtype it resolves to (acc_dtype,
    acc_policy: half/bfloat16 computed in float32, as torch's chunked path) (the chunked path is
    always on);
  * otherwise the logits are computed whole and passed to validated_loss.cross_entropy, as
    torch's reference path does (probability targets, K-dimensional weights, autocast, functorch
    transforms, forward-mode AD, mixed dtypes: torch's own errors then).
"""

import warnings

import torch
import torch.nn.functional as F
from torch.nn import _reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _compiler, _deferred, _ops, checks
from . import _linear_chunked
from ._linear_chunked import Plan, auto_chunk_rows
from ._llm_options import llm_options
from ._ops import VALIDATE_NAMES as VALIDATE_MODES, Reduction
from ._reference import target_status
from ._status import STATUS_INVALID_COUNT
from .errors import ValidatedLossError
from .functional import cross_entropy, float_argument, int_argument

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def linear_cross_entropy(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    reduction="mean",
    ignore_index=None,
    label_smoothing=0.0,
    options=None,
    lse_square_scale=0.0,
    softcap=None,
    return_lse=False,
    chunk_size=None,
    validate="sync",
):
    """Drop-in for torch.nn.functional.linear_cross_entropy: cross_entropy(input @ linear_weight.T
    + linear_bias, target, ...) computed in chunks of rows (see the module docstring).

    Extra keyword arguments:
      lse_square_scale, softcap, return_lse: as in validated_loss.cross_entropy (z-loss, logit
        softcapping, (loss, lse) returned).
      chunk_size: rows per chunk; default options.batch_chunk_size, else about 64 MiB of chunk
        logits.
      validate: "sync", "deferred" or "off", as in cross_entropy (the CPU always raises).
    """
    if has_torch_function_variadic(input, linear_weight, target, linear_bias, weight):
        return handle_torch_function(
            linear_cross_entropy, (input, linear_weight, target, linear_bias, weight), input, linear_weight,
            target, linear_bias=linear_bias, weight=weight, reduction=reduction, ignore_index=ignore_index,
            label_smoothing=label_smoothing, options=options, lse_square_scale=lse_square_scale, softcap=softcap,
            return_lse=return_lse, chunk_size=chunk_size, validate=validate)
    logits_shape = _check_shapes(input, linear_weight, linear_bias)
    probabilities = tuple(target.shape) == logits_shape
    if probabilities and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    llm = llm_options(lse_square_scale, softcap, return_lse)
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {sorted(VALIDATE_MODES)}, got {validate!r}")
    chunk_rows = _chunk_rows(chunk_size, options)
    torch_chunked = _torch_takes_chunked_path(options, reduction, label_smoothing, target, linear_weight)
    compute = _options_accumulate_dtype(options, input) if torch_chunked else None
    common = dict(weight=weight, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                  validate=validate, lse_square_scale=lse_square_scale, softcap=softcap, return_lse=return_lse)
    if probabilities or not _chunkable(input, linear_weight, linear_bias, target):
        return _whole_logits(input, linear_weight, target, linear_bias, logits_shape, options, common)
    result_dtype = input.dtype
    if compute is not None:
        # torch's chunked path computes in the options' accumulate dtype (float32 for half and
        # bfloat16 under acc_policy "auto"): so do we, through differentiable casts.
        input, linear_weight = input.to(compute), linear_weight.to(compute)
        linear_bias = None if linear_bias is None else linear_bias.to(compute)

    reduction_code = _reduction.get_enum(reduction)  # ValueError for unknown names, as torch
    ignore_index, label_smoothing = _check_argument_types(ignore_index, label_smoothing)
    # torch's chunked path takes class weights of any floating dtype (the kernels read them in
    # float32 or float64 anyway); its reference path, like cross_entropy, wants the input's.
    checked_weight = weight.to(input.dtype) if torch_chunked and _is_float(weight) else weight
    _check_metadata(input, linear_weight, target, checked_weight, ignore_index, label_smoothing, logits_shape)
    one_dim = input.dim() == 1
    x = input.unsqueeze(0) if one_dim else input
    rows = target.reshape(1) if one_dim else target
    _check_targets(target, linear_weight.shape[0], ignore_index, logits_shape, VALIDATE_MODES[validate], x.device)
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(x.shape[0], linear_weight.shape[0], x.element_size())
    plan = Plan(reduction_code, ignore_index, label_smoothing, llm, chunk_rows,
                bool(getattr(options, "allow_retain_graph", False)))
    loss, lse = _run_chunked(x, linear_weight, linear_bias, rows.contiguous(), weight, plan)
    loss = loss.to(result_dtype)
    if one_dim and reduction_code == Reduction.NONE:
        loss = loss.reshape(())
    return (loss, lse.reshape(target.shape)) if llm.return_lse else loss


@_compiler.disable
def _run_chunked(x, linear_weight, linear_bias, target, weight, plan):
    # A Python loop over chunks with in-place buffers: runs eagerly under torch.compile.
    return _linear_chunked.apply(x, linear_weight, linear_bias, target, weight, plan)


def _check_shapes(input, linear_weight, linear_bias):
    """torch's checks and messages (F.linear_cross_entropy); returns the logits' shape."""
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    num_batches = tuple(input.shape[:-1])
    in_features = input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise RuntimeError(
            "expected equal input and linear_weight last dimensions (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    num_classes = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(num_classes, *out_features)}, got {tuple(linear_bias.shape)}")
    if out_features and not num_batches:
        raise RuntimeError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} requires"
            f" batched input, (N, {in_features}), got unbatched input with shape {tuple(input.shape)}")
    return (*num_batches, num_classes, *out_features)


def _is_float(t):
    return t is not None and isinstance(t, torch.Tensor) and t.dtype in _FLOATS


def _torch_takes_chunked_path(options, reduction, label_smoothing, target, linear_weight):
    """Whether torch's F.linear_cross_entropy would take its chunked path (its own conditions)."""
    return (options is not None and reduction in ("mean", "sum", "none") and label_smoothing == 0.0
            and isinstance(target, torch.Tensor) and target.dtype == torch.int64 and linear_weight.dim() == 2
            and not torch.jit.is_tracing())


def _options_accumulate_dtype(options, input):
    """The dtype torch's chunked path computes half/bfloat16 input in, from options.acc_dtype and
    acc_policy (LinearCrossEntropyOptions._adjust's rule): float32 or float64, or None to compute
    in the input's dtype."""
    if input.dtype not in (torch.float16, torch.bfloat16):
        return None
    acc = getattr(options, "acc_dtype", None)
    if acc is None and getattr(options, "acc_policy", "auto") == "auto":
        resolve = getattr(type(options), "_resolve_auto_acc_dtype", None)
        acc = resolve(input.dtype, input.device) if resolve is not None else torch.float32
    return acc if acc in (torch.float32, torch.float64) else None


def _chunk_rows(chunk_size, options):
    rows = chunk_size if chunk_size is not None else getattr(options, "batch_chunk_size", None)
    if rows is None:
        return None
    if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {rows!r}")
    return rows


def _chunkable(input, linear_weight, linear_bias, target):
    """Whether the chunked path computes exactly what the reference path would."""
    dtype = input.dtype
    if dtype not in _FLOATS or linear_weight.dtype != dtype or linear_weight.dim() != 2:
        return False
    if linear_bias is not None and (linear_bias.dtype != dtype or linear_bias.device != input.device):
        return False
    if linear_weight.device != input.device or not _ops.has_kernel(input.device.type):
        return False
    if linear_weight.shape[0] == 0 or torch.is_autocast_enabled(input.device.type):
        return False
    if target.is_floating_point():
        return False
    return not _under_transform(input, linear_weight, linear_bias)


def _under_transform(*tensors):
    """functorch transforms and forward-mode AD need a differentiable graph of torch ops."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    return any(t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _whole_logits(input, linear_weight, target, linear_bias, logits_shape, options, common):
    """torch's reference path with our cross_entropy: the full logits."""
    if options is not None:
        warnings.warn("validated_loss.linear_cross_entropy: computing the full logits (chunking needs class-index "
                      "targets, a 2-D linear_weight and one dtype, outside autocast and functorch transforms)",
                      stacklevel=3)
    out_features = linear_weight.shape[1:-1]
    num_classes, in_features = linear_weight.shape[0], linear_weight.shape[-1]
    if out_features:
        rows = num_classes
        for size in out_features:
            rows *= size
        linear_weight = linear_weight.reshape(rows, in_features)
        if linear_bias is not None:
            linear_bias = linear_bias.reshape(rows)
    logits = F.linear(input, linear_weight, linear_bias).reshape(logits_shape)
    return cross_entropy(logits, target, **common)


def _check_argument_types(ignore_index, label_smoothing):
    return (int_argument(ignore_index, "linear_cross_entropy(): argument 'ignore_index'"),
            float_argument(label_smoothing, "linear_cross_entropy(): argument 'label_smoothing'"))


def _check_metadata(input, linear_weight, target, weight, ignore_index, label_smoothing, logits_shape):
    """cross_entropy's metadata checks (batch size, target rank and dtype, class weights, devices,
    smoothing) run on a zero-byte stand-in with the logits' shape, dtype and device; the message
    then says what 'input' stands for."""
    stand_in = input.new_empty((1,)).as_strided(logits_shape, (0,) * len(logits_shape))
    try:
        checks.check_inputs(stand_in, target, weight, ignore_index, label_smoothing)
    except ValidatedLossError as error:
        note = (f"\n(linear_cross_entropy: 'input' above is the logits input @ linear_weight.T, shape "
                f"{tuple(logits_shape)}; input has shape {tuple(input.shape)}, linear_weight "
                f"{tuple(linear_weight.shape)})")
        error.args = (str(error.args[0]) + note,) + error.args[1:]
        raise


def _check_targets(target, num_classes, ignore_index, logits_shape, validate, device):
    """Out-of-range targets, over the whole target (positions are the target's, not a chunk's),
    before any product is computed; reported as _deferred.host_check decides."""
    if not torch.compiler.is_compiling():
        _deferred.check_pending()  # an earlier call's error, in every mode (as cross_entropy)
    action = _deferred.host_check(validate, device)
    if action == "skip":
        return
    status = target_status(target, num_classes, ignore_index)
    if action == "queue":
        _deferred.submit(status, target.shape, num_classes, ignore_index, logits_shape)
        return
    status = status.cpu()
    if int(status[STATUS_INVALID_COUNT]) <= 0:
        return
    _ops.raise_for_status(status, target.shape, num_classes, ignore_index, logits_shape)
