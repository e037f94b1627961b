"""The class-index loss with z-loss, softcap and lse written with torch ops only.

What the kernels compute (csrc/xent_row.h), as a differentiable torch graph: the path for devices
without our kernels, the second-order gradients of our ops, linear_cross_entropy's create_graph
backward, and the tests' reference. Also the probability-target loss (the class-weight gradient and
second order of that path), and the kernels' status record for the targets (target_status), which
the tools and devices without our kernels use to find out-of-range targets. And the same loss and
gradient from a row's statistics (its max, log-sum and target logit) instead of the whole row:
vocab_parallel_cross_entropy, whose rows are split across ranks, meets only those.
"""

import torch
import torch.nn.functional as F

from ._status import STATUS_INVALID_COUNT, STATUS_INVALID_POSITION, STATUS_INVALID_VALUE, STATUS_SIZE

# torch's function, captured once, at import: validated_loss.patch() replaces the attribute on
# torch.nn.functional with ours, and every path that wants torch's composite calls this one.
torch_cross_entropy = F.cross_entropy


def capped_logits(logits, softcap):
    """cap * tanh(x / cap): the logits the softmax sees (the input itself without a cap)."""
    return logits if not softcap else softcap * torch.tanh(logits / softcap)


def cross_entropy(logits, target, weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0,
                  lse_square_scale=0.0, softcap=None):
    """Returns (loss, lse).

    lse: log-sum-exp of each row's (capped) logits in the target's shape, 0 for ignored rows (the
    kernels never read those rows). z-loss: lse_square_scale * lse^2 per non-ignored row,
    unweighted, added to the cross-entropy before the reduction ('mean' divides the sum by the
    same total weight, sum of weight[target] over non-ignored rows).
    """
    x = capped_logits(logits, softcap)
    class_dim = 0 if x.dim() == 1 else 1
    kept = target != ignore_index
    lse = torch.where(kept, torch.logsumexp(x, class_dim), 0.0)
    if not lse_square_scale:
        loss = torch_cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction,
                                    label_smoothing=label_smoothing)
        return loss, lse
    z = lse_square_scale * lse * lse
    if reduction == "none":
        loss = torch_cross_entropy(x, target, weight, ignore_index=ignore_index, reduction="none",
                                    label_smoothing=label_smoothing)
        return loss + z.to(loss.dtype), lse
    loss = torch_cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=label_smoothing)
    z_sum = z.sum()
    if reduction == "mean":
        if weight is None:
            total_weight = kept.sum()
        else:
            total_weight = torch.where(kept, weight.to(z.dtype)[torch.where(kept, target, 0)], 0).sum()
        z_sum = z_sum / total_weight
    return loss + z_sum.to(loss.dtype), lse


def row_loss_from_stats(log_sum, target_minus_max, smooth_sum, w_target, counted, label_smoothing, sum_weight,
                        num_classes):
    """Each row's loss from its statistics against a reference m (the row max): log_sum =
    log sum_c exp(x_c - m), target_minus_max = x_y - m, smooth_sum = sum_c w_c (x_c - m) (read with
    label smoothing only), w_target = weight[y] (1 without weights), sum_weight = sum_c w_c
    (num_classes without weights). xent_row.h's index_row_loss with lse = m + log_sum; ignored
    rows (counted False) 0."""
    loss = w_target * (log_sum - target_minus_max)
    if label_smoothing > 0:
        smooth = sum_weight * log_sum - smooth_sum
        loss = (1 - label_smoothing) * loss + (label_smoothing / num_classes) * torch.where(counted, smooth, 0.0)
    return torch.where(counted, loss, 0.0)


def reduce_rows(loss, total_weight, reduction):
    """The reduction of per-row losses: 'none' as is, 'sum', 'mean' over the total weight (0 / 0 is
    NaN, as torch's)."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return torch.where(total_weight != 0, loss.sum() / total_weight, float("nan"))


def gradient_from_stats(x, row_max, log_sum, scale, w_target, label_smoothing, sum_weight, num_classes,
                        class_weight=None, target_index=None, has_target=None):
    """d loss / d x of rows whose (max, log_sum) are known (xent_row.h's grad_element):
    scale_r * (S_r softmax_c - a_c), in one float buffer of x's shape (N, C, d1..dk) in row_max's
    dtype. softmax from (row_max, log_sum), which may cover more classes than x holds (a rank's
    shard). scale: per row (R,), 0 for ignored rows. class_weight: this x's classes' weights (or
    None). target_index: each row's target as an index into x's classes where has_target, else
    ignored (another rank holds it). The smoothing share eps / num_classes * w_c of every class
    and the target's share (1 - eps) * w_y come off the softmax term."""
    rows = (x.shape[0], 1) + tuple(x.shape[2:])
    classes = (1, -1) + (1,) * (x.dim() - 2)
    target_mass = (1 - label_smoothing) * w_target if label_smoothing > 0 else w_target
    mass = target_mass + (label_smoothing / num_classes) * sum_weight if label_smoothing > 0 else target_mass
    grad = x - row_max.view(rows)  # promoted to acc: bf16/fp16 logits get a float32 buffer
    if grad.dtype != row_max.dtype:
        grad = grad.to(row_max.dtype)
    grad.sub_(log_sum.view(rows)).exp_().mul_((scale * mass).view(rows))
    if label_smoothing > 0:
        share = (scale * (label_smoothing / num_classes)).view(rows)
        if class_weight is not None:
            grad.addcmul_(share, class_weight.view(classes), value=-1.0)
        else:
            grad.sub_(share)
    if target_index is not None and x.shape[1] > 0 and target_index.numel() > 0:
        grad.scatter_add_(1, torch.where(has_target, target_index, 0).view(rows),
                          torch.where(has_target, -scale * target_mass, 0.0).view(rows))
    return grad


def probability_cross_entropy(logits, target, weight=None, reduction="mean", label_smoothing=0.0):
    """torch's cross_entropy with class-probability targets, in the same ops as ATen's own
    (cross_entropy_loss_prob_target). Not F.cross_entropy itself: before torch 2.13 that calls
    numel() on its symbolic-shaped input, so it fails inside torch.compile(dynamic=True), and our
    weight gradient and second order would fail with it."""
    class_dim = 0 if logits.dim() == 1 else 1
    classes = logits.shape[class_dim]
    log_probs = torch.log_softmax(logits, class_dim)
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / classes
    terms = log_probs * target
    if weight is not None:
        shape = [1] * logits.dim()
        shape[class_dim] = classes
        terms = terms * weight.view(shape)
    if reduction == "none":
        return -terms.sum(class_dim)
    total = -terms.sum()
    if reduction == "sum":
        return total
    rows = logits.numel() // classes if classes else 0
    return total / rows  # 0 / 0 = NaN for an empty batch, as torch


def target_status(target, num_classes, ignore_index) -> torch.Tensor:
    """The kernel's status record for the targets alone, computed on target's device.

    int64[6] = (flat position of the first invalid target, its value, invalid
    count, -1, -1, -1): the non-finite-logit fields stay empty. No host sync:
    only the caller's ``.cpu()`` waits for it.
    """
    # Stacked from 0-dim fields, not written into by index: torch.func.vmap refuses in-place
    # writes of batched values into an unbatched tensor.
    none = torch.full((), -1, dtype=torch.int64, device=target.device)
    fields = [none] * STATUS_SIZE
    flat = target.reshape(-1).long()
    if flat.numel() == 0:
        fields[STATUS_INVALID_COUNT] = torch.zeros_like(none)
        return torch.stack(fields)
    invalid = ((flat < 0) | (flat >= int(num_classes))) & (flat != ignore_index)
    count = invalid.sum()
    first = invalid.to(torch.uint8).argmax()  # argmax returns the first maximum
    found = count > 0
    fields[STATUS_INVALID_POSITION] = torch.where(found, first, -1)
    fields[STATUS_INVALID_VALUE] = torch.where(found, flat[first], -1)
    fields[STATUS_INVALID_COUNT] = count
    return torch.stack(fields)
