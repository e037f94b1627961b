"""Cross-entropy beyond one device, over torch.distributed.

vocab_parallel_cross_entropy
    The class (vocabulary) dimension is split into contiguous slices, one per rank of a process
    group (tensor parallelism of an LM head); sizes may differ between ranks. Loss and gradients
    equal those of ``torch.nn.functional.cross_entropy`` on the gathered logits, but only a few
    floats per row cross the network, never the logits:

        1 int64 all_gather of 8 numbers per rank   shard sizes (class offsets), batch sizes, an
                                                   argument signature, the range of the targets,
                                                   a checksum of the targets
        1 all_reduce MAX of 1 float per row        row max M
        1 all_reduce SUM of 2-3 floats per row     sum exp(x - M), x_target - M and, with label
                                                   smoothing, sum_c w_c (x_c - M)

    The backward is local: grad = scale * (S * exp(x - lse) - a_c) on the rank's own classes.

check_batch_consistency
    Data parallelism: every rank's input and target batch sizes, compared across the group, so an
    uneven last batch is reported (which rank, by how much) instead of hanging a collective.

Failing on every rank
    Everything a rank could reject before the loss's collectives (arguments, shapes, batch sizes,
    target values) is summarised in the one all_gather; afterwards every rank takes the same
    decision from the same numbers, so either all ranks raise or none does, and no rank is left
    waiting in a collective that its peers never enter.

The same code runs on gloo (CPU tensors) and NCCL (CUDA tensors): the collectives run on the
logits' device.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.nn import _reduction

from .. import _ops
from .._ops import Reduction
from .vocab_parallel import VocabParallelCrossEntropy
from .._autocast import autocast_enabled
from ..checks import check_inputs
from ..errors import BatchSizeMismatchError, TargetDtypeError, TargetOutOfRangeError, ValidatedLossError
from ..functional import check_argument_types
from ..hints import ONE_DATASET_FIX
from ..target_range import find_out_of_range

__all__ = [
    "vocab_parallel_cross_entropy",
    "check_batch_consistency",
    "bytes_per_row",
    "RowBytes",
    "RankMismatchError",
    "METADATA_INTS_PER_RANK",
]


class RankMismatchError(ValidatedLossError, RuntimeError):
    """Ranks of one group called a distributed loss with different arguments, or another rank
    rejected its own; raised on every rank so that none waits in a collective.

    ``ranks``: the ranks that differ from (or, for a rejected argument, failed unlike) the others.
    """

    def __init__(self, message, *, ranks=()):
        super().__init__(message)
        self.ranks = tuple(ranks)


# =============================================================================
# Bytes communicated
# =============================================================================

# The one all_gather of a call: (classes of the shard, input batch, target batch, signature,
# argument error flag, smallest and largest non-ignored target, target checksum), int64 each.
METADATA_INTS_PER_RANK = 8


class RowBytes(NamedTuple):
    """Bytes of one row: what vocab_parallel_cross_entropy all-reduces, and the rank's logits.

    ``communicated`` is the payload each rank contributes to the all-reduces (a ring all-reduce
    moves about 2 (p - 1) / p times that over each rank's link); the per-call all_gather
    (``METADATA_INTS_PER_RANK`` int64 per rank) does not grow with the rows and is not included.
    """

    communicated: int
    logits_shard: int

    @property
    def ratio(self) -> float:
        """communicated / logits_shard."""
        return self.communicated / self.logits_shard if self.logits_shard else float("inf")


def bytes_per_row(num_classes_shard: int, dtype=torch.float32, *, label_smoothing: float = 0.0) -> RowBytes:
    """Bytes one row costs in communication against the bytes of its logits on one rank.

    Per row: the MAX all-reduce carries the row max, the SUM all-reduce the sum of exp(x - max)
    and the target logit, plus sum_c w_c (x_c - max) with label smoothing; all in the accumulate
    type (float32, float64 for float64 logits). The forward is the only pass that communicates.
    """
    dtype = torch.empty((), dtype=dtype).dtype  # accepts torch dtypes only, with their names
    acc = torch.empty((), dtype=_ops.accumulate_dtype(dtype)).element_size()
    floats = 1 + 2 + (1 if label_smoothing > 0 else 0)
    return RowBytes(floats * acc, int(num_classes_shard) * torch.empty((), dtype=dtype).element_size())


# =============================================================================
# Process-group helpers
# =============================================================================


def _rank_and_size(group) -> Tuple[int, int]:
    """(rank in group, group size); (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("a process group was given but torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        return 0, 1
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the process group it was given")
    return rank, dist.get_world_size(group)


def _comm_device(group, tensor) -> torch.device:
    """Where the collectives' tensors live: the tensor's device, except CPU tensors on an
    NCCL-only group (NCCL moves CUDA memory only)."""
    if tensor.device.type != "cpu":
        return tensor.device
    if dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def _all_gather_rows(values: torch.Tensor, group, world: int) -> List[List[int]]:
    """all_gather of one small int64 vector per rank, as a list of rows (one per rank)."""
    if world == 1:
        return [values.tolist()]
    out = [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(out, values, group=group)
    return torch.stack(out).tolist()


def _ranks_text(ranks: Sequence[int]) -> str:
    ranks = list(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(str(r) for r in ranks)


def _has(ranks: Sequence[int]) -> str:
    return "has" if len(ranks) == 1 else "have"


# =============================================================================
# Batch sizes across ranks
# =============================================================================


def _batch_sizes(input, target) -> Tuple[int, int]:
    """(input rows, target rows) as cross_entropy counts them: dim 0; a 1-D input is one unbatched
    sample (class dim 0), and a 0-dim target one row."""
    n_in = 1 if input.dim() <= 1 else int(input.shape[0])
    n_tgt = 1 if target.dim() == 0 else int(target.shape[0])
    return n_in, n_tgt


def _batch_report(sizes: Sequence[Tuple[int, int]], *, vocab_parallel=False):
    """(message, ranks that disagree) for per-rank (input rows, target rows), or None if all agree."""
    sizes = [tuple(s) for s in sizes]
    if all(s == sizes[0] for s in sizes) and sizes[0][0] == sizes[0][1]:
        return None
    world = len(sizes)
    counts = Counter(sizes)
    # The reference is the most common pair, ties going to consistent pairs, then to the larger batch
    # (a partial last batch is the smaller one).
    reference = max(counts, key=lambda s: (counts[s], s[0] == s[1], s[0], s[1]))
    odd = [r for r, s in enumerate(sizes) if s != reference]
    same = [r for r, s in enumerate(sizes) if s == reference]

    def rows(pair):
        return f"{pair[0]} rows" if pair[0] == pair[1] else f"{pair[0]} input rows and {pair[1]} target rows"

    problems = []
    smaller = larger = split = False
    if not odd:  # every rank has the same inconsistent pair
        problems.append(f"every rank {_has([0, 1])} {rows(reference)}")
        split = True
    for pair in sorted(set(sizes) - {reference}, key=lambda s: (s[0] != s[1], s)):
        ranks = [r for r, s in enumerate(sizes) if s == pair]
        if pair[0] == pair[1] and reference[0] == reference[1]:  # "rank 2 has 24 rows, ranks 0, 1 have 32"
            text = f"{_ranks_text(ranks)} {_has(ranks)} {rows(pair)}, {_ranks_text(same)} {_has(same)} {reference[0]}"
        else:
            text = (f"{_ranks_text(ranks)} {_has(ranks)} {rows(pair)}, "
                    f"{_ranks_text(same)} {_has(same)} {rows(reference)}")
        if pair[0] == pair[1] and reference[0] == reference[1]:
            diff = pair[0] - reference[0]
            text += f" ({abs(diff)} {'fewer' if diff < 0 else 'more'})"
            smaller |= diff < 0
            larger |= diff > 0
        else:
            split |= pair[0] != pair[1] or reference[0] != reference[1]
            smaller |= min(pair) < min(reference)
            larger |= max(pair) > max(reference)
        problems.append(text)

    causes, fixes = [], []
    if split:
        inconsistent = [r for r, s in enumerate(sizes) if s[0] != s[1]]
        causes.append(f"on {_ranks_text(inconsistent)} the input and the target come from different batches")
        fixes.append(ONE_DATASET_FIX)
    if smaller and not larger:
        causes.append("an uneven last batch (the dataset is not a multiple of world_size x batch_size)")
        fixes.append(f"use drop_last=True in the DistributedSampler/DataLoader, or pad the last batch to "
                     f"{max(reference)} rows")
    elif larger:
        causes.append("the ranks use different batch sizes")
        fixes.append("give every rank the same batch_size")
    if vocab_parallel:
        fixes.append("every rank of a vocabulary-parallel group must hold the same rows; only the class "
                     "dimension is split")
    message = (f"Batch sizes differ across the {world} ranks of the process group: " + "; ".join(problems) + ".\n"
               f"Likely cause: {'; or '.join(causes)}.\nFix: {'; '.join(fixes)}.")
    return message, sorted(set(odd) | {r for r, s in enumerate(sizes) if s[0] != s[1]})


def _raise_batch_mismatch(sizes, *, vocab_parallel=False):
    report = _batch_report(sizes, vocab_parallel=vocab_parallel)
    if report is None:
        return
    message, ranks = report
    error = BatchSizeMismatchError(message)
    error.sizes = [tuple(s) for s in sizes]  # (input rows, target rows) per rank
    error.ranks = ranks
    raise error


def check_batch_consistency(input, target, group=None) -> List[Tuple[int, int]]:
    """Check that every rank of ``group`` holds as many input rows as target rows, and as many as
    every other rank, before a collective hangs on an uneven last batch.

    One all_gather of two int64 per rank (every rank of the group must call it). On a mismatch
    every rank raises the same ``BatchSizeMismatchError``, which names the ranks that disagree and
    by how much (attributes ``sizes``: (input rows, target rows) per rank, ``ranks``). Batch size
    is dim 0 (a 1-D input is one unbatched sample, as in cross_entropy). Returns the per-rank sizes.
    """
    rank, world = _rank_and_size(group)
    local = torch.tensor(_batch_sizes(input, target), dtype=torch.int64, device=_comm_device(group, input))
    sizes = [tuple(s) for s in _all_gather_rows(local, group, world)]
    _raise_batch_mismatch(sizes)
    return sizes


# =============================================================================
# vocab_parallel_cross_entropy
# =============================================================================

_NO_LO, _NO_HI = 2**63 - 1, -(2**63)  # target range of a rank with no counted target


def vocab_parallel_cross_entropy(logits_shard, target, *, group=None, weight=None, ignore_index=-100,
                                 reduction="mean", label_smoothing=0.0, check_batch=False):
    """``torch.nn.functional.cross_entropy`` of logits whose class dimension is split across ranks.

    logits_shard: this rank's contiguous slice of the class dimension (dim 1; dim 0 for a 1-D
        input), ranks in group order: rank 0 holds the first classes. Shapes (N, C_r) or
        (N, C_r, d1, ..., dk); C_r may differ between ranks (even be 0). Float dtypes as torch.
    target: class indices into the GLOBAL class dimension (C = sum of C_r), the same on every rank.
    weight: optional class weights for all C classes (the full vector, on every rank).
    ignore_index, reduction, label_smoothing: as torch; smoothing spreads over the global C.
    check_batch: the rows of every rank of ``group`` are always compared (it costs nothing beyond
        the call's all_gather), so True changes nothing; pass another process group, such as the
        data-parallel group, to run ``check_batch_consistency`` over it first.

    Every rank of ``group`` must call it. Returns the same loss on every rank; backward gives
    each rank the gradient of its own slice, computed locally. Errors (out-of-range targets as
    ``TargetOutOfRangeError`` with cross_entropy's message, batch mismatches, bad arguments) are
    raised on every rank, before any collective depends on what was wrong.
    """
    if check_batch is not None and not isinstance(check_batch, bool):
        check_batch_consistency(logits_shard, target, group=check_batch)
    rank, world = _rank_and_size(group)

    # 1. Local facts; anything this rank would reject is only flagged until every rank knows.
    local_error = None
    reduction_code = int(Reduction.MEAN)
    try:
        reduction_code = _reduction.get_enum(reduction)  # torch's ValueError for unknown names
        ignore_index, label_smoothing = check_argument_types(logits_shard, target, weight, ignore_index,
                                                             label_smoothing)
    except Exception as error:  # noqa: BLE001  (re-raised below, after the all_gather)
        local_error = error
    if not isinstance(logits_shard, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise local_error  # nothing to gather: a programming error, the same on every rank
    facts = _local_facts(logits_shard, target, weight, ignore_index, label_smoothing, reduction,
                         ok=local_error is None, device=_comm_device(group, logits_shard))

    # 2. The call's one all_gather, then the same decisions on every rank.
    rows = _all_gather_rows(facts, group, world)
    if local_error is not None:
        raise local_error
    failed = [r for r, row in enumerate(rows) if row[4] == 0]
    if failed:
        raise RankMismatchError(
            f"{_ranks_text(failed)} rejected the arguments of vocab_parallel_cross_entropy (see the error "
            f"raised there); rank {rank} raises too so that no rank waits in a collective.", ranks=failed)
    batches = [(row[1], row[2]) for row in rows]
    if any(b != batches[0] for b in batches):  # the same mismatch on every rank: check_inputs explains it
        _raise_batch_mismatch(batches, vocab_parallel=True)
    differ = [r for r, row in enumerate(rows) if row[3] != rows[0][3]]
    if differ:
        raise RankMismatchError(
            f"the ranks called vocab_parallel_cross_entropy with different arguments: {_ranks_text(differ)} "
            f"{'differs' if len(differ) == 1 else 'differ'} from rank 0 in the logits' dtype, rank or non-class "
            f"sizes, the target's shape or dtype, the weight, ignore_index, label_smoothing or reduction. "
            f"Rank {rank} has: {_signature(logits_shard, target, weight, ignore_index, label_smoothing, reduction)}.",
            ranks=differ)
    if logits_shard.dim() == 0:
        check_inputs(logits_shard, target, weight, ignore_index, label_smoothing)  # raises
    shard_sizes = [row[0] for row in rows]
    num_classes = sum(shard_sizes)
    offset = sum(shard_sizes[:rank])
    # A stand-in for the gathered logits: global shape, this rank's dtype and device, no memory.
    global_like = torch.empty((), dtype=logits_shard.dtype, device=logits_shard.device).expand(
        _with_classes(logits_shard, num_classes))
    if target.is_floating_point():
        raise TargetDtypeError(
            f"vocab_parallel_cross_entropy takes class indices (an integer target), got a {target.dtype} target "
            f"of shape {tuple(target.shape)}; class-probability targets would be split like the logits, "
            "which is not supported.")
    check_inputs(global_like, target, weight, ignore_index, label_smoothing)
    bad = [r for r, row in enumerate(rows) if row[5] <= row[6] and (row[5] < 0 or row[6] >= num_classes)]
    if bad:
        raise _target_error(global_like, target, ignore_index, bad, rows, rank, num_classes)
    differ = [r for r, row in enumerate(rows) if row[7] != rows[0][7]]
    if differ:  # each rank would add another row's target logit: a silently wrong loss
        raise RankMismatchError(
            f"the ranks were given different targets: {_ranks_text(differ)} "
            f"{'differs' if len(differ) == 1 else 'differ'} from rank 0 (same shape, other values or order; "
            f"compared by checksum). vocab_parallel_cross_entropy needs the same target on every rank of the "
            f"group: a data loader or sampler seeded per rank, or a target sharded like the logits?", ranks=differ)

    # Under autocast the loss is float32, as cross_entropy's (torch's fp32 policy); the gradient
    # keeps the logits' dtype.
    acc_loss = autocast_enabled(logits_shard)
    return VocabParallelCrossEntropy.apply(logits_shard, target, weight, offset, num_classes, reduction_code,
                                            ignore_index, float(label_smoothing), group, world, acc_loss)


def _with_classes(logits, num_classes) -> Tuple[int, ...]:
    shape = list(logits.shape)
    shape[0 if logits.dim() == 1 else 1] = num_classes
    return tuple(shape)


def _signature(logits, target, weight, ignore_index, label_smoothing, reduction) -> str:
    rows = tuple(logits.shape[:1]) + tuple(logits.shape[2:]) if logits.dim() >= 2 else ()
    return (f"logits {logits.dtype} of rank {logits.dim()} with non-class sizes {rows} on {logits.device.type}, "
            f"target {target.dtype} {tuple(target.shape)}, weight "
            f"{'None' if weight is None else f'{weight.dtype} {tuple(weight.shape)}'}, ignore_index={ignore_index!r}, "
            f"label_smoothing={label_smoothing!r}, reduction={reduction!r}")


def _local_facts(logits, target, weight, ignore_index, label_smoothing, reduction, *, ok, device) -> torch.Tensor:
    """This rank's METADATA_INTS_PER_RANK int64s: (classes of the shard, input rows, target rows,
    signature, arguments ok, smallest and largest non-ignored target, target checksum). The target
    range and checksum stay on the device: the all_gather carries them without a host sync of its own."""
    classes = int(logits.shape[1]) if logits.dim() >= 2 else (int(logits.shape[0]) if logits.dim() == 1 else -1)
    n_in, n_tgt = _batch_sizes(logits, target)
    weight_ok = weight is None or isinstance(weight, torch.Tensor)
    signature = zlib.crc32(_signature(logits, target, weight if weight_ok else None, ignore_index,
                                      label_smoothing, reduction).encode()) if ok else 0
    head = torch.tensor([classes, n_in, n_tgt, signature, int(ok)], dtype=torch.int64, device=device)
    lo = torch.full((), _NO_LO, dtype=torch.int64, device=target.device)
    hi = torch.full((), _NO_HI, dtype=torch.int64, device=target.device)
    checksum = torch.zeros((), dtype=torch.int64, device=target.device)
    if ok and target.numel() > 0 and not target.is_floating_point() and not target.is_complex():
        flat = target.reshape(-1).long()
        counted = flat != ignore_index
        lo = torch.where(counted, flat, _NO_LO).amin()
        hi = torch.where(counted, flat, _NO_HI).amax()
        checksum = _target_checksum(flat)
    return torch.cat([head, torch.stack([lo, hi, checksum]).to(device)])


def _target_checksum(flat):
    """A position-weighted sum of the targets, exact in int64 (each term below 2^36, so no overflow
    under 2^27 targets): another value or order gives another sum (barring collisions)."""
    position = torch.arange(flat.numel(), device=flat.device) % 65521 + 1
    return ((flat % (1 << 20)) * position).sum()


def _target_error(global_like, target, ignore_index, bad, rows, rank, num_classes):
    """cross_entropy's TargetOutOfRangeError when this rank's target is out of range (every rank
    when they share the target); otherwise one naming the ranks whose targets are."""
    error = find_out_of_range(global_like, target, ignore_index)
    if error is not None:
        return error
    ranges = "; ".join(f"rank {r}: targets in [{rows[r][5]}, {rows[r][6]}]" for r in bad)
    return TargetOutOfRangeError(
        f"Target out of bounds on {_ranks_text(bad)} ({ranges}, not class indices in [0, {num_classes}) and not "
        f"ignore_index ({ignore_index})); rank {rank}'s own targets are valid. The ranks of a vocabulary-parallel "
        "group must all be given the same target; that rank's error names the position.",
        num_classes=num_classes, ignore_index=ignore_index)
