"""The class-index loss with z-loss, softcap and lse written with torch ops only.

What the kernels compute (csrc/xent_row.h), as a differentiable torch graph: the path for devices
without our kernels, the second-order gradients of our ops, linear_cross_entropy's create_graph
backward, and the tests' reference. Also the probability-target loss (the class-weight gradient and
second order of that path), and the kernels' status record for the targets (target_status), which
the tools and devices without our kernels use to find out-of-range targets.
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
