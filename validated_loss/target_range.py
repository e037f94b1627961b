"""find_out_of_range: the error an out-of-range class index gets, found with torch ops on any
device (check_batch, check_loader, the distributed loss, devices without our kernels) and worded by
the extension's raise_for_status, the one place that message is written."""

from typing import Optional

import torch

from . import _ops
from ._reference import target_status
from ._status import STATUS_INVALID_COUNT
from ._text import class_count
from .errors import TargetOutOfRangeError


def find_out_of_range(input, target, ignore_index) -> Optional[TargetOutOfRangeError]:
    """The TargetOutOfRangeError an out-of-range target in `target` (for logits shaped like
    `input`) gets, or None. Reads the target's values: one host sync."""
    classes = class_count(input)
    # Under torch.func transforms (vmap of grad: per-sample gradients) the target may be a batched
    # wrapper, whose values vmap does not let Python read: the check runs on the plain tensor
    # underneath (every sample's targets; positions are that tensor's).
    target = unwrapped(target)
    status = target_status(target, classes, ignore_index).cpu()
    if int(status[STATUS_INVALID_COUNT]) <= 0:
        return None
    try:
        _ops.raise_for_status(status, target.shape, classes, ignore_index, input.shape)
    except TargetOutOfRangeError as error:
        return error
    return None


def unwrapped(tensor):
    """The plain tensor under any torch.func wrappers (batched, grad-tracking)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor
