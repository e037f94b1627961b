"""LLM-head benchmark: linear + cross-entropy, forward and backward, time and peak memory.

Contenders, each run in a fresh Python process per measurement (so that one contender's memory
high-water mark, allocator state or warmed-up caches never reach another's):
  validated_loss   validated_loss.linear_cross_entropy(x, W, t)   (chunked, automatic chunk size)
  torch chunked    F.linear_cross_entropy(x, W, t, options=torch.nn.LinearCrossEntropyOptions())
  torch unfused    F.cross_entropy(x @ W.T, t)                    (the full logits)
  liger            Liger-Kernel's fused linear cross-entropy, when it is installed (CUDA only)

Each worker creates its inputs in place (no temporaries, so the memory high-water mark equals the
resident size before the call), warms up on a small problem (library initialisation, thread pools,
kernel selection), then times one forward+backward at the full size: a fresh leaf x and W with
no .grad, `loss = f(x, W, t); loss.backward()`, the gradient allocation inside the timing, as in
training. Peak memory on the CPU is the process's resident high-water mark (/proc/self/status
VmHWM, reset with /proc/self/clear_refs just before the call, or ru_maxrss where that reset is
unavailable) minus the resident size just before the call: the memory the call itself needs, its
outputs (the gradients) included. The absolute peak is reported too. On CUDA: peak allocated
bytes beyond those allocated before the call.

Usage (from the repository root):
    PYTHONPATH=. .venv/bin/python benchmarks/llm_head.py                # N=8192, H=1024, V=32000, fp32
    PYTHONPATH=. .venv/bin/python benchmarks/llm_head.py --repeats 5 --dtype bfloat16
Writes llm_head.md and llm_head.json under --out (default benchmarks/results/).
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OURS, TORCH_CHUNKED, UNFUSED, LIGER = "validated_loss", "torch chunked", "torch unfused", "liger"
CONTENDERS = (OURS, TORCH_CHUNKED, UNFUSED, LIGER)
ROOT = Path(__file__).resolve().parent.parent

# Issue 6's target, on the CPU at N=8192, H=1024, V=32000, float32: against torch's chunked path.
TARGET_MEMORY_RATIO = 0.9   # ours / torch chunked, at most
TARGET_SPEEDUP = 1.0        # torch chunked time / ours, at least


# ---------------------------------------------------------------------------------------------
# Worker: one contender, one measurement, in this (fresh) process.



def _ratio(numerator, denominator):
    """'1.23x', or '-' when the denominator measured nothing (tiny shapes)."""
    return f"{numerator / denominator:.2f}x" if denominator else "-"

def _memory_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak():
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _loss_fn(name):
    import torch
    import torch.nn.functional as F

    if name == OURS:
        import validated_loss as vl

        return lambda x, W, t: vl.linear_cross_entropy(x, W, t)
    if name == TORCH_CHUNKED:
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda x, W, t: F.linear_cross_entropy(x, W, t, options=options)
    if name == UNFUSED:
        return lambda x, W, t: F.cross_entropy(x @ W.T, t)
    if name == LIGER:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda x, W, t: liger_fused_linear_cross_entropy(x, W, t)
    raise ValueError(name)


def _inputs(n, h, v, dtype, device, seed):
    """x (n, h), W (v, h) with std 1/sqrt(h) (logits of order 1), targets; created in place."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty(n, h, dtype=dtype, device=device).normal_(generator=g)
    W = torch.empty(v, h, dtype=dtype, device=device).normal_(std=h ** -0.5, generator=g)
    t = torch.randint(0, v, (n,), device=device, generator=g)
    return x, W, t


def worker(args):
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    fn = _loss_fn(args.worker)
    # Warm-up on a small problem: libraries, thread pools, kernel choice.
    xs, Ws, ts = _inputs(256, args.hidden, min(args.vocab, 4096), dtype, device, 1)
    fn(xs.requires_grad_(), Ws.requires_grad_(), ts).backward()
    del xs, Ws, ts
    x, W, t = _inputs(args.tokens, args.hidden, args.vocab, dtype, device, args.seed)
    x.requires_grad_()
    W.requires_grad_()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _memory_status()["VmRSS"]
        reset = _reset_peak()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss = fn(x, W, t)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak_abs = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    elif reset:
        peak_abs = _memory_status()["VmHWM"]
        method = "VmHWM (reset before the call)"
    else:
        peak_abs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = "ru_maxrss"
        if maxrss_before > before:  # an earlier transient peak would hide the call's
            method += " (upper bound of the baseline: pre-call high-water mark above resident size)"
    result = {
        "contender": args.worker,
        "seconds": seconds,
        "peak_extra_bytes": peak_abs - before,
        "peak_bytes": peak_abs,
        "baseline_bytes": before,
        "memory_method": method,
        "loss": float(loss),
        "grad_x_norm": float(x.grad.double().norm()),
        "grad_w_norm": float(W.grad.double().norm()),
    }
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Driver: fresh processes, rotated order, medians, ratios.


def _available(name, device):
    if name == LIGER:
        return device == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    return True


def _run_worker(name, args):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--tokens", str(args.tokens),
           "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--dtype", args.dtype, "--device", args.device,
           "--threads", str(args.threads), "--seed", str(args.seed)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _summary(results):
    by = {}
    for r in results:
        by.setdefault(r["contender"], []).append(r)
    rows = {}
    for name, rs in by.items():
        rows[name] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "seconds_all": [round(r["seconds"], 3) for r in rs],
            "peak_extra_bytes": statistics.median(r["peak_extra_bytes"] for r in rs),
            "peak_bytes": statistics.median(r["peak_bytes"] for r in rs),
            "baseline_bytes": statistics.median(r["baseline_bytes"] for r in rs),
            "loss": rs[0]["loss"],
            "grad_x_norm": rs[0]["grad_x_norm"],
            "grad_w_norm": rs[0]["grad_w_norm"],
            "memory_method": rs[0]["memory_method"],
        }
    return rows


def _mib(b):
    return f"{b / 2**20:,.0f}"


def _report(rows, args):
    ref = rows.get(TORCH_CHUNKED)
    lines = [f"LLM head, {args.device}, N={args.tokens} tokens, hidden {args.hidden}, vocab {args.vocab}, "
             f"{args.dtype}, forward+backward, {args.threads} threads, median of {args.repeats} fresh processes "
             "per contender",
             "",
             "| contender | time (s) | speedup vs torch chunked | peak extra (MiB) | vs torch chunked "
             "| peak RSS (MiB) | vs torch chunked | loss | grad W norm |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in CONTENDERS:
        if name not in rows:
            continue
        r = rows[name]
        speed = _ratio(ref["seconds"], r["seconds"]) if ref else "-"
        mem = _ratio(r["peak_extra_bytes"], ref["peak_extra_bytes"]) if ref else "-"
        absolute = _ratio(r["peak_bytes"], ref["peak_bytes"]) if ref else "-"
        lines.append(f"| {name} | {r['seconds']:.2f} | {speed} | {_mib(r['peak_extra_bytes'])} | {mem} | "
                     f"{_mib(r['peak_bytes'])} | {absolute} | {r['loss']:.6f} | {r['grad_w_norm']:.6g} |")
    lines += ["", f"peak extra = peak resident memory during the call minus the resident size just before it "
                  f"({rows[next(iter(rows))]['memory_method']}); peak RSS = the process's absolute peak "
                  "(torch and the contender's own libraries included)."]
    verdict = None
    if ref and OURS in rows:
        ours = rows[OURS]
        # A tiny shape can allocate nothing measurable: no ratio then (inf), never a crash.
        mem_ratio = ours["peak_extra_bytes"] / ref["peak_extra_bytes"] if ref["peak_extra_bytes"] else float("inf")
        abs_ratio = ours["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("inf")
        speedup = ref["seconds"] / ours["seconds"]
        verdict = {
            "memory_ratio": mem_ratio, "absolute_memory_ratio": abs_ratio, "speedup": speedup,
            "memory_target": TARGET_MEMORY_RATIO, "speed_target": TARGET_SPEEDUP,
            "memory_met": mem_ratio <= TARGET_MEMORY_RATIO, "absolute_memory_met": abs_ratio <= TARGET_MEMORY_RATIO,
            "speed_met": speedup >= TARGET_SPEEDUP,
        }
        ok = lambda b: "met" if b else "MISSED"  # noqa: E731
        lines += ["", f"Issue 6 target (vs torch chunked): peak memory <= {TARGET_MEMORY_RATIO}x: "
                      f"{mem_ratio:.2f}x extra ({ok(verdict['memory_met'])}), {abs_ratio:.2f}x absolute "
                      f"({ok(verdict['absolute_memory_met'])}); speed >= {TARGET_SPEEDUP}x: {speedup:.2f}x "
                      f"({ok(verdict['speed_met'])})"]
        rel = abs(ours["loss"] - ref["loss"]) / abs(ref["loss"])
        relg = abs(ours["grad_w_norm"] - ref["grad_w_norm"]) / ref["grad_w_norm"]
        lines.append(f"Agreement with torch chunked: loss rel. diff {rel:.1e}, |grad W| rel. diff {relg:.1e}")
    return "\n".join(lines), verdict


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch

    if not hasattr(torch.nn.functional, "linear_cross_entropy"):  # every number is relative to it
        sys.exit(f"llm_head.py measures against torch's chunked F.linear_cross_entropy, which torch "
                 f"{torch.__version__} lacks (torch 2.13 added it)")
    names = [n for n in args.contenders.split(",") if n]
    skipped = [n for n in names if not _available(n, args.device)]
    names = [n for n in names if n not in skipped]
    for n in skipped:
        print(f"skipping {n}: not available on {args.device} here")
    results = []
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: drift hits all alike
        for name in order:
            r = _run_worker(name, args)
            print(f"round {rep + 1}/{args.repeats} {name:15s} {r['seconds']:8.2f} s  "
                  f"peak extra {_mib(r['peak_extra_bytes'])} MiB  peak {_mib(r['peak_bytes'])} MiB", flush=True)
            results.append(r)
    rows = _summary(results)
    text, verdict = _report(rows, args)
    print()
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_head.md").write_text(text + "\n")
    config = {k: v for k, v in vars(args).items() if k != "worker"}
    (out / "llm_head.json").write_text(json.dumps({"config": config, "skipped": skipped, "rows": rows,
                                                   "runs": results, "verdict": verdict}, indent=2))


if __name__ == "__main__":
    main()
