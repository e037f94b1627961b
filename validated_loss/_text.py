"""Text helpers shared by checks, hints and the tools: torch's names for dtypes and shapes, the
lines describing tensors, and the shapes a class-index target may take. Pure: reads metadata only."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

# torch's C++ names for dtypes, as they appear in its messages.
_CPP_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
    torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
    torch.uint16: "UInt16", torch.uint32: "UInt32", torch.uint64: "UInt64",
}

# The dtypes log_softmax has kernels for.
LOGIT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    # float8 names are the Python name capitalised: float8_e5m2 -> Float8_e5m2.
    name = _CPP_DTYPE_NAMES.get(dtype)
    if name is None:
        short = str(dtype).replace("torch.", "")
        name = short[:1].upper() + short[1:]
    return name


def shape_text(shape: Sequence) -> str:
    """Python tuple style: (2, 7, 5), (14,), ()."""
    return str(tuple(int(s) for s in shape))


def torch_list(shape: Sequence) -> str:
    """torch's C++ style, used inside its messages: [2, 7, 5]."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def describe(name: str, t: torch.Tensor, device: bool = False) -> str:
    text = f"  {name + ':':<8}shape {shape_text(t.shape)}, dtype {t.dtype}"
    return text + (f", device {t.device}" if device else "")


def compose(torch_text: str, lines: Sequence[str], cause: Optional[str] = None,
             fix: Optional[str] = None) -> str:
    parts = [torch_text, *lines]
    if cause:
        parts.append(f"Likely cause: {cause}")
    if fix:
        parts.append(f"Fix: {fix}")
    return "\n".join(parts)


def describe_both(input, target) -> List[str]:
    return [describe("input", input), describe("target", target)]


def class_dim(input) -> int:
    return 0 if input.dim() == 1 else 1


def class_count(input):
    # No int(): under torch.compile a symbolic size would be specialised to one value.
    return input.shape[class_dim(input)]


def index_shapes(input) -> List[Tuple[int, ...]]:
    """The class-index target shapes torch accepts for this input (none for 0-dim)."""
    if input.dim() == 0:
        return []
    if input.dim() == 1:
        return [(), (1,)]
    return [(int(input.shape[0]),) + tuple(int(s) for s in input.shape[2:])]


def expected_line(input) -> str:
    wanted = " or ".join(shape_text(s) for s in index_shapes(input))
    return (f"  expected: class indices (int64) of shape {wanted}, or class "
            f"probabilities (floating) of shape {shape_text(input.shape)}")


def is_low_precision_float(dtype: torch.dtype) -> bool:
    # float8 / float4 types: floating, one byte, and not promotable.
    return dtype.is_floating_point and dtype.itemsize == 1


def index_dtype_ok(input, target) -> bool:
    """Would the class-index path accept this target dtype?"""
    if target.dtype == torch.int64:
        return True
    return target.dtype == torch.uint8 and input.dim() <= 2


def dtype_note(input, target) -> Optional[str]:
    if index_dtype_ok(input, target):
        return None
    return (f"  also: class indices must be int64, the target is {target.dtype}; "
            f"add .long()")


def numel_of(shape) -> int:
    return math.prod(int(s) for s in shape)


def without_dim(shape, dim):
    return tuple(int(s) for i, s in enumerate(shape) if i != dim)


def unravel(position: int, shape: Sequence[int]) -> Tuple[int, ...]:
    """Row-major multi-index of a flat position (a size-0 dim counts as 1, as in C++)."""
    index = []
    for size in reversed([max(int(s), 1) for s in shape]):
        index.append(position % size)
        position //= size
    return tuple(reversed(index))


def target_batch_size(target):
    # torch reads sizes()[0] even of a 0-dim target and, in practice, gets 0.
    return target.shape[0] if target.dim() > 0 else 0
