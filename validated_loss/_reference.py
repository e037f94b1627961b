"""The class-index loss with z-loss, softcap and lse written with torch ops only.

What the kernels compute (csrc/xent_row.h), as a differentiable torch graph: the path for devices
without our kernels, the second-order gradients of our ops, and the tests' reference. Also the
probability-target loss, for the class-weight gradient and second order of that path.
"""

import torch
import torch.nn.functional as F

REDUCTIONS = ("none", "mean", "sum")

# torch's function, captured before patching can replace torch.nn.functional.cross_entropy.
_torch_cross_entropy = F.cross_entropy


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
        loss = _torch_cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction,
                                    label_smoothing=label_smoothing)
        return loss, lse
    z = lse_square_scale * lse * lse
    if reduction == "none":
        loss = _torch_cross_entropy(x, target, weight, ignore_index=ignore_index, reduction="none",
                                    label_smoothing=label_smoothing)
        return loss + z.to(loss.dtype), lse
    loss = _torch_cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction,
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
