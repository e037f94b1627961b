"""torch's autocast policy for cross_entropy, stated once: under autocast it runs with float32 results
from float16 and bfloat16 operands (its fp32 policy). The weight dtype check, the probability path's
promotion and the fallbacks' casts all ask here."""

import torch

from . import _compiler


def autocast_enabled(t: torch.Tensor) -> bool:
    """Whether torch's autocast is on for t's device (then cross_entropy runs under its fp32
    policy)."""
    device = t.device.type
    return _autocast_available(device) and torch.is_autocast_enabled(device)


@_compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    # Fixed for a process. Marked constant because torch.compile in torch 2.6 and 2.11 cannot trace
    # torch._C._is_autocast_available (a graph break, an error under fullgraph).
    return torch.amp.is_autocast_available(device_type)


def autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype torch computes cross_entropy with for t: under autocast's fp32 policy half and
    bfloat16 count as float32 (float64 stays); outside autocast, t's own."""
    if t.dtype in (torch.float16, torch.bfloat16) and autocast_enabled(t):
        return torch.float32
    return t.dtype
