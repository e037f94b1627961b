"""What a DataLoader says about its batches (dataset length, batch_size, drop_last, sampler) and
the explanations check_loader gives from it when two loaders' batches stop lining up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..errors import BatchSizeMismatchError
from ..hints import per_row_ratio


def length_of(obj) -> Optional[int]:
    try:
        return len(obj)
    except Exception:  # TypeError for iterables without __len__, others from odd datasets
        return None


@dataclass
class LoaderInfo:
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


def loader_info(loader, role: str) -> LoaderInfo:
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
    dataset_len = length_of(dataset) if dataset is not None else None
    samples = length_of(sampler) if sampler is not None else None
    if samples is None and iterable and getattr(loader, "num_workers", 0) == 0:
        samples = dataset_len  # one worker batches the stream in order
    random_samplers = (torch.utils.data.RandomSampler, torch.utils.data.SubsetRandomSampler,
                       torch.utils.data.WeightedRandomSampler)
    return LoaderInfo(
        role=role, length=length_of(loader), dataset_len=dataset_len, samples=samples,
        batch_size=batch_size if isinstance(batch_size, int) else None,
        drop_last=drop_last if isinstance(drop_last, bool) else None,
        shuffled=isinstance(sampler, random_samplers),
        sequential=isinstance(sampler, torch.utils.data.SequentialSampler),
        sampler_name=type(sampler).__name__ if sampler is not None else None,
    )


def batch_name(k: int, total: Optional[int]) -> str:
    if total is None:
        return f"batch {k}"
    if k == total - 1:
        return f"batch {k} (the last of {total})"
    return f"batch {k} (of {total}, counting from 0)"


FIX_TWO_LOADERS = ("Fix: batch inputs and targets together: one Dataset returning (input, target) pairs "
            "(e.g. TensorDataset(inputs, targets)) and one DataLoader; or give both loaders the same "
            "number of samples, batch_size and drop_last, and no independent shuffling.")


def batch_size_error(k, total, rows, target, infos) -> BatchSizeMismatchError:
    n_target = int(target.shape[0]) if target.dim() > 0 else 0
    torch_text = f"Expected input batch_size ({rows}) to match target batch_size ({n_target})."
    lines = [f"{batch_name(k, total)}: the inputs have {rows} rows, the targets {n_target} "
             f"(cross_entropy would raise: {torch_text})"]
    if len(infos) == 2:
        lines += ["  " + info.describe() for info in infos]
        causes = two_loader_causes(k, infos, [rows, n_target])
        lines.append("Likely cause: " + "; ".join(causes) + ".")
        lines.append(FIX_TWO_LOADERS)
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


def two_loader_causes(k, infos, sizes) -> List[str]:
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


def length_error(k, infos, sizes, longer: int) -> BatchSizeMismatchError:
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
    causes = two_loader_causes(k, infos, [size if i == longer else None for i in range(2)])
    lines.append("Likely cause: " + "; ".join(causes) + ".")
    lines.append(FIX_TWO_LOADERS)
    return BatchSizeMismatchError("\n".join(lines))


def shuffle_warnings(infos) -> List[str]:
    shuffled = [info for info in infos if info.shuffled]
    if not shuffled:
        return []
    who = " and ".join(f"the {info.role} ({info.sampler_name})" for info in shuffled)
    return [f"{who} shuffle{'s' if len(shuffled) == 1 else ''}: two loaders shuffle independently, so "
            "inputs are paired with the wrong targets (the batch sizes still agree, so nothing fails). "
            "Use one Dataset of (input, target) pairs, or samplers with the same seed."]


def dataset_length_warnings(infos) -> List[str]:
    a, b = infos
    if a.dataset_len is None or b.dataset_len is None or a.dataset_len == b.dataset_len:
        return []
    return [f"the datasets have different lengths ({a.dataset_len} inputs, {b.dataset_len} targets): "
            "the batch sizes agree, but item i of one is unlikely to belong with item i of the other."]
