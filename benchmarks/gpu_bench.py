"""The GPU benchmark of make gpu-check: validated_loss against torch eager, torch.compile and (when
importable) Liger-Kernel's and flash-attn's cross-entropy, forward and forward+backward, timed with
CUDA events, with bandwidth as a fraction of a device-to-device copy of the same bytes timed in the
same rounds, and the bytes per logit element that this time is worth at copy speed.

    PYTHONPATH=. python benchmarks/gpu_bench.py [--fast] [--shapes '8192x128256:bfloat16;8x32000x128:float32']
                                                [--repeats 10] [--warmup 2] [--out build/gpu-check]

The contenders, the saved-bytes probe, the bytes model and the report (md table, csv, json, png) are
benchmarks/harness.py's and report.py's, as `make bench` uses them; what is new here is the timing
(CUDA events around each call, L2 flushed before it), shapes with more than two dimensions
(class dimension strided: (N, C, d..)), a time budget, and files written after every shape so a
run stopped early keeps what it measured. `--device cpu` runs the same code with wall-clock timing
(the CPU test of this script). See benchmarks/README.md.
"""

import argparse
import csv
import gc
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # harness.py, report.py
sys.path.insert(1, os.path.dirname(HERE))  # the repository, for the in-place build

import torch  # noqa: E402

import harness  # noqa: E402
import report  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

# (logits shape, dtype). The first four are bench.py's QUICK preset (issue 5's shapes; a test keeps
# them equal), then an LLM vocabulary, a class dimension that is not innermost ((batch, vocab, seq):
# every class is `seq` elements from the next), NCHW segmentation (Cityscapes-sized: 19 classes,
# 512 x 1024 pixels), and last the largest (8 GiB of logits, 2^32 elements: a contender that
# breaks there, e.g. with 32-bit offsets, takes the process down after everything else is on file).
SHAPES = [
    ((262144, 10), "float32"),
    ((65536, 1000), "float32"),
    ((4096, 32000), "float32"),
    ((4096, 32000), "bfloat16"),
    ((8192, 128256), "bfloat16"),
    ((8, 32000, 128), "bfloat16"),
    ((8, 19, 512, 1024), "float32"),
    ((16384, 256000), "bfloat16"),
]
# Contenders that take (N, C) logits only.
TWO_D_ONLY = ("liger-kernel", "flash-attn")
# Logits-sized buffers alive at once at the worst moment (bench.py's MEMORY_FACTOR): torch eager's
# fwd+bwd holds the logits, its log-softmax and two gradients, plus the copy's destination.
MEMORY_FACTOR = 7
L2_FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 cache (H100: 50 MiB)


def shape_label(shape):
    return "x".join(str(d) for d in shape)


def parse_shapes(text):
    """'N,C:dtype;N,C,d:dtype' (x or , between sizes; dtype defaults to bfloat16)."""
    out = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        dims, _, dtype = part.partition(":")
        dtype = dtype or "bfloat16"
        try:
            shape = tuple(int(v) for v in dims.lower().replace("x", ",").split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a shape is N,C[,d..][:dtype], got {part!r}") from None
        if len(shape) < 2 or min(shape) <= 0 or dtype not in DTYPES:
            raise argparse.ArgumentTypeError(f"a shape is N,C[,d..][:dtype] with positive sizes and dtype among "
                                             f"{sorted(DTYPES)}, got {part!r}")
        out.append((shape, dtype))
    if not out:
        raise argparse.ArgumentTypeError("no shapes given")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="the first shape only, fewer rounds")
    p.add_argument("--shapes", type=parse_shapes, help="replace the shapes: 'N,C:dtype;N,C,d:dtype'")
    p.add_argument("--repeats", type=int, help="timed rounds per shape (default 10, --fast 5)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 2, --fast 1)")
    p.add_argument("--out", default=os.path.join("build", "gpu-check"), help="results folder")
    p.add_argument("--stem", default="gpu_bench", help="file names: STEM.md/.csv/.json/.png")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: no new shape is started once a shape would likely overrun it")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--contenders", help="comma-separated subset, e.g. 'validated_loss,torch eager'")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (5 if args.fast else 10)
    args.warmup = 1 if args.fast and args.warmup is None else (2 if args.warmup is None else args.warmup)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def plan(args):
    shapes = args.shapes or SHAPES
    return shapes[:1] if args.fast and not args.shapes else list(shapes)


# ---------------------------------------------------------------------------------------------
# Timing


class Timer:
    """Seconds of one call: CUDA events around it on the current stream, the L2 cache flushed (and
    the device idle) before it, so each call reads its inputs from memory and pays its own launch
    gaps; on the CPU, wall-clock time."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn):
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        self.flush.zero_()
        torch.cuda.synchronize()
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) * 1e-3


def make_inputs(shape, dtype, device, seed=0):
    """Logits of `shape` (class dimension 1) and class-index targets, made on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=DTYPES[dtype], device=device)
    y = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=gen, device=device)
    return x, y


def one_call(contender, x, y, pass_name, timer):
    """harness._run_once's two passes, timed by `timer`: fwd on logits that need no gradient; fwd+bwd
    on a fresh leaf whose .grad is unset, so the gradient's allocation is inside, as in training."""
    if contender.clobbers_input:
        x = x.clone()  # untimed: the shared logits stay intact for the others
    if pass_name == "fwd":
        with torch.no_grad():
            return timer(lambda: contender.fn(x, y))
    leaf = x.detach().requires_grad_()
    seconds = timer(lambda: contender.fn(leaf, y).backward())
    leaf.grad = None
    return seconds


def measure(x, y, contenders, repeats, warmup, device, timer, note):
    """harness.measure_group's round-robin (every task once per round, the first task rotating),
    timed by `timer`. A contender that raises on its first call is dropped with the reason."""
    m = harness.Measured()
    ready = []
    for c in contenders:
        start = time.perf_counter()
        try:
            with torch.no_grad():
                c.fn(x.clone() if c.clobbers_input else x, y)  # compiles torch.compile's inference graph
            m.saved_bytes[c.name], m.peak_bytes[(c.name, "fwd+bwd")] = harness.probe_autograd(c, x, y, device)
            with torch.no_grad():
                m.peak_bytes[(c.name, "fwd")] = harness.forward_peak(c, x, y, device)
        except Exception as error:  # noqa: BLE001 (an optional contender failing is a result, not a crash)
            note(c.name, f"raised {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
            continue
        if c.name == harness.COMPILE:
            m.compile_seconds = time.perf_counter() - start
        ready.append(c)
    dst = torch.empty_like(x).copy_(x)
    copies = {harness.COPY: lambda: dst.copy_(x), harness.FRESH_COPY: lambda: x.clone()}
    tasks = [(c, p) for c in ready for p in c.passes] + [(name, "copy") for name in copies]
    gc.collect()
    gc.disable()
    try:
        for rnd in range(warmup + repeats):
            shift = rnd % len(tasks)
            for contender, pass_name in tasks[shift:] + tasks[:shift]:
                if isinstance(contender, str):
                    key, seconds = (contender, "copy"), timer(copies[contender])
                else:
                    key = (contender.name, pass_name)
                    with torch.set_grad_enabled(pass_name != "fwd"):
                        seconds = one_call(contender, x, y, pass_name, timer)
                if rnd >= warmup:
                    m.times.setdefault(key, []).append(seconds)
            gc.collect()
    finally:
        gc.enable()
    dst = None  # frees the copy's destination (the copy lambdas are not called again)
    return m, ready


# ---------------------------------------------------------------------------------------------
# Rows and files

EXTRA_COLUMNS = ["model_bytes_per_elem", "copy_equiv_bytes_per_elem"]


def add_bytes_per_element(rows, numel):
    """Two per-element figures for each row. model: the bytes report.py's model counts (1 read fwd,
    2 reads + 1 write fwd+bwd) per logit element. copy-equivalent: the bytes a device-to-device copy
    moves in the row's time, per logit element (time x copy bandwidth / elements): the traffic the
    call is worth at copy speed, which is its real traffic when it is memory-bound (validated_loss's
    goal in bfloat16 fwd+bwd: 6; torch eager's kernels move about 18)."""
    for r in rows:
        r["model_bytes_per_elem"] = report.sig(r["bytes_moved"] / numel)
        r["copy_equiv_bytes_per_elem"] = report.sig(r["ms"] * 1e-3 * r["copy_gb_per_s"] * 1e9 / numel)
    return rows


def bytes_table(rows):
    """Markdown: copy-equivalent bytes per logit element, shapes x contenders, per pass."""
    names = list(dict.fromkeys(r["contender"] for r in rows))
    groups = list(dict.fromkeys((r["shape"], r["dtype"], r["pass"]) for r in rows))
    lines = ["| shape | dtype | pass | " + " | ".join(names) + " |", "|---|---|---|" + "--:|" * len(names)]
    for shape, dtype, pass_name in groups:
        cells = []
        for name in names:
            key = (shape, dtype, pass_name, name)
            found = [r for r in rows if (r["shape"], r["dtype"], r["pass"], r["contender"]) == key]
            cells.append(f"{found[0]['copy_equiv_bytes_per_elem']:.1f}" if found else "–")
        lines.append(f"| {shape} | {dtype} | {pass_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_files(rows, facts, config, ceilings, out, stem):
    """report.py's md table, csv, json and png, plus the bytes-per-element table; the png is skipped
    (and said so) where matplotlib is not installed."""
    os.makedirs(out, exist_ok=True)
    facts["load_average_at_end"] = harness.load_average()
    paths = {ext: os.path.join(out, f"{stem}.{ext}") for ext in ("md", "csv", "json", "png")}
    table = report.markdown_table(rows, facts) if rows else "(no rows measured)"
    lines = [table, "", "Copy-equivalent bytes per logit element (time x copy bandwidth / elements; the model's "
             "minimum is 1 x element size for fwd and 3 x for fwd+bwd):", "", bytes_table(rows) if rows else "", ""]
    for ceil in ceilings:
        lines.append(f"copy ceiling {ceil['shape']} {ceil['dtype']}: {ceil['copy_gb_per_s']:.4g} GB/s "
                     f"(into a fresh buffer: {ceil['fresh_copy_gb_per_s']:.4g} GB/s)")
    for s in config["skipped"]:
        lines.append(f"skipped {s['what']}: {s['reason']}")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=report.COLUMNS + EXTRA_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in report.COLUMNS + EXTRA_COLUMNS})
    report.write_json({"machine": facts, "config": config, "bytes_model": {
        "fwd": "1 read of the logits", "fwd+bwd": "2 reads of the logits + 1 write of the gradient",
        "copy": "dst.copy_(src) of the logits: 1 read + 1 write",
        "copy_equiv_bytes_per_elem": "time x copy bandwidth / logit elements"},
        "ceilings": ceilings, "rows": rows}, paths["json"])
    try:
        if rows:
            report.write_plot(rows, paths["png"])
        else:
            paths.pop("png")
    except ImportError:
        paths.pop("png")
        config.setdefault("notes", []).append("no png: matplotlib is not installed")
    return paths


def gpu_facts(device):
    facts = harness.machine_facts(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu_capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     gpu_count=torch.cuda.device_count())
    facts["timing"] = ("CUDA events around each call, the device idle and its L2 cache flushed before it"
                       if device.type == "cuda" else "wall clock")
    return facts


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device, torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    started = time.perf_counter()
    deadline = None if args.time_budget is None else started + args.time_budget
    facts = gpu_facts(device)
    wanted = {w.strip() for w in args.contenders.split(",")} if args.contenders else None
    timer = Timer(device)
    rows, ceilings, skipped = [], [], []
    groups = plan(args)
    config = {"argv": sys.argv[1:] if argv is None else list(argv), "repeats": args.repeats, "warmup": args.warmup,
              "groups": [f"{shape_label(s)} {d}" for s, d in groups], "skipped": skipped,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    paths = {}
    last_shape_seconds = 0.0
    for shape, dtype_name in groups:
        label = shape_label(shape)
        elem = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
        numel = math.prod(shape)
        need, have = MEMORY_FACTOR * numel * elem, harness.available_memory_bytes(device)
        if have is not None and need > have:
            skipped.append({"what": f"{label} {dtype_name}", "reason": f"needs ~{need / 2**30:.1f} GiB, "
                            f"{have / 2**30:.1f} GiB free"})
            continue
        # A shape costs at least as much as the last one did (they grow); stop before overrunning.
        if deadline is not None and time.perf_counter() + max(last_shape_seconds, 5.0) > deadline:
            skipped.append({"what": f"{label} {dtype_name}", "reason": "out of time (--time-budget)"})
            continue
        t0 = time.perf_counter()
        print(f"gpu_bench: {label} {dtype_name} ...", flush=True)
        x, y = make_inputs(shape, dtype_name, device)
        contenders = harness.make_contenders(device, wanted)  # a fresh torch.compile for this shape
        if len(shape) > 2:
            for c in [c for c in contenders if c.name in TWO_D_ONLY]:
                skipped.append({"what": f"{c.name} at {label}", "reason": "takes (N, C) logits only"})
            contenders = [c for c in contenders if c.name not in TWO_D_ONLY]

        def note(name, reason, what=f"{label} {dtype_name}"):
            skipped.append({"what": f"{name} at {what}", "reason": reason})

        measured, ready = measure(x, y, contenders, args.repeats, args.warmup, device, timer, note)
        rows_n = numel // shape[1]  # rows: every position of the non-class dimensions
        new = report.build_rows(measured, ready, rows_n, shape[1], dtype_name, elem, device.type)
        for r in new:
            r["shape"] = label
        rows += add_bytes_per_element(new, numel)
        ceiling = {"shape": label, "dtype": dtype_name, "logits_bytes": numel * elem,
                   "compile_seconds": round(measured.compile_seconds, 2)}
        for key, name in ((harness.COPY, "copy"), (harness.FRESH_COPY, "fresh_copy")):
            ms = harness.median_ms(measured.times[(key, "copy")])
            ceiling[f"{name}_ms"] = report.sig(ms)
            ceiling[f"{name}_gb_per_s"] = report.sig(2 * numel * elem / (ms * 1e-3) / 1e9)
        ceilings.append(ceiling)
        del x, y, measured, contenders, ready
        if device.type == "cuda":
            torch.cuda.empty_cache()
        last_shape_seconds = time.perf_counter() - t0
        config["seconds"] = round(time.perf_counter() - started, 1)
        paths = write_files(rows, facts, config, ceilings, args.out, args.stem)  # after every shape
        print(f"gpu_bench: {label} {dtype_name} done in {last_shape_seconds:.0f} s", flush=True)
    config["seconds"] = round(time.perf_counter() - started, 1)
    paths = write_files(rows, facts, config, ceilings, args.out, args.stem)
    with open(paths["md"]) as f:
        print(f.read())
    print(f"{len(rows)} rows in {config['seconds']:.0f} s; wrote {', '.join(paths.values())}")
    if not rows:
        sys.exit("gpu_bench: nothing was measured: " + "; ".join(f"{s['what']}: {s['reason']}" for s in skipped))
    return rows


if __name__ == "__main__":
    main()
