"""Small calls and import (issue 16, part 3): what one loss call costs when the logits are small.

bench.py runs this after its large shapes: per-call microseconds at 8x10, 64x10, 128x1000 and
1024x1000 (float32, int64 targets, default options), one torch thread, validated_loss against torch
eager `F.cross_entropy` in the same process, the two alternating call by call block by block, the
best block of each kept (a 2-core shared guest: the minimum is the least disturbed); then the time
`import validated_loss` adds to `import torch`, in fresh interpreters. The targets are issue 16's.
"""

import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(8, 10), (64, 10), (128, 1000), (1024, 1000)]
# Calls per timed block, so that a block takes a few milliseconds at every shape.
CALLS = {(8, 10): 400, (64, 10): 400, (128, 1000): 60, (1024, 1000): 8}
IMPORT_LIMIT_S = 0.15  # issue 16: import validated_loss adds at most this to import torch


def _block_us(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def _passes(loss, x, y):
    def fwd_bwd():
        leaf = x.detach().requires_grad_()  # a fresh leaf, .grad unset: a training step's loss
        loss(leaf, y).backward()

    def fwd():
        loss(x, y)  # logits that need no gradient: an evaluation loss

    return {"fwd+bwd": fwd_bwd, "fwd": fwd}


def measure(shapes=SHAPES, rounds=15, warmup=3):
    """[{shape, pass, validated_loss_us, torch_us, ratio}], ratio = validated_loss / torch (< 1: faster)."""
    import validated_loss as vl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    rows = []
    try:
        for n, c in shapes:
            gen = torch.Generator().manual_seed(n * 1000 + c)
            x = torch.randn(n, c, generator=gen)
            y = torch.randint(0, c, (n,), generator=gen)
            calls = CALLS.get((n, c), max(4, 40000 // max(1, n * c // 100)))
            ours, theirs = _passes(vl.cross_entropy, x, y), _passes(F.cross_entropy, x, y)
            for name in ours:
                best = {"validated_loss": float("inf"), "torch": float("inf")}
                for i in range(warmup + rounds):
                    order = [("validated_loss", ours[name]), ("torch", theirs[name])]
                    for who, fn in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
                        us = _block_us(fn, calls)
                        if i >= warmup:
                            best[who] = min(best[who], us)
                rows.append({"shape": f"{n}x{c}", "pass": name, "validated_loss_us": round(best["validated_loss"], 2),
                             "torch_us": round(best["torch"], 2),
                             "ratio": round(best["validated_loss"] / best["torch"], 3)})
    finally:
        torch.set_num_threads(threads)
        if gc_was_enabled:
            gc.enable()
    return rows


_IMPORT_CODE = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
                "import validated_loss; t2 = time.perf_counter(); print(t1 - t0, t2 - t1)")


def import_seconds(repeats=3):
    """(import torch, what import validated_loss adds), seconds, best of `repeats` fresh interpreters."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    best = (float("inf"), float("inf"))
    for _ in range(max(1, repeats)):
        out = subprocess.run([sys.executable, "-c", _IMPORT_CODE], capture_output=True, text=True, check=True,
                             env=env, cwd=repo)
        torch_s, ours_s = (float(v) for v in out.stdout.split())
        best = (min(best[0], torch_s), min(best[1], ours_s))
    return {"import_torch_s": round(best[0], 3), "import_validated_loss_adds_s": round(best[1], 3)}


def verdicts(rows, imports):
    """Issue 16's targets, one line each: (met?, text)."""
    by = {(r["shape"], r["pass"]): r["ratio"] for r in rows}
    lines = []
    for shape in ("8x10", "64x10"):
        if (shape, "fwd+bwd") in by:
            ratio = by[(shape, "fwd+bwd")]
            lines.append((ratio <= 1.5, f"fwd+bwd {shape}: {ratio:.2f}x torch's time (target: at most 1.5x)"))
    for shape in ("128x1000", "1024x1000"):
        if (shape, "fwd+bwd") in by:
            ratio = by[(shape, "fwd+bwd")]
            lines.append((ratio < 1.0, f"fwd+bwd {shape}: {ratio:.2f}x torch's time (target: faster than torch)"))
    if imports:
        added = imports["import_validated_loss_adds_s"]
        lines.append((added <= IMPORT_LIMIT_S, f"import validated_loss adds {added:.3f} s to import torch's "
                      f"{imports['import_torch_s']:.3f} s (target: at most {IMPORT_LIMIT_S} s)"))
    return lines


def markdown(rows, imports):
    out = ["Small calls (float32, int64 targets, default options, torch.set_num_threads(1); best of the timed "
           "blocks, validated_loss and torch alternating):", "",
           "| shape | pass | validated_loss us | torch eager us | ratio (vl / torch) |", "|---|---|--:|--:|--:|"]
    out += [f"| {r['shape']} | {r['pass']} | {r['validated_loss_us']:.1f} | {r['torch_us']:.1f} | {r['ratio']:.2f}x |"
            for r in rows]
    out.append("")
    out += [f"{'met' if met else 'MISSED'}: {text}" for met, text in verdicts(rows, imports)]
    return "\n".join(out)


def run(out_dir, rounds=15, warmup=3, import_repeats=3, shapes=SHAPES):
    """Measure, write small_calls.md/.json under out_dir, return the markdown."""
    rows = measure(shapes, rounds, warmup)
    imports = import_seconds(import_repeats) if import_repeats else None
    text = markdown(rows, imports)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "small_calls.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "small_calls.json"), "w") as f:
        json.dump({"rows": rows, "imports": imports, "threads": 1, "rounds": rounds, "warmup": warmup,
                   "targets": [{"met": met, "text": t} for met, t in verdicts(rows, imports)]}, f, indent=2)
    return text


if __name__ == "__main__":  # PYTHONPATH=. python benchmarks/small_calls.py: this section alone
    print(run(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
