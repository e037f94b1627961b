"""The benchmark's machinery on tiny shapes, one repeat: it runs every contender and writes the
table, CSV, JSON and PNG with the expected columns. No timing is asserted."""

import csv
import json
import os
import sys

import pytest

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)

bench = pytest.importorskip("bench")  # needs tqdm and matplotlib (the bench extra)
import report  # noqa: E402  (beside bench.py)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--shapes", "16,300", "--dtypes", "float32,bfloat16", "--repeats", "1", "--warmup", "0",
            "--out", str(out), "--no-progress", "--device", "cpu"]
    rows = bench.main(argv)
    return out, rows


def test_writes_every_file(run):
    out, _ = run
    for ext in ("md", "csv", "json", "png"):
        path = out / f"bench.{ext}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_has_the_columns_and_every_contender(run):
    out, rows = run
    with open(out / "bench.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == report.COLUMNS
        csv_rows = list(reader)
    assert len(csv_rows) == len(rows)
    groups = {(r["shape"], r["dtype"]) for r in csv_rows}
    assert groups == {("16x300", "float32"), ("16x300", "bfloat16")}
    names = {r["contender"] for r in csv_rows}
    assert {"validated_loss", "validated_loss [validate=off]", "validated_loss [check_finite]",
            "validated_loss [no gradient cache]", "torch eager",
            "torch.compile"} <= names
    for r in csv_rows:
        assert float(r["ms"]) > 0
        assert float(r["speedup_vs_eager"]) > 0 and float(r["speedup_vs_compile"]) > 0
        assert 0 < float(r["bw_fraction_of_copy"])
        assert (r["saved_bytes"] != "") == (r["pass"] == "fwd+bwd")


def test_saved_bytes_are_measured(run):
    _, rows = run
    saved = {(r["shape"], r["dtype"], r["contender"]): r["saved_bytes"] for r in rows if r["pass"] == "fwd+bwd"}
    for dtype, elem in (("float32", 4), ("bfloat16", 2)):
        # torch eager keeps its log-softmax (N*C elements); validated_loss keeps per-row values only:
        # the float32 lse (4 B) and the int64 targets (8 B) per row, and a scalar.
        assert saved[("16x300", dtype, "torch eager")] >= 16 * 300 * elem
        assert saved[("16x300", dtype, "validated_loss")] <= 16 * 16 + 64


def test_json_holds_machine_facts_rows_and_targets(run):
    out, rows = run
    data = json.loads((out / "bench.json").read_text())
    for key in ("cpu_model", "cores", "torch", "cpu_capability", "torch_threads", "load_average_at_start",
                "other_processes_cpu_share"):
        assert key in data["machine"]
    assert data["rows"] == json.loads(json.dumps(rows))
    assert {(c["shape"], c["dtype"]) for c in data["ceilings"]} == {("16x300", "float32"), ("16x300", "bfloat16")}
    assert all(c["copy_gb_per_s"] > 0 for c in data["ceilings"])
    assert len(data["targets"]) == 2  # one verdict per shape/dtype (CPU run)
    table = (out / "bench.md").read_text()
    assert table.splitlines()[0].startswith("Machine:") and "| shape | dtype | pass |" in table


@pytest.mark.parametrize("text", ["", "4096", "4096,0", "a,b"])
def test_bad_shapes_are_refused(text):
    with pytest.raises(Exception):
        bench.parse_shapes(text)


def test_default_plan_is_issue_5s_target_set():
    args = bench.parse_args([])
    assert bench.plan(args) == [(262144, 10, "float32"), (65536, 1000, "float32"), (4096, 32000, "float32"),
                                (4096, 32000, "bfloat16")]
    full = bench.plan(bench.parse_args(["--full"]))
    assert (4096, 128256, "bfloat16") in full and len(full) == 8


def test_small_calls_section(run):
    """The small-call shapes and the import time (issue 16): every shape, both passes, and a verdict
    line per target."""
    out, _ = run
    data = json.loads((out / "small_calls.json").read_text())
    assert {(r["shape"], r["pass"]) for r in data["rows"]} == {
        (f"{n}x{c}", p) for n, c in ((8, 10), (64, 10), (128, 1000), (1024, 1000)) for p in ("fwd+bwd", "fwd")}
    assert all(r["validated_loss_us"] > 0 and r["torch_us"] > 0 and r["ratio"] > 0 for r in data["rows"])
    assert data["imports"]["import_torch_s"] > 0 and data["imports"]["import_validated_loss_adds_s"] >= 0
    assert len(data["targets"]) == 5
    assert "| 8x10 | fwd+bwd |" in (out / "small_calls.md").read_text()


def test_check_finite_ratios_beside_the_plain_rows(run):
    out, rows = run
    ratios = bench.check_finite_ratios(rows)
    assert {(c["dtype"], c["pass"]) for c in ratios} == {(d, p) for d in ("float32", "bfloat16")
                                                         for p in ("fwd", "fwd+bwd")}
    for c in ratios:
        assert c["ratio"] > 0 and c["ratio_min"] > 0 and isinstance(c["met"], bool)
    assert "check_finite=True against the plain" in (out / "bench.md").read_text()
