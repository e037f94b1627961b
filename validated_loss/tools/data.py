"""check_loader: find the batch where inputs and targets stop lining up, and say why.

    from validated_loss.data import check_loader

    report = check_loader(train_loader, num_classes=10)                  # (input, target) batches
    report = check_loader(image_loader, target_loader=label_loader)      # two loaders, zipped
    print(report)

Each batch's pairing goes through ``diagnostics.check_batch``. The loader yields
model inputs, not logits, so the check uses a stand-in for the logits with the
input's batch size (dim 0), ``num_classes`` classes and the target's other
dimensions: what is checked is the batch size of input against target, the
target's dtype and rank, and, with ``num_classes``, the target range (without
it, only negative targets that are not ``ignore_index`` count as out of range).
The first bad batch is reported with its index and what the loaders say about
it: dataset lengths, batch_size, drop_last, len(loader), the size of a final
partial batch (``len(dataset) % batch_size``), and loaders of different lengths
(``zip`` stops at the shorter one without a word).
"""

from __future__ import annotations

import operator
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import torch

from ..batch_check import BatchReport, check_batch
from ..errors import BatchSizeMismatchError, TargetOutOfRangeError
from ..target_range import find_out_of_range
from .loaders import (LoaderInfo, batch_name, batch_size_error, dataset_length_warnings, length_error, loader_info,
                      shuffle_warnings)

__all__ = ["check_loader", "LoaderReport"]

# Keys tried, in order, when a batch is a dict.
INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids", "data", "features")
TARGET_KEYS = ("target", "targets", "label", "labels", "y", "mask", "masks", "class", "classes")

_END = object()


@dataclass
class LoaderReport:
    """What ``check_loader`` found.

    ``first_bad_batch`` is the index (from 0) of the first batch with a problem;
    ``error`` is the exception describing it (raised by ``raise_on_error=True``);
    ``batch_report`` is ``check_batch``'s report for that batch (None when the
    problem is a loader running out); ``num_batches`` is how many batches a full
    pass yields (the shorter loader's length for two loaders), when known.
    """

    ok: bool
    batches_checked: int
    first_bad_batch: Optional[int] = None
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    error: Optional[Exception] = None
    batch_report: Optional[BatchReport] = None
    num_batches: Optional[int] = None

    def __str__(self) -> str:
        if self.ok:
            status = "OK"
        elif self.first_bad_batch is not None:
            status = f"problem at batch {self.first_bad_batch}"
        else:
            status = f"{len(self.problems)} problem(s)"
        of = f" of {self.num_batches}" if self.num_batches is not None else ""
        lines = [f"check_loader: {status}; {self.batches_checked}{of} batches checked, "
                 f"{len(self.warnings)} warning(s)"]
        for title, texts in (("problem", self.problems), ("warning", self.warnings)):
            for text in texts:
                lines.append(f"- {title}: " + text.replace("\n", "\n    "))
        return "\n".join(lines)


# =============================================================================
# Taking inputs and targets out of a batch
# =============================================================================


def _from_mapping(batch: Mapping, keys, what: str, fn_name: str):
    for key in keys:
        if key in batch:
            return batch[key]
    if len(batch) == 1:
        return next(iter(batch.values()))
    raise TypeError(f"check_loader: cannot tell which entry of the batch dict is the {what} "
                    f"(keys: {sorted(map(str, batch))}); pass {fn_name}=lambda batch: batch[...]")


def _split_pair(batch, input_fn, target_fn):
    """(inputs, target) of one loader's batch."""
    if input_fn is not None and target_fn is not None:
        return input_fn(batch), target_fn(batch)
    if isinstance(batch, Mapping):
        inputs = _from_mapping(batch, INPUT_KEYS, "input", "input_fn") if input_fn is None else input_fn(batch)
        target = _from_mapping(batch, TARGET_KEYS, "target", "target_fn") if target_fn is None else target_fn(batch)
        return inputs, target
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        # zip(images_loader, labels_loader) of two single-tensor TensorDatasets yields ([x], [y]):
        # each side's 1-element batch is unwrapped, as with target_loader= (_pick).
        return (_single(batch[0]) if input_fn is None else input_fn(batch),
                _single(batch[1]) if target_fn is None else target_fn(batch))
    raise TypeError(f"check_loader: a batch of type {type(batch).__name__} is not an (input, target) pair "
                    "or a dict; pass target_loader=..., or input_fn and target_fn to pick them out")


def _single(part):
    """A 1-element tuple/list holding a tensor (TensorDataset(x)'s batch) unwrapped; else as is."""
    if isinstance(part, (tuple, list)) and len(part) == 1 and isinstance(part[0], torch.Tensor):
        return part[0]
    return part


def _pick(batch, fn, which: int, keys, what: str, fn_name: str):
    """The inputs (which=0) or targets (which=1) of a batch from one of two zipped loaders."""
    if fn is not None:
        return fn(batch)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:  # TensorDataset(x) yields [x]
            return batch[0]
        if len(batch) >= 2:  # a dataset of pairs: take this loader's half
            return batch[which]
    if isinstance(batch, Mapping) and what == "target":
        return _from_mapping(batch, keys, what, fn_name)
    return batch


def _rows(inputs) -> Optional[int]:
    """The batch size (dim 0) of model inputs: a tensor, a dict or sequence of them, or a list."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() > 0 else None
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    if isinstance(values, (tuple, list)) or isinstance(inputs, Mapping):
        values = list(values)
        for value in values:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
        if isinstance(inputs, (tuple, list)):
            return len(inputs)  # e.g. a batch of strings
    return None


def _as_target(target) -> torch.Tensor:
    if isinstance(target, torch.Tensor):
        return target
    try:
        if isinstance(target, (tuple, list)) and target and all(isinstance(t, torch.Tensor) for t in target):
            return torch.stack(list(target))
        return torch.as_tensor(target)
    except Exception as error:
        raise TypeError(f"check_loader: the target of type {type(target).__name__} is not a tensor and "
                        f"cannot be made one ({error}); pass target_fn") from None


# =============================================================================
# check_loader
# =============================================================================


def check_loader(loader, *, num_classes: Optional[int] = None, target_loader=None,
                 input_fn: Optional[Callable[[Any], Any]] = None,
                 target_fn: Optional[Callable[[Any], Any]] = None,
                 max_batches: Optional[int] = None, progress: Optional[bool] = None,
                 ignore_index: int = -100, check_values: bool = True,
                 raise_on_error: bool = False) -> LoaderReport:
    """Walk ``loader`` and check that every batch's inputs and targets pair up for cross_entropy.

    loader: a DataLoader (or any iterable) yielding ``(input, target)`` pairs or dicts,
        or, with ``target_loader``, yielding inputs only (a 1-tuple like
        ``TensorDataset(x)``'s is unwrapped; of a pair, element 0 is taken).
    target_loader: a second loader yielding the targets, walked in step with ``loader``
        as ``zip(loader, target_loader)`` would (of a pair, element 1 is taken).
    input_fn, target_fn: pick the inputs / targets out of a batch (of ``loader`` /
        ``target_loader`` when there are two). Dicts are searched for the keys in
        ``INPUT_KEYS`` / ``TARGET_KEYS``.
    num_classes: the model's number of classes; enables the target range check.
    max_batches: stop after this many batches.
    progress: show a tqdm progress bar (``None``: when the loader has more than 50
        batches and stderr is a terminal).
    ignore_index: as for cross_entropy.
    check_values: read the target values (range check); False checks shapes only.
    raise_on_error: raise the error found (a BatchSizeMismatchError,
        TargetOutOfRangeError or another validated_loss error, whose message
        names the batch) instead of returning a report with ``ok=False``.

    Stops at the first bad batch and returns a ``LoaderReport``.
    """
    num_classes = _num_classes_argument(num_classes)
    two = target_loader is not None
    infos = ([loader_info(loader, "input loader"), loader_info(target_loader, "target loader")] if two
             else [loader_info(loader, "loader")])
    lengths = [info.length for info in infos]
    total = None if None in lengths else min(lengths)
    report = LoaderReport(ok=True, batches_checked=0, num_batches=total)
    if two:
        report.warnings += shuffle_warnings(infos)

    limit = total if max_batches is None else (max_batches if total is None else min(total, max_batches))
    bar = _progress_bar(progress, limit)
    iterators = [iter(loader)] + ([iter(target_loader)] if two else [])
    warned_layout = False
    try:
        k = 0
        while max_batches is None or k < max_batches:
            batches = [next(it, _END) for it in iterators]
            if all(b is _END for b in batches):
                break
            if two and _END in batches:  # zip() would stop here: nothing to pair, nothing checked
                _fail(report, k, _exhausted_error(k, infos, batches, input_fn, target_fn), None)
                break
            if two:
                inputs = _pick(batches[0], input_fn, 0, INPUT_KEYS, "input", "input_fn")
                target = _pick(batches[1], target_fn, 1, TARGET_KEYS, "target", "target_fn")
            else:
                inputs, target = _split_pair(batches[0], input_fn, target_fn)
            target = _as_target(target)
            report.batches_checked += 1
            if not warned_layout:
                report.warnings += _target_layout_warnings(target, num_classes)
                warned_layout = True
            error, batch_report = _check_pair(k, total, inputs, target, infos, num_classes, ignore_index,
                                              check_values)
            if bar is not None:
                bar.update(1)
            if error is not None:
                _fail(report, k, error, batch_report)
                break
            k += 1
    finally:
        if bar is not None:
            bar.close()

    if report.ok and two:
        stopped_early = max_batches is not None and report.batches_checked >= max_batches
        if stopped_early and None not in lengths and lengths[0] != lengths[1]:
            # Not walked that far, but the lengths already say where zip() will stop.
            k = min(lengths)
            longer = 0 if lengths[0] > lengths[1] else 1
            sizes = [None, None]
            sizes[longer] = infos[longer].expected_size(k)
            _fail(report, k, length_error(k, infos, sizes, longer), None)
        if report.ok:
            report.warnings += dataset_length_warnings(infos)
    if raise_on_error and report.error is not None:
        raise report.error
    return report


def _num_classes_argument(num_classes):
    """num_classes as an int >= 0, or None; a TypeError/ValueError that names it otherwise."""
    if num_classes is None:
        return None
    try:
        value = None if isinstance(num_classes, bool) else operator.index(num_classes)
    except TypeError:
        value = None
    if value is None:
        raise TypeError(f"check_loader: num_classes must be an int (the model's number of classes) or None, "
                        f"not {type(num_classes).__name__}")
    if value < 0:
        raise ValueError(f"check_loader: num_classes must be the model's number of classes (>= 0), got {value}")
    return value


def _fail(report: LoaderReport, k: int, error: Exception, batch_report: Optional[BatchReport]):
    report.ok = False
    report.first_bad_batch = k
    report.error = error
    report.batch_report = batch_report
    report.problems.append(str(error))


def _progress_bar(progress, total):
    if progress is None:
        progress = total is not None and total > 50 and sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm  # lazy: an optional dependency, wanted only for a progress bar
    except ImportError:
        warnings.warn("check_loader: progress=True needs tqdm (pip install tqdm); continuing without a "
                      "progress bar", RuntimeWarning, stacklevel=3)
        return None
    return tqdm(total=total, desc="check_loader", unit="batch", file=sys.stderr)


# ---- one batch ---------------------------------------------------------------


def _stand_in(rows: int, target: torch.Tensor, num_classes: Optional[int]):
    """Logits-shaped metadata for the model output: no memory (a broadcast zero)."""
    floating = target.is_floating_point()
    probabilities = floating and target.dim() >= 2 and (num_classes is None or target.shape[1] == num_classes)
    if probabilities:
        shape = (rows,) + tuple(target.shape[1:])
    else:
        shape = (rows, num_classes if num_classes is not None else 1) + tuple(target.shape[1:])
    dtype = target.dtype if probabilities else torch.float32
    return torch.zeros((), dtype=dtype, device=target.device).expand(shape), probabilities


def _check_pair(k, total, inputs, target, infos, num_classes, ignore_index, check_values):
    rows = _rows(inputs)
    if rows is None:
        raise TypeError(f"check_loader: cannot find the batch size of the inputs of batch {k} "
                        f"(type {type(inputs).__name__}); pass input_fn returning a tensor whose dim 0 "
                        "is the batch")
    logits, probabilities = _stand_in(rows, target, num_classes)
    batch_report = check_batch(logits, target, ignore_index=ignore_index, check_values=False)
    if not batch_report.ok:
        error = batch_report.error
        if isinstance(error, BatchSizeMismatchError) or (target.dim() > 0 and int(target.shape[0]) != rows):
            # Whatever check_batch calls it (a probability target of another shape, say), a
            # dim-0 disagreement between two loaders is a batching question.
            return batch_size_error(k, total, rows, target, infos), batch_report
        # Target dtype or rank: the same error, naming the batch.
        shape = "the target's shape" if probabilities else f"{int(logits.shape[1])} classes"
        note = (f"\n(check_loader: 'input' above is a stand-in for the model's logits, with the batch size "
                f"of the inputs ({rows}) and {shape}.)")
        return type(error)(f"{batch_name(k, total)}: {error}{note}"), batch_report
    if check_values and not probabilities and not target.is_meta:
        if num_classes is not None:
            error = find_out_of_range(logits, target, ignore_index)
        else:
            error = _find_negative(target, ignore_index)
        if error is not None:
            batch_report.ok = False
            batch_report.error = error
            batch_report.problems.append(str(error))
            return _located_target_error(k, total, error, infos[-1]), batch_report
    return None, batch_report


def _find_negative(target, ignore_index) -> Optional[TargetOutOfRangeError]:
    """Without num_classes only a negative target that is not ignore_index is sure to be invalid."""
    flat = target.reshape(-1).long()
    invalid = (flat < 0) & (flat != ignore_index)
    count = int(invalid.sum())
    if count == 0:
        return None
    first = int(invalid.to(torch.uint8).argmax())
    value = int(flat[first])
    position = []
    for size in reversed(target.shape):  # row-major unravelling of the flat position
        position.append(first % int(size))
        first //= int(size)
    position = tuple(reversed(position))
    index = ", ".join(map(str, position))
    message = (f"Target {value} is out of bounds. target[{index}] = {value} is negative and is not "
               f"ignore_index ({ignore_index}); {count} of {flat.numel()} targets are invalid (num_classes "
               f"was not given, so only negative targets were checked). Likely cause: negative labels used "
               f"as padding or 'no label': pass ignore_index={value} (or map them to the ignore_index in "
               f"force).")
    return TargetOutOfRangeError(message, position=position, value=value, num_classes=None, count=count,
                                 ignore_index=ignore_index)


def _located_target_error(k, total, error: TargetOutOfRangeError, info: LoaderInfo):
    where = f"{batch_name(k, total)}"
    position = error.position or ()
    if position and info.sequential and info.batch_size:
        where += (f", row {position[0]}: dataset item {k * info.batch_size + position[0]} "
                  f"(the {info.role}'s sampler is sequential)")
    return TargetOutOfRangeError(f"{where}: {error}", position=error.position, value=error.value,
                                 num_classes=error.num_classes, count=error.count,
                                 ignore_index=error.ignore_index)


# ---- explanations ------------------------------------------------------------


def _exhausted_error(k, infos, batches, input_fn, target_fn) -> BatchSizeMismatchError:
    longer = 0 if batches[0] is not _END else 1
    if longer == 0:
        size = _rows(_pick(batches[0], input_fn, 0, INPUT_KEYS, "input", "input_fn"))
    else:
        target = _pick(batches[1], target_fn, 1, TARGET_KEYS, "target", "target_fn")
        size = _rows(target if isinstance(target, torch.Tensor) else _as_target(target))
    sizes = [None, None]
    sizes[longer] = size
    return length_error(k, infos, sizes, longer)


# ---- warnings ----------------------------------------------------------------


def _target_layout_warnings(target: torch.Tensor, num_classes: Optional[int]) -> List[str]:
    if target.is_floating_point() or target.dim() != 2:
        return []
    n, k = int(target.shape[0]), int(target.shape[1])
    if k == 1:
        return [f"the target has shape ({n}, 1): if the model outputs ({n}, C) logits, cross_entropy "
                "rejects it; use target.squeeze(1) (or target_transform=int in the dataset)."]
    if num_classes is not None and k == num_classes and num_classes > 1:
        return [f"the integer target has shape ({n}, {k}) and num_classes={k}: one-hot labels? With "
                f"({n}, {k}) logits cross_entropy rejects them; use target.argmax(1) (or .float() for "
                "class probabilities)."]
    return []
