"""The loss modules: torch's, with their forward computed by validated_loss.

Each subclasses torch's module, so the constructor, the `weight` buffer (and the linear layer of
LinearCrossEntropyLoss), state_dict keys, repr, `.to()` and isinstance checks are torch's own.
On a torch without nn.LinearCrossEntropyLoss (before 2.13), LinearCrossEntropyLoss subclasses our
copy of its constructor and layout instead (_linear_module.py).
"""

import torch

from ._linear_module import LinearCrossEntropyLossBase
from .functional import cross_entropy
from .linear import linear_cross_entropy


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for torch.nn.CrossEntropyLoss. Extra keyword-only arguments: `validate`
    ("sync", "deferred", "off"), `check_finite`, the LLM options `lse_square_scale`, `softcap`,
    `return_lse`, and `inplace_backward` (see validated_loss.cross_entropy)."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0, *, validate="sync", check_finite=False, lse_square_scale=0.0, softcap=None,
                 return_lse=False, inplace_backward=False):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.validate = validate
        self.check_finite = check_finite
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.return_lse = return_lse
        self.inplace_backward = inplace_backward

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             validate=self.validate, check_finite=self.check_finite,
                             lse_square_scale=self.lse_square_scale, softcap=self.softcap,
                             return_lse=self.return_lse, inplace_backward=self.inplace_backward)


class LinearCrossEntropyLoss(LinearCrossEntropyLossBase):
    """Drop-in for torch.nn.LinearCrossEntropyLoss, computed in chunks by
    validated_loss.linear_cross_entropy. Extra keyword-only arguments: `lse_square_scale`,
    `softcap`, `return_lse`, `chunk_size`, `validate` (see there)."""

    def __init__(self, in_features, num_classes, *, out_features=(), bias=False, device=None, dtype=None,
                 reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0, options=None,
                 lse_square_scale=0.0, softcap=None, return_lse=False, chunk_size=None, validate="sync"):
        super().__init__(in_features, num_classes, out_features=out_features, bias=bias, device=device, dtype=dtype,
                         reduction=reduction, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, options=options)
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.return_lse = return_lse
        self.chunk_size = chunk_size
        self.validate = validate

    def forward(self, input, target):
        # torch keeps the weight 2-D in its Linear and reshapes it here (K-dimensional losses).
        linear_weight = self.linear.weight.reshape((self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = None
        if self.linear.bias is not None:
            linear_bias = self.linear.bias.reshape((self.num_classes, *self.out_features))
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                    reduction=self.reduction, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, options=self.options,
                                    lse_square_scale=self.lse_square_scale, softcap=self.softcap,
                                    return_lse=self.return_lse, chunk_size=self.chunk_size, validate=self.validate)
