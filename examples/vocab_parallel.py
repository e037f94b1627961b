"""Vocabulary-parallel cross-entropy with validated_loss, on as many processes as you start.

    torchrun --nproc_per_node 2 examples/vocab_parallel.py        # gloo on the CPU
    torchrun --nproc_per_node 2 examples/vocab_parallel.py --nccl # one GPU per process

A toy language-model head whose output projection is split over the vocabulary: each rank owns a
contiguous block of rows of the projection (uneven blocks here: the vocabulary does not divide
evenly), computes the logits of its block only, and vocab_parallel_cross_entropy combines the ranks'
per-row statistics into the exact loss. The script checks the loss and this rank's gradient against
F.cross_entropy on the full logits, shows how many bytes crossed the network, and that a bad target
and an uneven batch raise the same error on every rank instead of hanging.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

try:
    import validated_loss  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from validated_loss import BatchSizeMismatchError, TargetOutOfRangeError  # noqa: E402
from validated_loss.distributed import bytes_per_row, vocab_parallel_cross_entropy  # noqa: E402

VOCAB, HIDDEN, BATCH, SEQ = 50_257, 64, 4, 32


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nccl", action="store_true", help="NCCL and one GPU per process (default: gloo on the CPU)")
    args = parser.parse_args()
    if args.nccl:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if args.nccl else "gloo")
    device = torch.device("cuda") if args.nccl else torch.device("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()

    # The same seed everywhere: every rank builds the same batch and the same full head (a real
    # model would load only its own block).
    torch.manual_seed(0)
    hidden = torch.randn(BATCH * SEQ, HIDDEN, device=device)
    full_head = torch.randn(VOCAB, HIDDEN, device=device) / HIDDEN**0.5
    target = torch.randint(0, VOCAB, (BATCH * SEQ,), device=device)
    target[:5] = -100  # padding positions

    blocks = torch.arange(VOCAB).tensor_split(world)  # uneven when world does not divide VOCAB
    start, stop = int(blocks[rank][0]), int(blocks[rank][-1]) + 1
    head = full_head[start:stop].clone().requires_grad_()  # this rank's (stop - start, HIDDEN) block

    logits_shard = hidden @ head.t()  # (rows, classes of this rank): never gathered
    loss = vocab_parallel_cross_entropy(logits_shard, target, label_smoothing=0.1)
    loss.backward()

    # Only to show it is exact: the same loss from the full logits on one process.
    full = full_head.clone().requires_grad_()
    reference = F.cross_entropy(hidden @ full.t(), target, label_smoothing=0.1)
    reference.backward()
    grad_error = (head.grad - full.grad[start:stop]).abs().max().item()
    cost = bytes_per_row(stop - start, logits_shard.dtype, label_smoothing=0.1)
    print(f"rank {rank}: classes [{start}, {stop}), loss {loss.item():.6f} (unsharded {reference.item():.6f}), "
          f"max |grad - unsharded grad| {grad_error:.2e}; per row {cost.communicated} bytes communicated "
          f"vs {cost.logits_shard} bytes of logits ({cost.ratio:.2e})", flush=True)

    # A label outside the vocabulary: every rank raises the same error (none waits in a collective).
    bad = target.clone()
    bad[7] = VOCAB
    try:
        vocab_parallel_cross_entropy(logits_shard.detach(), bad)
    except TargetOutOfRangeError as error:
        print(f"rank {rank}: TargetOutOfRangeError at target{list(error.position)}: {str(error)[:90]}...", flush=True)

    # An uneven batch on the last rank: every rank raises, naming that rank.
    rows = BATCH * SEQ - (8 if rank == world - 1 and world > 1 else 0)
    try:
        vocab_parallel_cross_entropy(logits_shard.detach()[:rows], target[:rows])
    except BatchSizeMismatchError as error:
        print(f"rank {rank}: BatchSizeMismatchError: {str(error).splitlines()[0]}", flush=True)

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
