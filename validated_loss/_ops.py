"""Loads the compiled library and registers, beside each op, its fake kernel and its autograd.

The schemas themselves are written once, in csrc/ops.cpp. Fake kernels give output metadata for
torch.compile and meta tensors; they must match what the C++ kernels allocate.
"""

import math

import torch
import torch.nn.functional as F

from ._library import _C  # noqa: F401  (loading the library registers torch.ops.validated_loss)
from ._status import STATUS_SIZE

ops = torch.ops.validated_loss

REDUCTION_NAMES = {0: "none", 1: "mean", 2: "sum"}

# torch's own F.cross_entropy, captured at import: validated_loss.patch() replaces the attribute on
# torch.nn.functional with ours, and the paths below that want torch's composite must not reach it.
torch_cross_entropy = F.cross_entropy


def accumulate_dtype(dtype):
    """float64 logits accumulate in float64, all others in float32 (as the kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_shape(logits):
    return logits.shape[:1] + logits.shape[2:]


def loss_dtype(logits, acc_loss):
    """The forward ops' loss dtype: the logits', or the accumulate dtype for acc_loss (autocast)."""
    return accumulate_dtype(logits.dtype) if acc_loss else logits.dtype


# ---------------------------------------------------------------------------------------------
# Fake kernels


@torch.library.register_fake("validated_loss::cross_entropy_fwd")
def _fwd_fake(logits, target, weight, reduction, ignore_index, label_smoothing, check_finite=False, validate=1,
              lse_square_scale=0.0, softcap=0.0, acc_loss=False, inplace_backward=False):
    acc = accumulate_dtype(logits.dtype)
    rows = rows_shape(logits)
    loss = logits.new_empty(rows if reduction == 0 else (), dtype=loss_dtype(logits, acc_loss))
    lse = logits.new_empty((math.prod(rows), 2), dtype=acc)
    return loss, lse, logits.new_empty((), dtype=acc), logits.new_empty((STATUS_SIZE,), dtype=torch.int64)


@torch.library.register_fake("validated_loss::cross_entropy_bwd")
def _bwd_fake(grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
              lse_square_scale=0.0, softcap=0.0, grad_lse=None):
    return torch.empty_like(logits)


@torch.library.register_fake("validated_loss::cross_entropy_bwd_")
def _bwd_inplace_fake(logits, grad_loss, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
                      lse_square_scale=0.0, softcap=0.0, grad_lse=None):
    return None


@torch.library.register_fake("validated_loss::cross_entropy_fwd_grad")
def _fwd_grad_fake(logits, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap,
                   grad_loss, grad_lse, check_finite=False, validate=1):
    acc = accumulate_dtype(logits.dtype)
    rows = rows_shape(logits)
    loss = logits.new_empty(rows) if reduction == 0 else logits.new_empty((), dtype=acc)  # 'sum' in acc
    lse = logits.new_empty((math.prod(rows), 2), dtype=acc)
    return loss, lse, logits.new_empty((), dtype=acc), logits.new_empty((STATUS_SIZE,), dtype=torch.int64)


@torch.library.register_fake("validated_loss::cross_entropy_prob_fwd")
def _prob_fwd_fake(logits, target, weight, reduction, label_smoothing, check_finite=False, acc_loss=False):
    rows = rows_shape(logits)
    loss = logits.new_empty(rows if reduction == 0 else (), dtype=loss_dtype(logits, acc_loss))
    lse = logits.new_empty((math.prod(rows), 2), dtype=accumulate_dtype(logits.dtype))
    return loss, lse, logits.new_empty((STATUS_SIZE,), dtype=torch.int64)


@torch.library.register_fake("validated_loss::cross_entropy_prob_bwd")
def _prob_bwd_fake(grad_loss, logits, target, weight, lse, reduction, label_smoothing, target_grad):
    grad_target = torch.empty_like(target) if target_grad else logits.new_empty((0,))
    return torch.empty_like(logits), grad_target


@torch.library.register_fake("validated_loss::raise_for_status")
def _raise_fake(status, target_shape, num_classes, ignore_index, logits_shape):
    return None


# ---------------------------------------------------------------------------------------------
# Autograd. First-order gradients come from the backward ops; the rarely used second order is
# torch's own: the first-order gradient is rebuilt from F.cross_entropy with create_graph and
# differentiated, so double backward has exactly torch's semantics.


def _in_loss_dtype(grad_loss, *tensors):
    """The floating operands cast (differentiably) to the loss's dtype, which grad_loss has: the
    logits' own, or float32 from half logits under autocast (acc_loss), as torch's autocast graph
    computes it. No-op casts outside autocast."""
    return tuple(t.to(grad_loss.dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _torch_first_order(logits, target, weight, reduction, ignore_index, label_smoothing, grad_loss,
                       lse_square_scale=0.0, softcap=0.0, grad_lse=None):
    """torch's d loss / d (logits, target) as a differentiable graph (for second order); with the
    LLM options (z-loss, softcap, an lse gradient), the same written with torch ops (_reference)."""
    from . import _reference

    x, q, w = _in_loss_dtype(grad_loss, logits, target, weight)
    if not (lse_square_scale or softcap or grad_lse is not None):
        if q.is_floating_point():
            loss = _reference.probability_cross_entropy(x, q, w, REDUCTION_NAMES[reduction], label_smoothing)
        else:
            loss = torch_cross_entropy(x, q, w, ignore_index=ignore_index,
                                       reduction=REDUCTION_NAMES[reduction], label_smoothing=label_smoothing)
        wrt = [logits] + ([target] if target.requires_grad else [])
        return torch.autograd.grad(loss, wrt, grad_loss, create_graph=True)

    loss, lse = _reference.cross_entropy(x, q, w, REDUCTION_NAMES[reduction], ignore_index,
                                         label_smoothing, lse_square_scale, softcap or None)
    total = (loss * grad_loss).sum()
    if grad_lse is not None:
        total = total + (lse.reshape(-1) * grad_lse.reshape(-1)).sum()
    return torch.autograd.grad(total, [logits], create_graph=True)


def _second_order(ctx_inputs, grads_out, build):
    """Differentiates the first-order gradients `build(*leaves)` w.r.t. the leaves."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in ctx_inputs]
    with torch.enable_grad():
        first = build(*leaves)
        pairs = [(f, g) for f, g in zip(first, grads_out) if g is not None]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        found = torch.autograd.grad([f for f, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True,
                                    create_graph=torch.is_grad_enabled())
    by_leaf = dict(zip(map(id, wanted), found))
    return [by_leaf.get(id(leaf)) for leaf in leaves]


def _fwd_setup(ctx, inputs, output):
    logits, target, weight, reduction, ignore_index, label_smoothing = inputs[:6]
    lse_square_scale, softcap = (inputs[8], inputs[9]) if len(inputs) > 8 else (0.0, 0.0)
    ctx.inplace_backward = len(inputs) > 11 and inputs[11]
    loss, lse, total_weight, _ = output
    ctx.set_materialize_grads(False)  # no zero-filled gradients for lse, total_weight and status
    ctx.save_for_backward(logits, target, weight, lse, total_weight)
    ctx.args = (reduction, ignore_index, label_smoothing, lse_square_scale, softcap)
    ctx.loss_shape = loss.shape
    ctx.num_inputs = len(inputs)


def _fwd_backward(ctx, grad_loss, grad_lse, grad_total_weight, grad_status):
    if not torch.compiler.is_compiling():
        from . import _deferred  # validate="deferred": a bad target is reported by backward at the latest

        _deferred.check_pending()
    try:
        logits, target, weight, lse, total_weight = ctx.saved_tensors
    except RuntimeError as error:
        if ctx.inplace_backward:  # our own gradient write bumped the version: torch's error, as README says
            raise
        from .diagnostics import logits_modified_error  # the logits edited in place after the loss

        raise logits_modified_error(error) from None
    grad = None
    # The saved lse is (max, log_sum) per row. max is a constant shift: the gradient of
    # max + log_sum (what return_lse gives) arrives on both columns and is taken from log_sum's,
    # whose derivative with max held fixed is the softmax.
    lse_grad = None if grad_lse is None else grad_lse[:, 1]
    if ctx.needs_input_grad[0] and (grad_loss is not None or lse_grad is not None):
        if grad_loss is None:
            grad_loss = logits.new_zeros(ctx.loss_shape)
        if _gradient_in_place(ctx, logits):
            ops.cross_entropy_bwd_(logits, grad_loss, target, weight, lse, total_weight, *ctx.args, lse_grad)
            # The logits now hold their gradient: any other node that saved them (logits.exp(), a
            # second backward through this graph) must raise rather than read it.
            torch.autograd.graph.increment_version(logits)
            grad = logits
        else:
            grad = ops.cross_entropy_bwd(grad_loss, logits, target, weight, lse, total_weight, *ctx.args, lse_grad)
    return (grad,) + (None,) * (ctx.num_inputs - 1)


def _gradient_in_place(ctx, logits):
    """inplace_backward, when the gradient can be written over the logits: not under create_graph
    (double backward differentiates this gradient: it must be a graph of its own, not the logits'
    storage), not while torch.compile or compiled autograd traces the backward, and only over
    logits whose every element has memory of its own (ATen's has_internal_overlap says "no": the
    check cross_entropy_bwd_ makes); in every other case the normal backward allocates a gradient."""
    return (ctx.inplace_backward and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and torch._debug_has_internal_overlap(logits) == 0)


def _bwd_setup(ctx, inputs, output):
    grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing = inputs[:9]
    lse_square_scale, softcap, grad_lse = (inputs[9], inputs[10], inputs[11]) if len(inputs) > 9 else (0.0, 0.0, None)
    ctx.save_for_backward(grad_loss, logits, target, weight, grad_lse)
    ctx.args = (reduction, ignore_index, label_smoothing, lse_square_scale, softcap)
    ctx.num_inputs = len(inputs)


def _bwd_backward(ctx, grad_grad):
    grad_loss, logits, target, weight, grad_lse = ctx.saved_tensors
    reduction, ignore_index, label_smoothing, lse_square_scale, softcap = ctx.args

    def build(g, x, *g_lse):
        return _torch_first_order(x, target, weight, reduction, ignore_index, label_smoothing, g, lse_square_scale,
                                  softcap, g_lse[0] if g_lse else None)

    leaves = [grad_loss, logits] + ([grad_lse] if grad_lse is not None else [])
    d_grad_loss, d_logits, *d_grad_lse = _second_order(leaves, [grad_grad], build)
    grads = [d_grad_loss, d_logits] + [None] * (ctx.num_inputs - 2)
    if len(grads) > 11:
        grads[11] = d_grad_lse[0] if d_grad_lse else None
    return tuple(grads)


def _prob_fwd_setup(ctx, inputs, output):
    logits, target, weight, reduction, label_smoothing = inputs[:5]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.args = (reduction, label_smoothing)
    ctx.num_inputs = len(inputs)


def _prob_fwd_backward(ctx, grad_loss, grad_lse, grad_status):
    logits, target, weight, lse = ctx.saved_tensors
    reduction, label_smoothing = ctx.args
    grad_x = grad_q = grad_w = None
    no_grads = (None,) * (ctx.num_inputs - 3)
    if grad_loss is None:
        return (None, None, None) + no_grads
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_x, grad_q = ops.cross_entropy_prob_bwd(grad_loss, logits, target, weight, lse, reduction,
                                                    label_smoothing, ctx.needs_input_grad[1])
        grad_q = grad_q if ctx.needs_input_grad[1] else None
    if ctx.needs_input_grad[2]:
        # Only the probability path lets gradients reach the class weights (as in torch); rare
        # enough that torch ops compute it.
        from . import _reference

        with torch.enable_grad():
            w = weight.detach().requires_grad_()
            x, q, w_loss = _in_loss_dtype(grad_loss, logits.detach(), target.detach(), w)
            loss = _reference.probability_cross_entropy(x, q, w_loss, REDUCTION_NAMES[reduction], label_smoothing)
            (grad_w,) = torch.autograd.grad(loss, w, grad_loss)
    return (grad_x, grad_q, grad_w) + no_grads


def _prob_bwd_setup(ctx, inputs, output):
    grad_loss, logits, target, weight, lse, reduction, label_smoothing, target_grad = inputs
    ctx.save_for_backward(grad_loss, logits, target, weight)
    ctx.args = (reduction, label_smoothing, target_grad)


def _prob_bwd_backward(ctx, grad_grad_x, grad_grad_q):
    grad_loss, logits, target, weight = ctx.saved_tensors
    reduction, label_smoothing, target_grad = ctx.args

    def build(g, x, q, *w):
        q.requires_grad_(target_grad)
        return _torch_first_order(x, q, w[0] if w else None, reduction, -100, label_smoothing, g)

    grads_out = [grad_grad_x] + ([grad_grad_q] if target_grad else [])
    leaves = [grad_loss, logits, target] + ([weight] if weight is not None else [])
    d_grad_loss, d_logits, d_target, *d_weight = _second_order(leaves, grads_out, build)
    return d_grad_loss, d_logits, d_target, (d_weight[0] if d_weight else None), None, None, None, None


torch.library.register_autograd("validated_loss::cross_entropy_fwd", _fwd_backward, setup_context=_fwd_setup)
torch.library.register_autograd("validated_loss::cross_entropy_bwd", _bwd_backward, setup_context=_bwd_setup)
torch.library.register_autograd("validated_loss::cross_entropy_prob_fwd", _prob_fwd_backward,
                                setup_context=_prob_fwd_setup)
torch.library.register_autograd("validated_loss::cross_entropy_prob_bwd", _prob_bwd_backward,
                                setup_context=_prob_bwd_setup)


def _devices_with_kernels():
    keys = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}  # Meta: the fake kernels (shapes only)
    return frozenset(device for device, key in keys.items()
                     if torch._C._dispatch_has_kernel_for_dispatch_key("validated_loss::cross_entropy_fwd", key))


# Computed once: torch.compile traces a constant set lookup, not a dispatcher query.
KERNEL_DEVICES = _devices_with_kernels()


def has_kernel(device_type):
    """Whether this build has kernels of its own for a device type ('cpu', 'cuda', ...)."""
    return device_type in KERNEL_DEVICES
