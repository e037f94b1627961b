"""A small grid through every CUDA kernel of validated_loss, for compute-sanitizer (make gpu-check).

    compute-sanitizer --tool memcheck --kernel-name kns=validated_loss python scripts/gpu_check_kernels.py

Forward and backward for class-index and probability targets over row lengths that take each row
mapping (team of lanes, block per row) and their tails, float32 and bfloat16, contiguous, offset
and strided layouts, weights, ignore_index and label smoothing, a bad target under each validate
mode, check_finite, in-place backward, z-loss / softcap / return_lse and the linear head's chunk
step. It checks nothing but that every call returns (tests/test_cuda.py compares the numbers); the
sanitizer is the judge. `--device cpu` runs the same calls on the CPU (the script's own test).
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tests/cuda_grid.py: the GPU tests' shapes and layouts
sys.path.insert(1, ROOT)

import torch  # noqa: E402

import validated_loss as vl  # noqa: E402
from validated_loss import _library  # noqa: E402

SHAPES = ["tiny", "c1", "c33", "c1025", "c4097", "c32771", "nchw", "bvt"]
SMALL_SHAPES = ["tiny", "c33", "c4097", "nchw", "bvt"]


def grid_module():
    import cuda_grid  # imports tests/conftest.py (pytest): present wherever the tests run

    return cuda_grid


def run(device, small):
    grid = grid_module()
    shapes = SMALL_SHAPES if small else SHAPES
    dtypes = ["f32", "bf16"]
    calls = 0

    def step(loss, *leaves):
        nonlocal calls
        calls += 1
        if loss.requires_grad:
            torch.autograd.grad(loss.float().nansum(), [v for v in leaves if v is not None and v.requires_grad])

    for shape in shapes:
        n, c, extra = grid.SHAPES[shape]
        for dtype in dtypes:
            for lay in grid.layouts_for(shape, 2 + len(extra))[: 2 if small else 3]:
                for option in ("plain", "all"):
                    o = grid.OPTIONS[option]
                    x, t, w = grid.make_inputs(shape, grid.DTYPES[dtype], lay, weighted=o["weighted"],
                                               ignore=o["ignore"], seed=calls, device=device)
                    x = x.detach().requires_grad_()
                    for reduction in ("mean", "none"):
                        step(vl.cross_entropy(x, t, w, reduction=reduction, **o["kwargs"]), x)
            # probability targets (their own kernels), gradient to the target too
            g = grid.seeded(calls)
            x = torch.randn((n, c, *extra), generator=g).to(grid.DTYPES[dtype]).to(device).requires_grad_()
            q = torch.softmax(torch.randn((n, c, *extra), generator=g), 1).to(grid.DTYPES[dtype]).to(device)
            q.requires_grad_()
            step(vl.cross_entropy(x, q, label_smoothing=0.1), x, q)
            # in-place backward: the backward kernel writing over the logits
            logits = x.detach().clone().requires_grad_().clone()
            t = torch.randint(0, c, (n, *extra), generator=g).to(device)
            step(vl.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=True), logits)
        # LLM options
        if not extra:
            x = (torch.randn(n, c, generator=grid.seeded(1)) * 4).to(device).requires_grad_()
            t = torch.randint(0, c, (n,), generator=grid.seeded(2)).to(device)
            loss, lse = vl.cross_entropy(x, t, lse_square_scale=0.01, softcap=5.0, return_lse=True)
            step(loss + 0.5 * lse.sum(), x)

    # float64 (its own weight-sum kernel)
    x = torch.randn(37, 1000, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.randint(0, 1000, (37,), device=device)
    step(vl.cross_entropy(x, t, torch.rand(1000, dtype=torch.float64, device=device) + 0.5, label_smoothing=0.1), x)

    # the linear head's chunk step
    x = torch.randn(300, 64, device=device, requires_grad=True)
    W = (torch.randn(5000, 64, device=device) * 0.1).requires_grad_()
    t = torch.randint(0, 5000, (300,), device=device)
    t[::7] = -100
    step(vl.linear_cross_entropy(x, W, t, chunk_size=64), x, W)

    # a bad target under each mode: NaN row, zero gradient, the status record; never a device assert
    raised = 0
    x = torch.randn(300, 4097, device=device, requires_grad=True)
    bad = torch.randint(0, 4097, (300,), device=device)
    bad[7], bad[250] = 4097, -5
    raises_at_once = device == "cpu" and not _library.EMULATED_CUDA  # the CPU kernels raise in every mode
    if not raises_at_once:
        step(vl.cross_entropy(x, bad, reduction="none", validate="off"), x)
    for validate in ("sync", "deferred"):
        try:
            vl.cross_entropy(x, bad, validate=validate)
            if device != "cpu":
                torch.cuda.synchronize()
            vl.check_deferred()
        except vl.TargetOutOfRangeError:
            raised += 1
    y = x.detach().clone()
    y[40, 5] = float("nan")
    try:
        vl.cross_entropy(y, bad.clamp(0, 4096), check_finite=True)
    except vl.NonFiniteLogitsError:
        raised += 1
    if device != "cpu":
        torch.cuda.synchronize()
    if raised != 3:
        raise SystemExit(f"gpu_check_kernels: expected 3 validation errors, got {raised}")
    return calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="default cuda; cpu runs the same calls on the CPU")
    p.add_argument("--small", action="store_true", help="fewer shapes and layouts (FAST=1)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    calls = run(args.device, args.small)
    print(f"gpu_check_kernels: {calls} loss calls (forward and backward) and 3 validation errors on {args.device} "
          f"in {time.perf_counter() - start:.1f} s")
    if _library.EMULATED_CUDA:  # the CUDA kernels executed on the CPU: which ran, how often
        print(f"emulated CUDA kernel launches: {torch.ops.validated_loss_emu.launch_counts()}")


if __name__ == "__main__":
    main()
