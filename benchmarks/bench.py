"""Is validated_loss faster than torch here, and by how much? `make bench` (quick) / `make bench-full`.

Runs validated_loss.cross_entropy, torch eager F.cross_entropy and torch.compile(F.cross_entropy)
(plus Liger-Kernel's and flash-attn's cross-entropy on CUDA, when importable) side by side in one
process, interleaved round-robin, forward alone and forward+backward, and reports medians, speedups,
the bytes autograd keeps for backward, and bandwidth against a copy of the logits timed in the
same run. Writes bench.md/.csv/.json/.png under --out. See benchmarks/README.md.

    PYTHONPATH=. python benchmarks/bench.py [--full] [--shapes 4096,32000;512,10] [--dtypes float32,bfloat16]
                                            [--repeats 15] [--warmup 3] [--out benchmarks/results]
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the helper modules beside this file
sys.path.insert(1, os.path.dirname(HERE))  # the repository, for an in-place build of validated_loss

# Inductor compiles in this process rather than in a pool of worker processes that would stay
# alive beside the timed code on a 2-core machine.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import harness  # noqa: E402
import report  # noqa: E402
import small_calls  # noqa: E402

# (name, N, C): the shapes issue 5 names.
PRESETS = [
    ("small-class", 262144, 10),
    ("ImageNet-like", 65536, 1000),
    ("LLM 32k vocab", 4096, 32000),
    ("LLM 128k vocab", 4096, 128256),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# The default run: exactly the shapes and dtypes issue 5 sets targets for, within ~8 minutes on
# a 2-core CPU. --full adds bf16 everywhere and the 128k vocabulary.
QUICK = [(262144, 10, "float32"), (65536, 1000, "float32"), (4096, 32000, "float32"), (4096, 32000, "bfloat16")]
# Logits-sized buffers alive at once at the worst moment (torch eager's fwd+bwd keeps the logits, its
# log-softmax, two gradients; plus the copy ceiling's destination), and some slack.
MEMORY_FACTOR = 7


def parse_shapes(text):
    shapes = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            n, c = (int(v) for v in part.lower().replace("x", ",").split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a shape is N,C (e.g. 4096,32000), got {part!r}") from None
        if n <= 0 or c <= 0:
            raise argparse.ArgumentTypeError(f"N and C must be positive, got {part!r}")
        shapes.append((n, c))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def parse_dtypes(text):
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DTYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"dtypes are among {sorted(DTYPES)}, got {text!r}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--full", action="store_true", help="every preset shape in float32 and bfloat16, incl. 4096x128256")
    p.add_argument("--shapes", type=parse_shapes, help="custom shapes 'N,C;N,C' (replace the presets)")
    p.add_argument("--dtypes", type=parse_dtypes, help="comma-separated, e.g. float32,bfloat16")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per shape (default 15)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed rounds first (default 3: a 2-vCPU guest speeds up over its first rounds)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder (default benchmarks/results)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=harness.usable_cores(), help="torch threads (default: the cores)")
    p.add_argument("--contenders", help="comma-separated subset, e.g. 'validated_loss,torch eager'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_small_call_args(p)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def plan(args):
    """[(N, C, dtype name)] in the order they run."""
    if args.shapes:
        return [(n, c, d) for n, c in args.shapes for d in (args.dtypes or ["float32", "bfloat16"])]
    if args.full or args.dtypes:
        return [(n, c, d) for _, n, c in PRESETS for d in (args.dtypes or ["float32", "bfloat16"])]
    return list(QUICK)


def pick_device(choice):
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    facts = harness.machine_facts(device)
    before = harness.cpu_snapshot()
    time.sleep(1.0)
    busy = harness.others_cpu_share(before, harness.cpu_snapshot(), facts["cores"])
    facts["other_processes_cpu_share_before"] = None if busy is None else round(busy, 3)
    if busy is not None and busy > 0.05:
        print(f"warning: other processes are using {100 * busy:.0f}% of the CPUs; they will skew the timings",
              file=sys.stderr)
    wanted = {w.strip() for w in args.contenders.split(",")} if args.contenders else None
    contenders = harness.make_contenders(device, wanted)
    if not contenders:
        sys.exit(f"no contender matches --contenders {args.contenders!r}")
    tasks_per_round = sum(len(c.passes) for c in contenders) + 2  # + the two copies
    groups = plan(args)
    steps = len(groups) * (len(contenders) + (args.warmup + args.repeats) * tasks_per_round)

    rows, ceilings, skipped = [], [], []
    started = time.perf_counter()
    snapshot = harness.cpu_snapshot()
    bar = tqdm(total=steps, disable=args.no_progress, unit="run", dynamic_ncols=True, file=sys.stderr)
    for n, c, dtype_name in groups:
        dtype = DTYPES[dtype_name]
        elem = torch.empty((), dtype=dtype).element_size()
        need, have = MEMORY_FACTOR * n * c * elem, harness.available_memory_bytes(device)
        if have is not None and need > have:
            skipped.append({"shape": f"{n}x{c}", "dtype": dtype_name,
                            "reason": f"needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"})
            bar.update(len(contenders) + (args.warmup + args.repeats) * tasks_per_round)
            continue
        label = f"{n}x{c} {dtype_name}"
        bar.set_description(label)
        x, y = harness.make_inputs(n, c, dtype, device)
        group = harness.make_contenders(device, wanted)  # a fresh torch.compile for this shape

        def step(what):
            bar.set_postfix_str(what, refresh=False)
            bar.update(1)

        measured = harness.measure_group(x, y, group, args.repeats, args.warmup, device, step)
        rows += report.build_rows(measured, group, n, c, dtype_name, elem, device.type)
        logits_bytes = n * c * elem
        ceiling = {"shape": f"{n}x{c}", "dtype": dtype_name, "logits_bytes": logits_bytes,
                   "compile_seconds": round(measured.compile_seconds, 2)}
        for key, name in ((harness.COPY, "copy"), (harness.FRESH_COPY, "fresh_copy")):
            ms = harness.median_ms(measured.times[(key, "copy")])
            ceiling[f"{name}_ms"] = report.sig(ms)
            ceiling[f"{name}_gb_per_s"] = report.sig(2 * logits_bytes / (ms * 1e-3) / 1e9)
        ceilings.append(ceiling)
        del x, y, measured, group
    bar.close()

    elapsed = time.perf_counter() - started
    facts["load_average_at_end"] = harness.load_average()
    share = harness.others_cpu_share(snapshot, harness.cpu_snapshot(), facts["cores"])
    facts["other_processes_cpu_share"] = None if share is None else round(share, 3)
    config = {"argv": sys.argv[1:] if argv is None else list(argv), "repeats": args.repeats, "warmup": args.warmup,
              "threads": args.threads, "groups": [f"{n}x{c} {d}" for n, c, d in groups], "skipped": skipped,
              "contenders": [c.name for c in contenders], "seconds": round(elapsed, 1),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    verdicts = report.target_verdicts(rows) if device.type == "cpu" else []
    if not rows:
        sys.exit("nothing was measured: " + "; ".join(f"{s['shape']} {s['dtype']}: {s['reason']}" for s in skipped))
    paths, table = report.write_all(rows, facts, config, verdicts, ceilings, args.out)

    print()
    print(table)
    print()
    for ceil in ceilings:
        print(f"copy ceiling {ceil['shape']} {ceil['dtype']}: {ceil['copy_gb_per_s']:.1f} GB/s "
              f"(into a fresh buffer: {ceil['fresh_copy_gb_per_s']:.1f} GB/s)")
    for s in skipped:
        print(f"skipped {s['shape']} {s['dtype']}: {s['reason']}")
    if verdicts:
        print(report.verdict_lines(verdicts))
    finite_lines = check_finite_lines(check_finite_ratios(rows))
    if finite_lines:
        print(finite_lines)
        with open(paths["md"], "a") as f:
            f.write("\n" + finite_lines + "\n")
    if share is not None and share > 0.05:
        print(f"warning: other processes used {100 * share:.0f}% of the CPUs during this run; its timings are "
              "disturbed (multi-threaded contenders suffer most). Run again on a quiet machine.")
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; wrote {', '.join(paths.values())}")
    run_small_calls(args, device)
    return rows


# ---- small calls and import (issue 16, part 3): benchmarks/small_calls.py -------------------------


def add_small_call_args(p):
    p.add_argument("--no-small-calls", action="store_true",
                   help="skip the small-call shapes (8x10 ... 1024x1000, one thread) and the import time")


def run_small_calls(args, device):
    """Per-call microseconds at the small shapes against torch eager, and import time (CPU runs)."""
    if args.no_small_calls or device.type != "cpu":
        return None
    print()
    text = small_calls.run(args.out, rounds=args.repeats, warmup=args.warmup, import_repeats=min(3, args.repeats))
    print(text)
    print(f"wrote {os.path.join(args.out, 'small_calls.md')}, {os.path.join(args.out, 'small_calls.json')}")
    return text


# ---------------------------------------------------------------------------------------------
# check_finite's cost (issue 16, part 2): the [check_finite] rows against the plain validated_loss
# rows of the same run, same rounds (interleaved), as ratios. Target: at most 1.1x, fwd and fwd+bwd.

CHECK_FINITE = f"{harness.OURS} [check_finite]"
CHECK_FINITE_TARGET = 1.1


def check_finite_ratios(rows):
    """[{shape, dtype, pass, ratio (of medians), ratio_min (of minima), met}] per shape/dtype/pass."""
    plain = {(r["shape"], r["dtype"], r["pass"]): r for r in rows if r["contender"] == harness.OURS}
    out = []
    for r in rows:
        base = plain.get((r["shape"], r["dtype"], r["pass"]))
        if r["contender"] != CHECK_FINITE or base is None:
            continue
        ratio = r["ms"] / base["ms"]
        out.append({"shape": r["shape"], "dtype": r["dtype"], "pass": r["pass"], "ms": r["ms"], "plain_ms": base["ms"],
                    "ratio": report.sig(ratio), "ratio_min": report.sig(r["ms_min"] / base["ms_min"]),
                    "met": bool(ratio <= CHECK_FINITE_TARGET)})
    return out


def check_finite_lines(ratios):
    if not ratios:
        return ""
    lines = [f"check_finite=True against the plain {harness.OURS} rows of this run (target <= {CHECK_FINITE_TARGET}x; "
             "ratio of medians, of minima in brackets):"]
    for c in ratios:
        lines.append(f"  {c['shape']:>12} {c['dtype']:<9} {c['pass']:<8} {c['ms']:8.2f} ms vs {c['plain_ms']:8.2f} ms: "
                     f"{c['ratio']:.3f}x ({c['ratio_min']:.3f}x) {'met' if c['met'] else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
