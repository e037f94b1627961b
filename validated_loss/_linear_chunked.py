"""The chunked linear + cross-entropy: the (N, C) logits are never materialised.

Rows are taken in chunks. A chunk's logits come from one matrix product into a reused buffer; the
fused op (cross_entropy_fwd_grad) computes the chunk's loss and, in the same pass over each row,
writes d loss / d logits over that buffer; two more products turn it into the chunk's rows of
grad_input and its share of grad_weight (grad_bias: a column sum). So the extra memory is one
chunk buffer plus the gradients themselves.

'mean'/'sum': the gradients are computed during the forward for grad_output = 1 with 'sum'
scaling; backward only rescales them, in place, by grad_output (divided by the total weight for
'mean'), which is what torch's own chunked path does. They are handed to autograd without a copy;
a second backward through a retained graph recomputes them (one more forward's work, paid only
then), and allow_retain_graph keeps them instead (backward multiplies out of place).
'none', and a gradient reaching the returned lse: backward recomputes each chunk's logits and
runs the fused op with the per-row grad_output (and lse gradient): one more product per chunk,
nothing (N, C)-sized kept between forward and backward.
Higher order (create_graph=True, gradcheck/gradgradcheck): the backward runs with grad mode on
and builds its gradient from torch ops on the whole logits (_reference), differentiable like
torch's default path; the first-order path never pays for it.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import _deferred, _ops, _reference
from ._llm_options import LlmOptions
from ._ops import LossOptions, Reduction, Validate

_SUM, _NONE = int(Reduction.SUM), int(Reduction.NONE)  # as the ops take them

# Bytes of chunk logits aimed at when the caller gives no chunk size: large enough for
# efficient matrix products (hundreds of rows at LLM vocabularies), small next to grad_weight.
CHUNK_BYTES = 64 * 2**20


def auto_chunk_rows(num_rows: int, num_classes: int, element_size: int) -> int:
    rows = CHUNK_BYTES // max(1, num_classes * element_size)
    if rows >= 64:
        rows -= rows % 64  # whole 64-row panels for the matrix products
    return max(1, min(num_rows, rows))


@dataclass(frozen=True)
class Plan:
    reduction: int          # 0 none, 1 mean, 2 sum
    ignore_index: int
    label_smoothing: float
    llm: LlmOptions
    chunk_rows: int
    allow_retain_graph: bool


def _chunks(num_rows, chunk_rows):
    for start in range(0, num_rows, chunk_rows):
        yield start, min(num_rows, start + chunk_rows)


def _chunk_logits(buffer, x, linear_weight, linear_bias):
    """x @ W.T (+ b) into the leading rows of the reused buffer."""
    out = buffer[: x.shape[0]]
    if linear_bias is None:
        torch.mm(x, linear_weight.t(), out=out)
    else:
        torch.addmm(linear_bias, x, linear_weight.t(), out=out)
    return out


class _Gradients:
    """grad_input / grad_weight / grad_bias being accumulated chunk by chunk (None when not wanted)."""

    def __init__(self, input, linear_weight, linear_bias, wanted):
        self.input = torch.empty_like(input) if wanted[0] else None
        self.weight = torch.zeros_like(linear_weight) if wanted[1] else None
        # The bias gradient is a sum over all rows: kept in float32 (float64) until the end.
        acc = _ops.accumulate_dtype(input.dtype)
        self.bias = torch.zeros(linear_weight.shape[0], dtype=acc, device=input.device) if wanted[2] else None

    @property
    def any(self):
        return self.input is not None or self.weight is not None or self.bias is not None

    def add_chunk(self, start, end, dlogits, x, linear_weight):
        """dlogits: d loss / d logits of rows start..end (in the chunk buffer)."""
        if self.input is not None:
            torch.mm(dlogits, linear_weight, out=self.input[start:end])
        if self.weight is not None:
            self.weight.addmm_(dlogits.t(), x)
        if self.bias is not None:
            self.bias.add_(dlogits.sum(0, dtype=self.bias.dtype))

    def results(self, linear_bias):
        bias = None if self.bias is None else self.bias.to(linear_bias.dtype)
        return self.input, self.weight, bias


def _fwd_chunk(logits, target, weight, plan, reduction, grad_loss=None, grad_lse=None, with_grad=True):
    """The fused op (gradient written over `logits`) or, without gradients, the forward op."""
    # The targets were checked once, over the whole target, before the first chunk: no validation here.
    o = LossOptions(reduction, plan.ignore_index, plan.label_smoothing, plan.llm.lse_square_scale,
                    plan.llm.softcap_code, False, int(Validate.OFF))
    if with_grad:
        return _ops.forward_grad(logits, target, weight, o, grad_loss, grad_lse)
    return _ops.forward(logits, target, weight, o)


def _forward(input, linear_weight, linear_bias, target, weight, plan, grads: Optional[_Gradients]):
    """One pass over the chunks: (loss sum or per-row losses, total weight, lse per row or None)."""
    num_rows, num_classes = input.shape[0], linear_weight.shape[0]
    acc = _ops.accumulate_dtype(input.dtype)
    buffer = input.new_empty((min(plan.chunk_rows, num_rows), num_classes))
    rows_loss = input.new_empty((num_rows,)) if plan.reduction == _NONE else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=input.device)
    total_weight = torch.zeros((), dtype=torch.float64, device=input.device)
    lse = torch.empty(num_rows, dtype=acc, device=input.device) if plan.llm.return_lse else None
    with_grad = grads is not None and grads.any
    # The fused op sums in the accumulate dtype; the forward op's 'sum' would come back in the
    # logits' dtype (bfloat16 per chunk), so without gradients the rows' losses are summed here.
    reduction = _SUM if with_grad else _NONE
    for start, end in _chunks(num_rows, plan.chunk_rows):
        x = input[start:end]
        logits = _chunk_logits(buffer, x, linear_weight, linear_bias)
        loss, stats, chunk_weight, _ = _fwd_chunk(logits, target[start:end], weight, plan, reduction,
                                                  with_grad=with_grad)
        if with_grad:
            grads.add_chunk(start, end, logits, x, linear_weight)
        if rows_loss is not None:
            rows_loss[start:end] = loss
        else:
            loss_sum += loss if with_grad else loss.sum(dtype=torch.float64)
        total_weight += chunk_weight
        if lse is not None:
            torch.add(stats[:, 0], stats[:, 1], out=lse[start:end])
    return (rows_loss if rows_loss is not None else loss_sum), total_weight, lse


def _recompute(input, linear_weight, linear_bias, target, weight, plan, wanted, grad_rows, grad_lse):
    """Backward by recomputation: the gradients of sum_r grad_rows[r] * loss_r + grad_lse[r] * lse_r."""
    grads = _Gradients(input, linear_weight, linear_bias, wanted)
    buffer = input.new_empty((min(plan.chunk_rows, input.shape[0]), linear_weight.shape[0]))
    for start, end in _chunks(input.shape[0], plan.chunk_rows):
        x = input[start:end]
        logits = _chunk_logits(buffer, x, linear_weight, linear_bias)
        g_lse = None if grad_lse is None else grad_lse[start:end]
        _fwd_chunk(logits, target[start:end], weight, plan, _NONE, grad_rows[start:end], g_lse)
        grads.add_chunk(start, end, logits, x, linear_weight)
    return grads


def _mean(loss_sum, total_weight):
    """torch's weighted mean: NaN when the total weight is 0 (0/0 in its first term)."""
    return torch.where(total_weight == 0, torch.nan, loss_sum / total_weight)


def _loss(input, linear_weight, linear_bias, target, weight, plan, grads):
    """(loss in the input's dtype, total weight, lse or None), gradients into `grads` if given."""
    loss, total_weight, lse = _forward(input, linear_weight, linear_bias, target, weight, plan, grads)
    if plan.reduction == 1:
        loss = _mean(loss, total_weight)
    return loss.to(input.dtype), total_weight, lse


def apply(input, linear_weight, linear_bias, target, weight, plan):
    """(loss, lse or None). Without autograd (no_grad, or nothing requires grad) only the loss is
    computed: inside a Function, needs_input_grad would still ask for the gradients."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias)):
        loss, lse = ChunkedLinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight, plan)
        return loss, (lse if plan.llm.return_lse else None)
    loss, _, lse = _loss(input, linear_weight, linear_bias, target, weight, plan, None)
    return loss, lse


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(input (N, H), linear_weight (C, H), linear_bias (C,) or None, target (N,), weight, plan)
    -> (loss, lse); lse is empty unless plan.llm.return_lse."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, weight, plan):
        wanted = ctx.needs_input_grad[:3]
        precompute = plan.reduction != _NONE and any(wanted)
        grads = _Gradients(input, linear_weight, linear_bias, wanted) if precompute else None
        loss, total_weight, lse = _loss(input, linear_weight, linear_bias, target, weight, plan, grads)
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.total_weight = total_weight
        ctx.stash = grads.results(linear_bias) if precompute else None
        # Inputs, for recomputation ('none', or a gradient reaching lse): references, not copies.
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight)
        if lse is None:
            lse = input.new_empty((0,), dtype=_ops.accumulate_dtype(input.dtype))
            ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        _deferred.check_pending()  # validate="deferred": a bad target surfaces at backward at the latest
        plan = ctx.plan
        input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
            return _differentiable_backward(ctx.saved_tensors, plan, wanted, grad_loss, grad_lse) + (None,) * 3
        result = [None, None, None]
        rows_grad = None  # per-row grad_output still to apply by recomputation
        if grad_loss is not None and plan.reduction != _NONE:
            result = _rescale(ctx, grad_loss)
        elif grad_loss is not None:
            rows_grad = grad_loss.reshape(-1)
        lse_grad = grad_lse if grad_lse is not None and grad_lse.numel() else None
        if rows_grad is not None or lse_grad is not None:
            if rows_grad is None:
                rows_grad = torch.zeros(input.shape[0], dtype=lse_grad.dtype, device=input.device)
            grads = _recompute(input, linear_weight, linear_bias, target, weight, plan, wanted, rows_grad, lse_grad)
            result = [e if r is None else (r if e is None else r.add_(e))
                      for r, e in zip(result, grads.results(linear_bias))]
        return result[0], result[1], result[2], None, None, None


def _mean_scale(grad_loss, total_weight, target, ignore_index):
    """grad_output / total weight, as torch's 'mean' backward scales. No counted target (every one
    ignored, or an empty batch): torch's gradients are zero (its NaN loss has no term to
    differentiate), while 1 / 0 times the forward's zero gradients would be NaN; one fully masked
    micro-batch must not poison an accumulated gradient. Tensors throughout: no sync on CUDA."""
    nothing_counted = (total_weight == 0) & ~(target != ignore_index).any()
    return torch.where(nothing_counted, 0.0, grad_loss / total_weight)


def _rescale(ctx, grad_loss):
    """The forward's gradients times grad_output (over the total weight for 'mean'). The scale
    stays a float64 0-dim tensor: multiplying by it keeps each gradient's dtype, computed in its
    opmath type, without rounding 1 / total_weight to bfloat16 first."""
    scale = grad_loss.double()
    if ctx.plan.reduction == 1:
        scale = _mean_scale(scale, ctx.total_weight, ctx.saved_tensors[3], ctx.plan.ignore_index)
    stash = ctx.stash
    if stash is None:
        # A second backward through a retained graph: the forward's gradients went to the first.
        # Recomputed as the forward computed them (same chunks, same order: the same bits).
        input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
        grads = _Gradients(input, linear_weight, linear_bias, ctx.needs_input_grad[:3])
        _forward(input, linear_weight, linear_bias, target, weight, ctx.plan, grads)
        return [None if g is None else g.mul_(scale) for g in grads.results(linear_bias)]
    if ctx.plan.allow_retain_graph:
        return [None if g is None else g * scale for g in stash]
    ctx.stash = None  # handed to autograd below: no second reference, so no copy is made
    return [None if g is None else g.mul_(scale) for g in stash]


def _differentiable_backward(saved, plan, wanted, grad_loss, grad_lse):
    """d (grad_loss . loss + grad_lse . lse) / d (input, linear_weight, linear_bias) as a graph of
    torch ops on the whole logits (what torch's default path differentiates): for create_graph."""
    input, linear_weight, linear_bias, target, weight = saved
    loss, lse = _reference.cross_entropy(F.linear(input, linear_weight, linear_bias), target, weight,
                                         Reduction(plan.reduction).label, plan.ignore_index,
                                         plan.label_smoothing, plan.llm.lse_square_scale, plan.llm.softcap)
    outputs, grads_out = [], []
    if grad_loss is not None:
        outputs.append(loss.reshape(grad_loss.shape))
        grads_out.append(grad_loss)
    if grad_lse is not None and grad_lse.numel():
        outputs.append(lse.reshape(grad_lse.shape).to(grad_lse.dtype))
        grads_out.append(grad_lse)
    leaves = [t for t, w in zip((input, linear_weight, linear_bias), wanted) if w]
    found = iter(torch.autograd.grad(outputs, leaves, grads_out, create_graph=True, allow_unused=True)
                 if outputs and leaves else [None] * len(leaves))
    return tuple(next(found) if w else None for w in wanted)
