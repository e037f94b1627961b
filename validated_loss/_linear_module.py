"""torch.nn.LinearCrossEntropyLoss and torch.nn.LinearCrossEntropyOptions where torch has them
(2.13 on), else our own with torch 2.13's constructor, attributes, state_dict layout and repr, so
that validated_loss.LinearCrossEntropyLoss is the same module on every supported torch and a
checkpoint saved on one torch loads on another.
"""

import dataclasses
import math

import torch
from torch.nn.modules.loss import _WeightedLoss


@dataclasses.dataclass(slots=True, frozen=True)
class LinearCrossEntropyOptions:
    """torch 2.13's LinearCrossEntropyOptions fields and checks. validated_loss.linear_cross_entropy
    reads `batch_chunk_size` (rows per chunk) and `allow_retain_graph` (a second backward of a
    'mean'/'sum' loss); the other fields tune torch's own chunked path and are accepted for
    compatibility."""

    allow_retain_graph: bool = False
    batch_chunk_size: int | None = None
    chunking_method: str | None = "auto"
    acc_policy: str = "auto"
    acc_dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.acc_policy not in {"auto", "accurate", "balanced", "compact"}:
            raise ValueError(f"invalid acc_policy: {self.acc_policy!r}")
        if self.chunking_method is not None and self.chunking_method != "auto":
            name, sep, factor = self.chunking_method.partition(":")
            if not (name == "aspect_ratio" and (not sep or (factor.isdigit() and int(factor) > 0))):
                raise ValueError(f"invalid chunking_method: {self.chunking_method!r}")
        if not (self.batch_chunk_size is None
                or (isinstance(self.batch_chunk_size, int) and self.batch_chunk_size > 0)):
            raise ValueError(f"batch_chunk_size must be positive int or None, got {self.batch_chunk_size!r}")
        if self.acc_dtype is not None and self.acc_dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                                                 torch.float64):
            raise ValueError(
                "acc_dtype must be one of {None, torch.float16, torch.bfloat16, torch.float32, torch.float64}, "
                f"got {self.acc_dtype!r}. Pass acc_dtype=None to let the op pick automatically.")


class LinearCrossEntropyLoss(_WeightedLoss):
    """torch 2.13's LinearCrossEntropyLoss without its forward: the `weight` buffer, a `linear`
    Linear(in_features, num_classes * prod(out_features)) holding the 2-D weight and flat bias
    (state_dict keys `weight`, `linear.weight`, `linear.bias`), the same attributes and repr."""

    __constants__ = ["num_classes", "out_features", "reduction", "ignore_index", "label_smoothing"]

    def __init__(self, in_features, num_classes, *, out_features=(), bias=False, device=None, dtype=None,
                 reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0, options=None):
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = out_features
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = torch.nn.Linear(in_features, math.prod(out_features, start=num_classes), bias=bias,
                                      device=device, dtype=dtype)
        self.options = options

    def extra_repr(self):
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes},"
                f" out_features={self.out_features}, bias={self.linear.bias is not None},"
                f" reduction={self.reduction}, ignore_index={self.ignore_index},"
                f" label_smoothing={self.label_smoothing}, options={self.options}")


# The classes above keep torch's names (their reprs print them); which ones are used is decided
# here. Subclassing torch's module where it exists keeps isinstance(m, torch.nn.LinearCrossEntropyLoss).
OwnLinearCrossEntropyLoss, OwnLinearCrossEntropyOptions = LinearCrossEntropyLoss, LinearCrossEntropyOptions
LinearCrossEntropyLossBase = getattr(torch.nn, "LinearCrossEntropyLoss", OwnLinearCrossEntropyLoss)
LinearCrossEntropyOptions = getattr(torch.nn, "LinearCrossEntropyOptions", OwnLinearCrossEntropyOptions)
del LinearCrossEntropyLoss
