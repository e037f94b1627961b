"""Bytes vocab_parallel_cross_entropy communicates per row, against the bytes of the logits shard.

Starts WORLD processes on this machine (gloo, CPU), runs one forward and one backward of
validated_loss.distributed.vocab_parallel_cross_entropy for each configuration, and counts the bytes
every torch.distributed collective call carries (each rank's contribution: the tensor it passes in).
The measured all-reduce bytes per row are checked against validated_loss.distributed.bytes_per_row.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed_bytes.py
    PYTHONPATH=. .venv/bin/python benchmarks/distributed_bytes.py --world 4 --vocab 32000,128256 --rows 512

Columns (per row, on rank 0; every rank sends the same amount):
  shard classes    classes of rank 0's slice of the vocabulary
  logits B/row     bytes of rank 0's logits for one row (classes x element size)
  sent B/row       bytes rank 0 put into all-reduces, per row (measured)
  model B/row      bytes_per_row(...).communicated
  sent / logits    the fraction of the shard's bytes that is communicated
  gather B/row     what gathering the other ranks' logits instead would bring to each rank per row
  per call         bytes of the call's one all_gather (shard sizes, batch sizes, target range and checksum), any rows
  bwd              bytes communicated by the backward (it is local: 0)
A ring all-reduce moves about 2 (p - 1) / p times its payload over each rank's link.
"""

import argparse
import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
               "all_to_all_single", "reduce", "gather", "scatter", "send", "recv", "isend", "irecv")


def _contributed(name, args):
    if name in ("all_gather", "gather"):
        tensor = args[1] if len(args) > 1 else None  # (output list, input)
    elif name in ("all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single"):
        tensor = args[1]
    else:
        tensor = args[0]
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


class CountingCollectives:
    """Wraps torch.distributed's collectives and counts the bytes each call contributes."""

    def __init__(self):
        self.bytes = {}
        self.originals = {}

    def __enter__(self):
        for name in COLLECTIVES:
            if hasattr(dist, name):
                original = self.originals[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(name, original))
        return self

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            self.bytes[name] = self.bytes.get(name, 0) + _contributed(name, args)
            return original(*args, **kwargs)
        return counted

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(dist, name, original)

    def take(self):
        taken, self.bytes = self.bytes, {}
        return taken


def _worker(rank, world, port, configs, results):
    from validated_loss.distributed import bytes_per_row, vocab_parallel_cross_entropy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        for vocab, dtype_name, rows, smoothing in configs:
            dtype = getattr(torch, dtype_name)
            block = torch.arange(vocab).tensor_split(world)[rank]
            classes = block.numel()
            generator = torch.Generator().manual_seed(0)
            shard = torch.randn(rows, classes, generator=generator).to(dtype).requires_grad_()
            # The same target on every rank (drawn from its own generator: the shards differ in size).
            target = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(1))
            with CountingCollectives() as counter:
                loss = vocab_parallel_cross_entropy(shard, target, label_smoothing=smoothing)
                forward = counter.take()
                loss.backward()
                backward = counter.take()
            reduced = forward.pop("all_reduce", 0)
            per_call = forward.pop("all_gather", 0)
            model = bytes_per_row(classes, dtype, label_smoothing=smoothing)
            if rank == 0:
                results.put(dict(vocab=vocab, world=world, dtype=dtype_name, smoothing=smoothing, rows=rows,
                                 classes=classes, logits=model.logits_shard, sent=reduced / rows,
                                 model=model.communicated, gather=(vocab - classes) * shard.element_size(),
                                 per_call=per_call, other=sum(forward.values()), bwd=sum(backward.values())))
    finally:
        # Gloo's worker threads get the GIL first: on torch 2.6 one still dropping the last
        # reference to a Python tensor of a finished collective waits for the GIL, which the
        # destroying thread holds while it joins that worker (a deadlock, about one run in five).
        time.sleep(0.2)
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2, help="processes (ranks), default 2")
    parser.add_argument("--vocab", default="32000,50257,128256", help="vocabulary sizes, comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--smoothing", default="0,0.1", help="label_smoothing values")
    parser.add_argument("--rows", type=int, default=64, help="rows (tokens) per call")
    args = parser.parse_args(argv)
    configs = [(int(v), d, args.rows, float(s)) for v in args.vocab.split(",") for d in args.dtypes.split(",")
               for s in args.smoothing.split(",")]

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, args=(args.world, _free_port(), configs, results), nprocs=args.world,
                       join=True, start_method="spawn")
    rows = [results.get() for _ in configs]

    header = ("| vocab | ranks | dtype | smoothing | shard classes | logits B/row | sent B/row | model B/row "
              "| sent / logits | gather B/row | per call | bwd |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    ok = True
    for r in rows:
        ok &= r["sent"] == r["model"] and r["other"] == 0 and r["bwd"] == 0
        print(f"| {r['vocab']} | {r['world']} | {r['dtype']} | {r['smoothing']:g} | {r['classes']} | {r['logits']} "
              f"| {r['sent']:g} | {r['model']} | {r['sent'] / r['logits']:.2e} | {r['gather']} | {r['per_call']} B "
              f"| {r['bwd']} |")
    print(f"\nmeasured bytes {'match' if ok else 'DO NOT match'} bytes_per_row; "
          f"{args.rows} rows per call, the per-call all_gather is {rows[0]['per_call']} B per rank whatever the rows.")
    if not ok:
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
