"""vocab_parallel_cross_entropy's autograd: the loss of logits whose class dimension is split across
ranks (one all_reduce MAX of the row max, one SUM of 2-3 floats per row) and its local backward.
distributed.py checks the arguments on every rank first."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .. import _ops, _reference
from .._ops import Reduction

_REDUCTION_NAMES = {Reduction.NONE: "none", Reduction.MEAN: "mean", Reduction.SUM: "sum"}


def _local_lse(x, acc):
    """(max, log sum exp(x - max)) of each row over this rank's classes, float `acc`, shape (R,).
    x: (N, C_r, d1..dk) with C_r >= 1."""
    if _ops.has_kernel(x.device.type):
        lse = _ops.row_lse(x)  # the fused kernel's own row pass
        return lse[:, 0], lse[:, 1]
    flat = x.movedim(1, -1).reshape(-1, x.shape[1]).to(acc)
    row_max = flat.amax(1)
    return row_max, (flat - row_max[:, None]).exp_().sum(1).log_()


def _rows_view(v, x):
    """A per-row vector (R,) viewed to broadcast against x (N, C, d1..dk) along the class dim."""
    return v.view((x.shape[0], 1) + tuple(x.shape[2:]))


def _class_view(w, x):
    """A per-class vector (C,) viewed to broadcast against x (N, C, d1..dk)."""
    return w.view((1, -1) + (1,) * (x.dim() - 2))


class VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, offset, num_classes, reduction, ignore_index, eps, group, world,
                acc_loss=False):
        acc = _ops.accumulate_dtype(logits.dtype)
        x = logits.unsqueeze(0) if logits.dim() == 1 else logits  # (N, C_r, d1..dk)
        y = target.reshape(1) if logits.dim() == 1 else target     # (N, d1..dk)
        rows_shape = tuple(y.shape)
        y = y.reshape(-1).long()
        classes = x.shape[1]
        n_rows = y.numel()

        counted = y != ignore_index
        here = counted & (y >= offset) & (y < offset + classes)
        local_index = torch.where(here, y - offset, 0)

        # Row max over all ranks.
        if classes > 0 and n_rows > 0:
            local_max, local_log_sum = _local_lse(x, acc)
        else:
            local_max = torch.full((n_rows,), float("-inf"), dtype=acc, device=x.device)
            local_log_sum = torch.zeros((n_rows,), dtype=acc, device=x.device)
        row_max = local_max.clone()
        if world > 1 and n_rows > 0:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)

        # This rank's share of each row's sums, against the global max; one SUM all-reduce.
        sums = [torch.where(local_max == float("-inf"), 0.0, torch.exp(local_log_sum + (local_max - row_max)))]
        if classes > 0 and n_rows > 0:
            x_target = x.gather(1, _rows_view(local_index, x)).reshape(-1).to(acc)
            sums.append(torch.where(here, x_target - row_max, 0.0))
        else:
            sums.append(torch.zeros_like(row_max))
        if eps > 0:
            if classes > 0 and n_rows > 0:
                shifted = x - _rows_view(row_max, x)  # promoted to acc
                if weight is not None:
                    shifted.mul_(_class_view(weight[offset:offset + classes].to(acc), x))
                sums.append(shifted.sum(1).reshape(-1))
                del shifted
            else:
                sums.append(torch.zeros_like(row_max))
        stats = torch.stack(sums, 1)
        if world > 1 and n_rows > 0:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        log_sum = stats[:, 0].log()
        target_minus_max = stats[:, 1]

        # Per-row loss, as xent_row.h's index_row_loss with lse = max + log_sum.
        safe_y = torch.where(counted, y, 0)
        w_target = weight.to(acc)[safe_y] if weight is not None else torch.ones_like(row_max)
        w_target = torch.where(counted, w_target, 0.0)
        sum_weight = weight.to(acc).sum() if weight is not None else float(num_classes)
        loss = _reference.row_loss_from_stats(log_sum, target_minus_max, stats[:, 2] if eps > 0 else None, w_target,
                                              counted, eps, sum_weight, num_classes)
        total_weight = w_target.sum()
        out = _reference.reduce_rows(loss, total_weight, _REDUCTION_NAMES[Reduction(reduction)])
        if reduction == Reduction.NONE:
            out = out.reshape(() if logits.dim() == 1 else rows_shape)

        ctx.save_for_backward(logits, y, weight, row_max, log_sum, w_target, total_weight)
        ctx.args = (offset, num_classes, reduction, ignore_index, eps)
        return out if acc_loss else out.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, y, weight, row_max, log_sum, w_target, total_weight = ctx.saved_tensors
        offset, num_classes, reduction, ignore_index, eps = ctx.args
        if not ctx.needs_input_grad[0]:
            return (None,) * 11
        acc = row_max.dtype
        x = logits.unsqueeze(0) if logits.dim() == 1 else logits
        classes = x.shape[1]
        counted = y != ignore_index

        g = grad_output.to(acc)
        if reduction == Reduction.NONE:
            scale = g.reshape(-1)
        elif reduction == Reduction.SUM:
            scale = g.expand(y.shape)
        else:
            scale = torch.where(total_weight != 0, g / total_weight, float("nan")).expand(y.shape)
        scale = torch.where(counted, scale, 0.0)
        sum_weight = weight.to(acc).sum() if weight is not None else float(num_classes)
        class_weight = weight[offset:offset + classes].to(acc) if weight is not None and eps > 0 else None
        here = counted & (y >= offset) & (y < offset + classes)
        grad = _reference.gradient_from_stats(x, row_max, log_sum, scale, w_target, eps, sum_weight, num_classes,
                                              class_weight, y - offset, here)
        grad.masked_fill_(~_rows_view(counted, x), 0.0)  # ignored rows: exactly zero, as torch
        grad = grad.to(logits.dtype)
        if logits.dim() == 1:
            grad = grad.squeeze(0)
        return (grad,) + (None,) * 10
