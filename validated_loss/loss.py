"""CrossEntropyLoss: torch's module, with its forward computed by validated_loss.

It subclasses torch.nn.CrossEntropyLoss, so the constructor, the `weight` buffer, state_dict keys,
repr, `.to()` and `isinstance(m, torch.nn.CrossEntropyLoss)` are torch's own.
"""

import torch

from .functional import cross_entropy


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Drop-in for torch.nn.CrossEntropyLoss. Extra keyword-only arguments: `validate`
    ("sync", "deferred", "off") and `check_finite` (see validated_loss.cross_entropy)."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0, *, validate="sync", check_finite=False):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.validate = validate
        self.check_finite = check_finite

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             validate=self.validate, check_finite=self.check_finite)
