"""check_batch: everything check_inputs checks, as a report instead of an exception, plus what
torch does not check (target values, all targets ignored, probability rows, softmax outputs passed
as logits). A debugging tool: it reads values and may synchronise with the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .checks import check_inputs
from .errors import ValidatedLossError
from .target_range import find_out_of_range
from ._text import class_dim, shape_text, unravel


@dataclass
class BatchReport:
    """What ``check_batch`` found. ``error`` is what cross_entropy would raise."""

    ok: bool
    mode: str
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    error: Optional[Exception] = None

    def __str__(self) -> str:
        mode = "class-probability targets" if self.mode == "probs" else "class-index targets"
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"cross_entropy batch check: {status}, {len(self.warnings)} warning(s) ({mode})"]
        for title, texts in (("problem", self.problems), ("warning", self.warnings)):
            for text in texts:
                lines.append(f"- {title}: " + text.replace("\n", "\n    "))
        return "\n".join(lines)


def check_batch(input, target, weight=None, ignore_index=-100, label_smoothing=0.0, *,
                check_values=True) -> BatchReport:
    """Run ``check_inputs`` without raising, plus checks torch does not make.

    With ``check_values=True`` the target (and logit) values are read too:
    out-of-range class indices, all targets ignored, probability rows that are
    not distributions, logits that look like softmax outputs. This may
    synchronise with the device; it is a debugging tool.
    """
    for position, (name, value) in enumerate((("input", input), ("target", target)), start=1):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"check_batch(): argument '{name}' (position {position}) must be a Tensor, not "
                            f"{type(value).__name__} (as for cross_entropy: the logits and the targets of one "
                            f"batch; convert with torch.as_tensor(...))")
    mode = "probs" if tuple(input.shape) == tuple(target.shape) else "index"
    report = BatchReport(ok=True, mode=mode)
    try:
        check_inputs(input, target, weight, ignore_index, label_smoothing)
    except ValidatedLossError as exc:
        _record(report, exc)
        return report
    report.warnings += _layout_warnings(input, target, mode)
    if check_values and not (input.is_meta or target.is_meta):
        if mode == "index":
            error = find_out_of_range(input, target, ignore_index)
            if error is not None:
                _record(report, error)
            report.warnings += _ignored_warnings(target, ignore_index)
        else:
            report.warnings += _probability_warnings(input, target)
        report.warnings += _logit_warnings(input)
    return report


def _record(report: BatchReport, error: Exception):
    report.ok = False
    report.error = error
    report.problems.append(str(error))


def _layout_warnings(input, target, mode) -> List[str]:
    # torch accepts (N, T, C) logits with an (N, T) target when T == C, reading T
    # as the classes: the same shapes fit the channels-last reading.
    if mode != "index" or input.dim() < 3:
        return []
    if tuple(target.shape[1:]) != tuple(input.shape[1:-1]):
        return []
    fix = "logits.transpose(1, 2)" if input.dim() == 3 else "logits.movedim(-1, 1)"
    return [f"logits {shape_text(input.shape)} with target {shape_text(target.shape)} are ambiguous: "
            f"torch takes dim 1 as the class dimension ({int(input.shape[1])} classes). If "
            f"the classes are the last dim (batch, ..., classes), the loss is silently "
            f"wrong: pass {fix}."]


def _ignored_warnings(target, ignore_index) -> List[str]:
    if target.numel() == 0 or not bool((target.long() == ignore_index).all()):
        return []
    return [f"every target equals ignore_index ({ignore_index}): with reduction='mean' "
            "the loss is NaN (0 / 0)."]


def _probability_warnings(input, target) -> List[str]:
    if target.numel() == 0 or input.dim() == 0:
        return []
    warnings = []
    if bool((target < 0).any()):
        warnings.append("the probability target has negative entries; torch accepts them "
                        "silently.")
    sums = target.sum(class_dim(input), dtype=torch.float64)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        warnings.append("the probability target rows do not sum to 1 along the class dim; "
                        "torch accepts them silently.")
    return warnings


def _logit_warnings(input) -> List[str]:
    if input.numel() == 0 or input.dim() == 0:
        return []
    finite = torch.isfinite(input)
    if not bool(finite.all()):
        first = int((~finite).reshape(-1).to(torch.uint8).argmax())
        position = ", ".join(str(i) for i in unravel(first, input.shape))
        return [f"the logits contain NaN or inf (first at input[{position}]); the loss "
                "will be NaN or inf."]
    sums = input.sum(class_dim(input), dtype=torch.float64)
    if bool((input >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        return ["the input looks like probabilities (non-negative, summing to 1): "
                "cross_entropy applies log_softmax itself, so pass raw logits (remove the "
                "final softmax)."]
    return []
