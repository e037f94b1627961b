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

from .batch_check import BatchReport, check_batch
from .errors import BatchSizeMismatchError, TargetOutOfRangeError
from .hints import per_row_ratio
from .target_range import find_out_of_range

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
# What a loader says about its batches
# =============================================================================


def _length(obj) -> Optional[int]:
    try:
        return len(obj)
    except Exception:  # TypeError for iterables without __len__, others from odd datasets
        return None


@dataclass
class _LoaderInfo:
    role: str                       # "input loader", "target loader" or "loader"
    length: Optional[int]           # len(loader): batches per pass
    dataset_len: Optional[int]
    samples: Optional[int]          # samples per pass: len(sampler), else len(dataset)
    batch_size: Optional[int]
    drop_last: Optional[bool]
    shuffled: bool
    sequential: bool
    sampler_name: Optional[str]

    @property
    def remainder(self) -> Optional[int]:
        if self.samples is None or not self.batch_size:
            return None
        return self.samples % self.batch_size

    def expected_size(self, k: int) -> Optional[int]:
        """Samples in batch k as the loader's settings predict (0 past the end)."""
        if self.remainder is None or self.drop_last is None:
            return None
        full = self.samples // self.batch_size
        if k < full:
            return self.batch_size
        if k == full and self.remainder and not self.drop_last:
            return self.remainder
        return 0

    def is_final_partial(self, k: int, size: int) -> bool:
        return (self.remainder is not None and self.drop_last is False and self.remainder > 0
                and k == self.samples // self.batch_size and size == self.remainder)

    def describe(self) -> str:
        parts = []
        if self.samples is not None:
            text = f"{self.samples} samples"
            if self.dataset_len is not None and self.dataset_len != self.samples:
                text += f" (its {self.sampler_name} draws {self.samples} of the dataset's {self.dataset_len})"
            parts.append(text)
        elif self.dataset_len is not None:
            parts.append(f"a dataset of {self.dataset_len} samples")
        if self.batch_size is not None:
            parts.append(f"batch_size={self.batch_size}")
        if self.drop_last is not None:
            parts.append(f"drop_last={self.drop_last}")
        text = f"the {self.role}: " + (", ".join(parts) if parts else "no DataLoader attributes")
        if self.length is not None:
            text += f" -> {self.length} batch" + ("es" if self.length != 1 else "")
        rem = self.remainder
        if rem is not None and self.drop_last is not None:
            n, b = self.samples, self.batch_size
            if rem == 0:
                text += f" of {b} ({n} % {b} = 0)"
            elif self.drop_last:
                text += f" of {b}; the last {n} % {b} = {rem} samples are dropped"
            else:
                text += f", the last holding {n} % {b} = {rem} samples"
        if self.shuffled:
            text += f"; shuffled ({self.sampler_name})"
        return text


def _loader_info(loader, role: str) -> _LoaderInfo:
    dataset = getattr(loader, "dataset", None)
    iterable = isinstance(dataset, torch.utils.data.IterableDataset)
    sampler = None if iterable else getattr(loader, "sampler", None)
    batch_size = getattr(loader, "batch_size", None)
    drop_last = getattr(loader, "drop_last", None)
    if batch_size is None:  # a custom batch_sampler: take what it says, if it says it
        batch_sampler = getattr(loader, "batch_sampler", None)
        batch_size = getattr(batch_sampler, "batch_size", None)
        drop_last = getattr(batch_sampler, "drop_last", None)
        if batch_size is not None:
            sampler = getattr(batch_sampler, "sampler", sampler)
    dataset_len = _length(dataset) if dataset is not None else None
    samples = _length(sampler) if sampler is not None else None
    if samples is None and iterable and getattr(loader, "num_workers", 0) == 0:
        samples = dataset_len  # one worker batches the stream in order
    random_samplers = (torch.utils.data.RandomSampler, torch.utils.data.SubsetRandomSampler,
                       torch.utils.data.WeightedRandomSampler)
    return _LoaderInfo(
        role=role, length=_length(loader), dataset_len=dataset_len, samples=samples,
        batch_size=batch_size if isinstance(batch_size, int) else None,
        drop_last=drop_last if isinstance(drop_last, bool) else None,
        shuffled=isinstance(sampler, random_samplers),
        sequential=isinstance(sampler, torch.utils.data.SequentialSampler),
        sampler_name=type(sampler).__name__ if sampler is not None else None,
    )


def _where(k: int, total: Optional[int]) -> str:
    if total is None:
        return f"batch {k}"
    if k == total - 1:
        return f"batch {k} (the last of {total})"
    return f"batch {k} (of {total}, counting from 0)"


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
    infos = ([_loader_info(loader, "input loader"), _loader_info(target_loader, "target loader")] if two
             else [_loader_info(loader, "loader")])
    lengths = [info.length for info in infos]
    total = None if None in lengths else min(lengths)
    report = LoaderReport(ok=True, batches_checked=0, num_batches=total)
    if two:
        report.warnings += _shuffle_warnings(infos)

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
            _fail(report, k, _length_error(k, infos, sizes, longer), None)
        if report.ok:
            report.warnings += _dataset_length_warnings(infos)
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
            return _batch_size_error(k, total, rows, target, infos), batch_report
        # Target dtype or rank: the same error, naming the batch.
        shape = "the target's shape" if probabilities else f"{int(logits.shape[1])} classes"
        note = (f"\n(check_loader: 'input' above is a stand-in for the model's logits, with the batch size "
                f"of the inputs ({rows}) and {shape}.)")
        return type(error)(f"{_where(k, total)}: {error}{note}"), batch_report
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


def _located_target_error(k, total, error: TargetOutOfRangeError, info: _LoaderInfo):
    where = f"{_where(k, total)}"
    position = error.position or ()
    if position and info.sequential and info.batch_size:
        where += (f", row {position[0]}: dataset item {k * info.batch_size + position[0]} "
                  f"(the {info.role}'s sampler is sequential)")
    return TargetOutOfRangeError(f"{where}: {error}", position=error.position, value=error.value,
                                 num_classes=error.num_classes, count=error.count,
                                 ignore_index=error.ignore_index)


# ---- explanations ------------------------------------------------------------


_FIX_TWO = ("Fix: batch inputs and targets together: one Dataset returning (input, target) pairs "
            "(e.g. TensorDataset(inputs, targets)) and one DataLoader; or give both loaders the same "
            "number of samples, batch_size and drop_last, and no independent shuffling.")


def _batch_size_error(k, total, rows, target, infos) -> BatchSizeMismatchError:
    n_target = int(target.shape[0]) if target.dim() > 0 else 0
    torch_text = f"Expected input batch_size ({rows}) to match target batch_size ({n_target})."
    lines = [f"{_where(k, total)}: the inputs have {rows} rows, the targets {n_target} "
             f"(cross_entropy would raise: {torch_text})"]
    if len(infos) == 2:
        lines += ["  " + info.describe() for info in infos]
        causes = _two_loader_causes(k, infos, [rows, n_target])
        lines.append("Likely cause: " + "; ".join(causes) + ".")
        lines.append(_FIX_TWO)
    else:
        lines.append("  " + infos[0].describe())
        cause = ("one loader yields both, so splitting into batches is not the cause: the dataset's items "
                 "(or the collate_fn) give inputs and targets of different lengths")
        per = per_row_ratio(rows, n_target, "row")
        if per:
            cause += (f"; {per}: a label per token/pixel/step flattened into the batch, or a reshape, "
                      "view(-1) or flatten that merged a dimension into the batch")
        lines.append("Likely cause: " + cause + ".")
    return BatchSizeMismatchError("\n".join(lines))


def _two_loader_causes(k, infos, sizes) -> List[str]:
    """Why batch k of two zipped loaders differs in size (sizes: per loader, None = exhausted)."""
    a, b = infos
    causes = []
    for info, size in zip(infos, sizes):
        if size is not None and info.is_final_partial(k, size):
            causes.append(f"batch {k} is the {info.role}'s final partial batch: {info.samples} % "
                          f"{info.batch_size} = {info.remainder} samples (drop_last=False)")
    if a.drop_last is not None and b.drop_last is not None and a.drop_last != b.drop_last:
        keeps, drops = (a, b) if b.drop_last else (b, a)
        text = f"drop_last differs: True on the {drops.role}, False on the {keeps.role}"
        if keeps.remainder:
            text += f", so only the {keeps.role} keeps its final partial batch"
        causes.append(text)
    if a.samples is not None and b.samples is not None and a.samples != b.samples:
        causes.append(f"the loaders draw different numbers of samples ({a.samples} inputs, {b.samples} "
                      "targets): the inputs and targets do not correspond one to one (targets from another "
                      "split or an uneven train/validation split?)")
    if a.batch_size is not None and b.batch_size is not None and a.batch_size != b.batch_size:
        causes.append(f"batch_size differs ({a.batch_size} for inputs, {b.batch_size} for targets)")
    if a.length is not None and b.length is not None and a.length != b.length:
        causes.append(f"the loaders have different lengths ({a.length} and {b.length} batches): zip() stops "
                      f"after {min(a.length, b.length)} without an error")
    if not causes:
        causes.append("the two loaders batch differently (they expose no DataLoader attributes to say how)")
    return causes


def _length_error(k, infos, sizes, longer: int) -> BatchSizeMismatchError:
    """Loader `longer` (0 or 1) yields batch k (of sizes[longer] samples), the other has ended."""
    info, other = infos[longer], infos[1 - longer]
    size = sizes[longer]
    extra = (info.length - k) if info.length is not None else None
    if extra == 1:
        unused = f"the {info.role}'s last batch" + (f" ({size} samples) is" if size is not None else " is")
    elif extra is not None:
        unused = f"the {info.role}'s last {extra} batches are"
    else:
        unused = f"the rest of the {info.role} is"
    got = f"{size} samples" if size is not None else "a batch"
    lines = [f"batch {k}: the {info.role} yields {got} but the {other.role} is exhausted after {k} batches: "
             f"zip() stops here without an error, so {unused} never used (cross_entropy never sees the "
             "mismatch)."]
    lines += ["  " + i.describe() for i in infos]
    causes = _two_loader_causes(k, infos, [size if i == longer else None for i in range(2)])
    lines.append("Likely cause: " + "; ".join(causes) + ".")
    lines.append(_FIX_TWO)
    return BatchSizeMismatchError("\n".join(lines))


def _exhausted_error(k, infos, batches, input_fn, target_fn) -> BatchSizeMismatchError:
    longer = 0 if batches[0] is not _END else 1
    if longer == 0:
        size = _rows(_pick(batches[0], input_fn, 0, INPUT_KEYS, "input", "input_fn"))
    else:
        target = _pick(batches[1], target_fn, 1, TARGET_KEYS, "target", "target_fn")
        size = _rows(target if isinstance(target, torch.Tensor) else _as_target(target))
    sizes = [None, None]
    sizes[longer] = size
    return _length_error(k, infos, sizes, longer)


# ---- warnings ----------------------------------------------------------------


def _shuffle_warnings(infos) -> List[str]:
    shuffled = [info for info in infos if info.shuffled]
    if not shuffled:
        return []
    who = " and ".join(f"the {info.role} ({info.sampler_name})" for info in shuffled)
    return [f"{who} shuffle{'s' if len(shuffled) == 1 else ''}: two loaders shuffle independently, so "
            "inputs are paired with the wrong targets (the batch sizes still agree, so nothing fails). "
            "Use one Dataset of (input, target) pairs, or samplers with the same seed."]


def _dataset_length_warnings(infos) -> List[str]:
    a, b = infos
    if a.dataset_len is None or b.dataset_len is None or a.dataset_len == b.dataset_len:
        return []
    return [f"the datasets have different lengths ({a.dataset_len} inputs, {b.dataset_len} targets): "
            "the batch sizes agree, but item i of one is unlikely to belong with item i of the other."]


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
