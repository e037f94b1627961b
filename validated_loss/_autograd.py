"""Autograd of the ops (torch.library.register_autograd), reading the ops' inputs by name; the
forward op's is C++ (csrc/autograd.cpp) where _C was built against the running torch's minor release
(a training step's loss then crosses no Python between forward and gradient; issue 16), else the
Python version here.

First-order gradients come from the backward ops; the rarely used second order is torch's own: the
first-order gradient is rebuilt from torch ops (_reference) with create_graph and differentiated, so
double backward has exactly torch's semantics.
"""

import os
from typing import NamedTuple, Optional

import torch

from . import _deferred, _library, _ops, _reference, _torch_support
from ._ops import LossOptions, Reduction
from .checks import logits_modified_error

try:
    from ._build_info import TORCH_VERSION as BUILT_AGAINST
except ImportError:  # a source tree built by hand: no record, the running torch's build
    BUILT_AGAINST = None


# The ops' inputs as torch.library hands them to setup_context (a tuple in schema order, csrc/ops.cpp;
# trailing defaults may be missing): named here once.
class FwdInputs(NamedTuple):
    logits: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    reduction: int
    ignore_index: int
    label_smoothing: float
    check_finite: bool = False
    validate: int = 1
    lse_square_scale: float = 0.0
    softcap: float = 0.0
    acc_loss: bool = False
    inplace_backward: bool = False  # read by autograd only: the kernels ignore it


class BwdInputs(NamedTuple):
    grad_loss: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    lse: torch.Tensor
    total_weight: torch.Tensor
    reduction: int
    ignore_index: int
    label_smoothing: float
    lse_square_scale: float = 0.0
    softcap: float = 0.0
    grad_lse: Optional[torch.Tensor] = None


class ProbFwdInputs(NamedTuple):
    logits: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    reduction: int
    label_smoothing: float
    check_finite: bool = False
    acc_loss: bool = False


class ProbBwdInputs(NamedTuple):
    grad_loss: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    lse: torch.Tensor
    reduction: int
    label_smoothing: float
    target_grad: bool


def _options(a) -> LossOptions:
    """The loss options the backward ops take, from a forward's or backward's named inputs."""
    return LossOptions(a.reduction, a.ignore_index, a.label_smoothing, a.lse_square_scale, a.softcap)


def _in_loss_dtype(grad_loss, *tensors):
    """The floating operands cast (differentiably) to the loss's dtype, which grad_loss has: the
    logits' own, or float32 from half logits under autocast (acc_loss), as torch's autocast graph
    computes it. No-op casts outside autocast."""
    return tuple(t.to(grad_loss.dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _torch_first_order(logits, target, weight, o: LossOptions, grad_loss, grad_lse=None):
    """torch's d loss / d (logits, target) as a differentiable graph (for second order); with the
    LLM options (z-loss, softcap, an lse gradient), the same written with torch ops (_reference)."""
    x, q, w = _in_loss_dtype(grad_loss, logits, target, weight)
    reduction = Reduction(o.reduction).label
    if not (o.lse_square_scale or o.softcap or grad_lse is not None):
        if q.is_floating_point():
            loss = _reference.probability_cross_entropy(x, q, w, reduction, o.label_smoothing)
        else:
            loss = _reference.torch_cross_entropy(x, q, w, ignore_index=o.ignore_index, reduction=reduction,
                                                  label_smoothing=o.label_smoothing)
        wrt = [logits] + ([target] if target.requires_grad else [])
        return torch.autograd.grad(loss, wrt, grad_loss, create_graph=True)

    loss, lse = _reference.cross_entropy(x, q, w, reduction, o.ignore_index, o.label_smoothing, o.lse_square_scale,
                                         o.softcap or None)
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


# cross_entropy_fwd's autograd in Python: registered only where the C++ one is not (see the end).
def _fwd_setup(ctx, inputs, output):
    a = FwdInputs(*inputs)
    ctx.inplace_backward = a.inplace_backward
    loss, lse, total_weight, _ = output
    ctx.set_materialize_grads(False)  # no zero-filled gradients for lse, total_weight and status
    ctx.save_for_backward(a.logits, a.target, a.weight, lse, total_weight)
    ctx.options = _options(a)
    ctx.loss_shape = loss.shape
    ctx.num_inputs = len(inputs)


def _fwd_backward(ctx, grad_loss, grad_lse, grad_total_weight, grad_status):
    if not torch.compiler.is_compiling():
        _deferred.check_pending()  # validate="deferred": a bad target is reported by backward at the latest
    try:
        logits, target, weight, lse, total_weight = ctx.saved_tensors
    except RuntimeError as error:
        if ctx.inplace_backward:  # our own gradient write bumped the version: torch's error, as README says
            raise
        raise logits_modified_error(error) from None  # the logits edited in place after the loss
    grad = None
    # The saved lse is (max, log_sum) per row. max is a constant shift: the gradient of
    # max + log_sum (what return_lse gives) arrives on both columns and is taken from log_sum's,
    # whose derivative with max held fixed is the softmax.
    lse_grad = None if grad_lse is None else grad_lse[:, 1]
    if ctx.needs_input_grad[0] and (grad_loss is not None or lse_grad is not None):
        if grad_loss is None:
            grad_loss = logits.new_zeros(ctx.loss_shape)
        if _gradient_in_place(ctx, logits):
            _ops.backward_in_place(logits, grad_loss, target, weight, lse, total_weight, ctx.options, lse_grad)
            # The logits now hold their gradient: any other node that saved them (logits.exp(), a
            # second backward through this graph) must raise rather than read it.
            torch.autograd.graph.increment_version(logits)
            grad = logits
        else:
            grad = _ops.backward(grad_loss, logits, target, weight, lse, total_weight, ctx.options, lse_grad)
    return (grad,) + (None,) * (ctx.num_inputs - 1)


def _gradient_in_place(ctx, logits):
    """inplace_backward, when the gradient can be written over the logits: not under create_graph
    (double backward differentiates this gradient: it must be a graph of its own, not the logits'
    storage), not while torch.compile or compiled autograd traces the backward, and only over
    logits whose every element has memory of its own (ATen's has_internal_overlap says "no": the
    check cross_entropy_bwd_ makes); in every other case the normal backward allocates a gradient."""
    return (ctx.inplace_backward and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and torch._debug_has_internal_overlap(logits) == 0)


_GRAD_LSE_INPUT = BwdInputs._fields.index("grad_lse")


def _bwd_setup(ctx, inputs, output):
    a = BwdInputs(*inputs)
    ctx.save_for_backward(a.grad_loss, a.logits, a.target, a.weight, a.grad_lse)
    ctx.options = _options(a)
    ctx.num_inputs = len(inputs)


def _bwd_backward(ctx, grad_grad):
    grad_loss, logits, target, weight, grad_lse = ctx.saved_tensors
    o = ctx.options

    def build(g, x, *g_lse):
        return _torch_first_order(x, target, weight, o, g, g_lse[0] if g_lse else None)

    leaves = [grad_loss, logits] + ([grad_lse] if grad_lse is not None else [])
    d_grad_loss, d_logits, *d_grad_lse = _second_order(leaves, [grad_grad], build)
    grads = [d_grad_loss, d_logits] + [None] * (ctx.num_inputs - 2)
    if len(grads) > _GRAD_LSE_INPUT:
        grads[_GRAD_LSE_INPUT] = d_grad_lse[0] if d_grad_lse else None
    return tuple(grads)


def _prob_fwd_setup(ctx, inputs, output):
    a = ProbFwdInputs(*inputs)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(a.logits, a.target, a.weight, output[1])
    ctx.args = (a.reduction, a.label_smoothing)
    ctx.num_inputs = len(inputs)


def _prob_fwd_backward(ctx, grad_loss, grad_lse, grad_status):
    logits, target, weight, lse = ctx.saved_tensors
    reduction, label_smoothing = ctx.args
    grad_x = grad_q = grad_w = None
    no_grads = (None,) * (ctx.num_inputs - 3)
    if grad_loss is None:
        return (None, None, None) + no_grads
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_x, grad_q = _ops.prob_backward(grad_loss, logits, target, weight, lse, reduction, label_smoothing,
                                            ctx.needs_input_grad[1])
        grad_q = grad_q if ctx.needs_input_grad[1] else None
    if ctx.needs_input_grad[2]:
        # Only the probability path lets gradients reach the class weights (as in torch); rare
        # enough that torch ops compute it.
        with torch.enable_grad():
            w = weight.detach().requires_grad_()
            x, q, w_loss = _in_loss_dtype(grad_loss, logits.detach(), target.detach(), w)
            loss = _reference.probability_cross_entropy(x, q, w_loss, Reduction(reduction).label, label_smoothing)
            (grad_w,) = torch.autograd.grad(loss, w, grad_loss)
    return (grad_x, grad_q, grad_w) + no_grads


def _prob_bwd_setup(ctx, inputs, output):
    a = ProbBwdInputs(*inputs)
    ctx.save_for_backward(a.grad_loss, a.logits, a.target, a.weight)
    ctx.args = (a.reduction, a.label_smoothing, a.target_grad)


def _prob_bwd_backward(ctx, grad_grad_x, grad_grad_q):
    grad_loss, logits, target, weight = ctx.saved_tensors
    reduction, label_smoothing, target_grad = ctx.args

    def build(g, x, q, *w):
        q.requires_grad_(target_grad)
        return _torch_first_order(x, q, w[0] if w else None, LossOptions(reduction, -100, label_smoothing), g)

    grads_out = [grad_grad_x] + ([grad_grad_q] if target_grad else [])
    leaves = [grad_loss, logits, target] + ([weight] if weight is not None else [])
    d_grad_loss, d_logits, d_target, *d_weight = _second_order(leaves, grads_out, build)
    return d_grad_loss, d_logits, d_target, (d_weight[0] if d_weight else None), None, None, None, None


torch.library.register_autograd("validated_loss::cross_entropy_bwd", _bwd_backward, setup_context=_bwd_setup)
torch.library.register_autograd("validated_loss::cross_entropy_prob_fwd", _prob_fwd_backward,
                                setup_context=_prob_fwd_setup)
torch.library.register_autograd("validated_loss::cross_entropy_prob_bwd", _prob_bwd_backward,
                                setup_context=_prob_bwd_setup)


def cpp_forward_autograd():
    """Whether cross_entropy_fwd gets csrc/autograd.cpp's autograd: with the torch _C was built against
    (or the emulated-CUDA build, built here). torch::autograd::Function instantiates torch internals
    that change between minor releases; with another torch (the mismatch __init__ warns about) they
    may not exist, so the Python autograd above is used. VALIDATED_LOSS_PYTHON_AUTOGRAD=1 forces it
    (tests)."""
    if os.environ.get("VALIDATED_LOSS_PYTHON_AUTOGRAD") == "1":
        return False
    return (_library.EMULATED_CUDA or BUILT_AGAINST is None
            or _torch_support.same_minor(BUILT_AGAINST, torch.__version__))


CPP_FORWARD_AUTOGRAD = cpp_forward_autograd()
if CPP_FORWARD_AUTOGRAD:
    _library.register_cpp_autograd()
else:
    torch.library.register_autograd("validated_loss::cross_entropy_fwd", _fwd_backward, setup_context=_fwd_setup)
