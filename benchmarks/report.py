"""The reporting half of the benchmark: rows from raw timings, then markdown, CSV, JSON and PNG."""

import csv
import json
import os

from harness import COMPILE, COPY, EAGER, OURS, median_ms

# Issue 5's targets for validated_loss's forward+backward on the CPU.
TARGET_VS_EAGER = 2.0
TARGET_VS_COMPILE = 1.2
TARGET_COPY_FRACTION = 1 / 1.5  # "within 1.5x of the copy ceiling"
LARGE_SHAPE_BYTES = 64 * 2**20  # "the large shapes": logits of 64 MiB and more

COLUMNS = [
    "device", "shape", "N", "C", "dtype", "pass", "contender", "ms", "ms_min", "ms_max", "repeats",
    "speedup_vs_eager", "speedup_vs_compile", "saved_bytes", "saved_bytes_per_row", "peak_mem_bytes",
    "bytes_moved", "gb_per_s", "copy_gb_per_s", "bw_fraction_of_copy",
]

# Bytes each pass must move at the least, counting the logits only (targets, 8 B a row, and the
# per-row lse/loss are left out): fwd reads the logits once; fwd+bwd reads them in the forward,
# again in the backward, and writes the gradient once.
LOGITS_TRAFFIC = {"fwd": 1, "fwd+bwd": 3}


def build_rows(measured, contenders, n, c, dtype_name, elem_size, device):
    """One row per (contender, pass) of one shape/dtype."""
    logits_bytes = n * c * elem_size
    copy_ms = median_ms(measured.times[(COPY, "copy")])
    copy_gbps = 2 * logits_bytes / (copy_ms * 1e-3) / 1e9  # read + write
    rows = []
    for pass_name in ("fwd", "fwd+bwd"):
        eager = measured.times.get((EAGER, pass_name))
        compiled = measured.times.get((COMPILE, pass_name))
        for contender in contenders:
            samples = measured.times.get((contender.name, pass_name))
            if not samples:
                continue
            ms = median_ms(samples)
            moved = LOGITS_TRAFFIC[pass_name] * logits_bytes
            gbps = moved / (ms * 1e-3) / 1e9
            saved = measured.saved_bytes.get(contender.name) if pass_name == "fwd+bwd" else None
            rows.append({
                "device": device, "shape": f"{n}x{c}", "N": n, "C": c, "dtype": dtype_name, "pass": pass_name,
                "contender": contender.name, "ms": sig(ms), "ms_min": sig(min(samples) * 1e3),
                "ms_max": sig(max(samples) * 1e3), "repeats": len(samples),
                "speedup_vs_eager": sig(median_ms(eager) / ms) if eager else None,
                "speedup_vs_compile": sig(median_ms(compiled) / ms) if compiled else None,
                "saved_bytes": saved, "saved_bytes_per_row": sig(saved / n) if saved is not None else None,
                "peak_mem_bytes": measured.peak_bytes.get((contender.name, pass_name)),
                "bytes_moved": moved, "gb_per_s": sig(gbps), "copy_gb_per_s": sig(copy_gbps),
                "bw_fraction_of_copy": sig(gbps / copy_gbps),
            })
    return rows


def sig(value, digits=4):
    """`digits` significant digits (tiny shapes give tiny fractions that fixed decimals would zero)."""
    return float(f"{value:.{digits}g}")


def target_verdicts(rows):
    """Issue 5's targets, checked on validated_loss's (validate=sync) forward+backward rows."""
    verdicts = []
    for r in rows:
        if r["contender"] != OURS or r["pass"] != "fwd+bwd":
            continue
        large = r["bytes_moved"] / 3 >= LARGE_SHAPE_BYTES
        verdicts.append({
            "shape": r["shape"], "dtype": r["dtype"],
            "vs_eager": r["speedup_vs_eager"], "vs_eager_met": _at_least(r["speedup_vs_eager"], TARGET_VS_EAGER),
            "vs_compile": r["speedup_vs_compile"],
            "vs_compile_met": _at_least(r["speedup_vs_compile"], TARGET_VS_COMPILE),
            "bw_fraction": r["bw_fraction_of_copy"],
            "bw_met": _at_least(r["bw_fraction_of_copy"], TARGET_COPY_FRACTION) if large else None,
            "saved_bytes_per_row": r["saved_bytes_per_row"],
        })
    return verdicts


def _at_least(value, target):
    return None if value is None else bool(value >= target)


# ---------------------------------------------------------------------------------------------
# Formatting


def human_bytes(b):
    if b is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def _percent(x):
    return "?" if x is None else f"{100 * x:.0f}%"


def _ratio(x):
    return "–" if x is None else f"{x:.2f}x"


def markdown_table(rows, facts):
    lines = [
        f"Machine: {facts['cpu_model']}, {facts['cores']} cores, torch threads {facts['torch_threads']}, "
        f"CPU capability {facts['cpu_capability']}, torch {facts['torch']}, device {facts['device']}"
        + (f" ({facts['gpu']})" if "gpu" in facts else ""),
        f"Load average (1, 5, 15 min) at start {facts.get('load_average_at_start')}, at end "
        f"{facts.get('load_average_at_end')}; other processes used "
        f"{_percent(facts.get('other_processes_cpu_share'))} of the CPUs during the run; "
        f"THP_MEM_ALLOC_ENABLE={facts.get('THP_MEM_ALLOC_ENABLE') or 'unset'}",
        "",
        "| shape | dtype | pass | contender | ms (median) | vs eager | vs compile | saved for bwd | peak mem "
        "| BW / copy |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        saved = ("–" if r["saved_bytes"] is None
                 else f"{human_bytes(r['saved_bytes'])} ({r['saved_bytes_per_row']:g} B/row)")
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['pass']} | {r['contender']} | {r['ms']:.1f} "
            f"| {_ratio(r['speedup_vs_eager'])} | {_ratio(r['speedup_vs_compile'])} | {saved} "
            f"| {human_bytes(r['peak_mem_bytes'])} | {100 * r['bw_fraction_of_copy']:.0f}% |"
        )
    return "\n".join(lines)


def verdict_lines(verdicts):
    def ratio(x):
        return "–" if x is None else f"{x:.3f}x"

    def mark(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    lines = [f"Issue 5 targets for {OURS} fwd+bwd (>= {TARGET_VS_EAGER}x eager, >= {TARGET_VS_COMPILE}x "
             f"torch.compile, >= {100 * TARGET_COPY_FRACTION:.0f}% of copy bandwidth on large shapes):"]
    for v in verdicts:
        lines.append(
            f"  {v['shape']:>12} {v['dtype']:<9} vs eager {ratio(v['vs_eager'])} {mark(v['vs_eager_met'])}; "
            f"vs compile {ratio(v['vs_compile'])} {mark(v['vs_compile_met'])}; "
            f"bandwidth {100 * v['bw_fraction']:.0f}% {mark(v['bw_met'])}; "
            f"saved {v['saved_bytes_per_row']:g} B/row")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Files


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})


def write_json(payload, path):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def write_plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["shape"], r["dtype"]) for r in rows))
    labels = [f"{s}\n{d}" for s, d in groups]
    width_in = max(8.0, 1.6 * len(groups) + 3)
    fig, axes = plt.subplots(3, 1, figsize=(width_in, 13), constrained_layout=True)

    def value(shape, dtype, pass_name, contender, key):
        for r in rows:
            if (r["shape"], r["dtype"], r["pass"], r["contender"]) == (shape, dtype, pass_name, contender):
                return r[key]
        return None

    xs = range(len(groups))
    for ax, pass_name in zip(axes[:2], ("fwd+bwd", "fwd")):
        series = [("vs torch eager", "speedup_vs_eager", "tab:blue", TARGET_VS_EAGER),
                  ("vs torch.compile", "speedup_vs_compile", "tab:orange", TARGET_VS_COMPILE)]
        for i, (name, key, color, target) in enumerate(series):
            vals = [value(s, d, pass_name, OURS, key) for s, d in groups]
            bars = ax.bar([x + (i - 0.5) * 0.38 for x in xs], [v or 0 for v in vals], 0.38, label=name, color=color)
            for bar, v in zip(bars, vals):
                if v is not None:
                    ax.annotate(f"{v:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)
            if pass_name == "fwd+bwd":
                ax.axhline(target, color=color, linestyle="--", linewidth=1, label=f"issue 5 target {target}x ({name})")
        ax.axhline(1.0, color="black", linewidth=0.8)
        top = max([r[k] or 0 for r in rows if r["contender"] == OURS and r["pass"] == pass_name
                   for k in ("speedup_vs_eager", "speedup_vs_compile")] + [TARGET_VS_EAGER])
        ax.set_ylim(0, top * 1.35)  # headroom for the legend and the labels
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("speedup (their time / ours)")
        ax.set_title(f"{OURS} speedup, {pass_name} (higher is better; 1.0 = as fast)")
        ax.legend(fontsize=8, loc="upper center", ncol=2)

    ax = axes[2]
    names = list(dict.fromkeys(r["contender"] for r in rows if r["pass"] == "fwd+bwd"
                               and r["saved_bytes"] is not None and " [" not in r["contender"]))
    bar_w = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        vals = [value(s, d, "fwd+bwd", name, "saved_bytes_per_row") for s, d in groups]
        bars = ax.bar([x - 0.4 + bar_w * (i + 0.5) for x in xs], [max(v or 0, 1e-1) for v in vals], bar_w, label=name)
        for bar, v in zip(bars, vals):
            if v is not None:
                ax.annotate(_short_bytes(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    peak = max([r["saved_bytes_per_row"] or 1 for r in rows if r["saved_bytes_per_row"] is not None] + [10])
    ax.set_ylim(1, peak * 30)
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("bytes per row (log)")
    ax.set_title("bytes autograd keeps for backward beyond the logits, per row (lower is better)")
    ax.legend(fontsize=8, loc="upper center", ncol=len(names))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short_bytes(v):
    return f"{v / 1024:.0f}K" if v >= 1024 else f"{v:.0f}"


def write_all(rows, facts, config, verdicts, ceilings, out_dir, stem="bench"):
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("md", "csv", "json", "png")}
    table = markdown_table(rows, facts)
    with open(paths["md"], "w") as f:
        f.write(table + "\n\n" + verdict_lines(verdicts) + "\n")
    write_csv(rows, paths["csv"])
    write_json({"machine": facts, "config": config, "bytes_model": {
        "fwd": "1 read of the logits", "fwd+bwd": "2 reads of the logits + 1 write of the gradient",
        "copy": "dst.copy_(src) of the logits: 1 read + 1 write"}, "ceilings": ceilings, "rows": rows,
        "targets": verdicts}, paths["json"])
    write_plot(rows, paths["png"])
    return paths, table

