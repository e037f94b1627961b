"""make gpu-check's paths that need no GPU, on the CPU: arguments, the refusal and its exit status,
the step runner (failures recorded, later steps still run, time limits), reading results, the
summary from sample results, the test groups and grid reductions of the pytest plugin, the routing
of CPU-tensor suites, and the kernel driver and GPU benchmark run on the CPU.
(scripts/gpu_check.py; the GPU side itself has not run anywhere yet: see README.)"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(1, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_plugin  # noqa: E402

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
SCRIPT = str(ROOT / "scripts" / "gpu_check.py")


def env_with(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "FAST", "ONLY")}
    env.update(extra)
    return env


# ----------------------------------------------------------------------------------------- refusal


@NO_CUDA
def test_refuses_in_one_line_with_status_2(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, env=env_with(), timeout=300)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gpu-check: refused: torch.cuda.is_available() is False")
    assert "nothing was run" in lines[0]
    assert not out.exists()  # refused before writing anything


@NO_CUDA
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_refuses(tmp_path):
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "gpu-check", f"PYTHON={sys.executable}",
                           f"OUT={tmp_path / 'out'}"], capture_output=True, text=True, env=env_with(), timeout=300)
    assert done.returncode == 2  # make's status for a failed recipe; the script's own is 2 as well
    refused = [line for line in done.stderr.splitlines() if line.startswith("gpu-check: refused:")]
    assert len(refused) == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_refusal_messages():
    refusal = gpu_check.refusal
    text = refusal({"executable": "/x/python", "error": "cannot import torch: ModuleNotFoundError: torch"}, None)
    assert text.startswith("gpu-check: refused: cannot import torch") and "/x/python" in text
    text = refusal({"executable": "p", "torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": False}, None)
    assert "torch.cuda.is_available() is False" in text and "no device is visible" in text
    text = refusal({"executable": "p", "torch": "2.13.0+cpu", "torch_cuda": None, "cuda_available": False}, None)
    assert "CPU-only build" in text
    text = refusal({"executable": "p", "torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": True}, None)
    assert text.startswith("gpu-check: refused: no nvcc")
    usable = {"torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": True}
    assert refusal(usable, ("/cuda", "/cuda/bin/nvcc")) is None
    for info in ({"error": "x"}, {"cuda_available": False}, {"cuda_available": True}):
        assert "\n" not in refusal(info, None)


def test_main_refuses_without_nvcc(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check, "find_cuda_home", lambda **kw: None)
    fake = {"executable": "p", "torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": True, "capability": "9.0"}
    assert gpu_check.main(["--out", str(tmp_path / "o")], probe_fn=lambda python: fake) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("gpu-check: refused: no nvcc")
    assert not (tmp_path / "o").exists()


def test_probe_reports_this_interpreter():
    info = gpu_check.probe()
    assert info["torch"] == torch.__version__ and info["cuda_available"] == torch.cuda.is_available()
    assert "pytest" in info["modules"]
    assert gpu_check.probe("/nonexistent/python")["error"].startswith("cannot run")


def make_toolkit(root, headers=True):
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.48'\n")
    nvcc.chmod(0o755)
    if headers:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_find_cuda_home_prefers_a_toolkit_with_headers(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    wrapper = make_toolkit(tmp_path / "wrapper", headers=False)  # an nvcc outside the toolkit
    find = gpu_check.find_cuda_home
    assert find({"PATH": str(wrapper / "bin")}, torch_guess=str(toolkit), defaults=()) == (
        str(toolkit), str(toolkit / "bin" / "nvcc"))
    assert find({"PATH": str(wrapper / "bin")}, defaults=())[0] == str(wrapper)  # nvcc without headers: still found
    assert find({"CUDA_HOME": str(toolkit), "PATH": ""}, defaults=())[0] == str(toolkit)
    assert find({"PATH": ""}, defaults=()) is None
    link = tmp_path / "links" / "bin"
    link.mkdir(parents=True)
    (link / "nvcc").symlink_to(toolkit / "bin" / "nvcc")  # /usr/local/bin/nvcc -> the toolkit's
    assert find({"PATH": str(link)}, defaults=())[0] == str(toolkit)
    assert gpu_check.tool_version([str(toolkit / "bin" / "nvcc"), "--version"], r"release ([\d.]+)") == "13.0"


# ----------------------------------------------------------------------------------------- arguments


def test_arguments_and_environment():
    parse = gpu_check.parse_args
    args = parse([], {})
    assert args.out == os.path.abspath(gpu_check.DEFAULT_OUT) and args.out_shown == "build/gpu-check"
    assert not args.fast and args.only is None and args.budget == gpu_check.DEFAULT_BUDGET
    assert parse([], {"FAST": "1"}).fast and parse([], {"FAST": "yes"}).fast
    assert not parse([], {"FAST": "0"}).fast and not parse([], {"FAST": ""}).fast
    assert parse(["--fast"], {"FAST": "0"}).fast
    assert parse([], {"OUT": "/tmp/somewhere/"}).out == "/tmp/somewhere"
    assert parse(["--out", "rel"], {"OUT": "/ignored"}).out == os.path.abspath("rel")
    assert parse([], {"ONLY": "bench, build"}).only == ["bench", "build"]
    assert parse(["--only", "sanitizer"], {}).only == ["sanitizer"]
    for argv, environ in ((["--only", "bench,nope"], {}), ([], {"ONLY": "nope"}), ([], {"FAST": "maybe"}),
                          (["--budget", "0"], {}), (["--shards", "0"], {})):
        with pytest.raises(SystemExit) as info:
            parse(argv, environ)
        assert info.value.code == 2


def test_dry_run_plan_names_files_that_exist(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    plan = capsys.readouterr().out
    for name in gpu_check.STEP_NAMES:
        assert f"  {name}: up to" in plan
    for path in ("setup.py", "tests/test_cuda.py", *gpu_check.PARITY_SUITES, "scripts/gpu_check_kernels.py",
                 "benchmarks/gpu_bench.py"):
        assert path in plan and (ROOT / path).exists()


def test_plan_budgets_and_shards():
    args = gpu_check.parse_args(["--fast"], {})
    steps = gpu_check.make_plan(args, "py", {"capability": "9.0", "cores": 16, "cuda_home": "/cuda", "sanitizer": None})
    by = {s.name: s for s in steps}
    assert [s.name for s in steps] == gpu_check.STEP_NAMES
    assert by["build"].cmds[0].env["TORCH_CUDA_ARCH_LIST"] == "9.0" and by["build"].cmds[0].env["MAX_JOBS"] == "16"
    assert len(by["cuda-grid"].cmds) == 4
    assert {c.env["VL_GPU_CHECK_SHARD"] for c in by["cuda-grid"].cmds} == {"0/4", "1/4", "2/4", "3/4"}
    assert all(c.env["VL_GPU_CHECK_KEEP"] == "5" for c in by["cuda-grid"].cmds)
    assert by["parity-cuda"].cmds[0].env["VL_GPU_CHECK_ROUTE"] == "cuda"
    assert by["sanitizer"].skip and "--small" in by["sanitizer"].cmds[0].argv
    assert "--fast" in by["bench"].cmds[0].argv
    full = gpu_check.make_plan(gpu_check.parse_args(["--only", "cuda-grid,bench"], {}), "py",
                               {"capability": "8.0", "cores": 2, "cuda_home": None, "sanitizer": "/cs"})
    assert [s.name for s in full] == ["cuda-grid", "bench"] and len(full[0].cmds) == 1
    assert "VL_GPU_CHECK_KEEP" not in full[0].cmds[0].env


def test_step_timeout():
    step = gpu_check.Step("x", "pytest", [], budget=100, reserve=20)
    assert gpu_check.step_timeout(step, remaining=400, later=100) == 100  # its budget
    assert gpu_check.step_timeout(step, remaining=150, later=100) == 50  # leaves the later steps their least
    assert gpu_check.step_timeout(step, remaining=110, later=100) == 20  # but never below its own least
    assert gpu_check.step_timeout(step, remaining=12, later=100) == 12  # nor beyond the time left


# ----------------------------------------------------------------------------------------- running steps


def py(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_run_cmds_records_failures_and_stops_what_runs_too_long(tmp_path):
    cmds = [gpu_check.Cmd(py("print('ok')"), "a.log"), gpu_check.Cmd(py("raise SystemExit(3)"), "b.log"),
            gpu_check.Cmd(py("import time; print('start', flush=True); time.sleep(60)"), "c.log")]
    start = time.monotonic()
    outcomes = gpu_check.run_cmds(cmds, str(tmp_path), timeout=3, cwd=tmp_path)
    # Stopped, not waited for: the sleeper would take 60 s (a bound on behaviour, not a speed claim).
    assert time.monotonic() - start < 45
    assert outcomes[0] == (0, True) and outcomes[1] == (3, True)  # the batch as a whole ran out of time
    assert outcomes[2][0] != 0 and outcomes[2][1]
    assert (tmp_path / "a.log").read_text().splitlines()[-1] == "ok"
    assert (tmp_path / "c.log").read_text().startswith("$ ")  # the command line heads the log
    seq = gpu_check.run_cmds(cmds[1:2] + cmds[:1], str(tmp_path), timeout=30, sequential=True, cwd=tmp_path,
                             stop_on_failure=True)
    assert seq == [(3, False), (None, False)]  # the second never started
    seq = gpu_check.run_cmds(cmds[1:2] + cmds[:1], str(tmp_path), timeout=30, sequential=True, cwd=tmp_path)
    assert seq == [(3, False), (0, False)]


SAMPLE_BENCH = {"config": {"skipped": [{"what": "16384x256000 bfloat16", "reason": "out of time (--time-budget)"},
                                       {"what": "liger-kernel at 8x32000x128", "reason": "takes (N, C) logits only"}]},
                "rows": []}
for shape, dtype, ours, eager, compiled in (("4096x32000", "float32", 1.1, 3.9, 2.0),
                                            ("8192x128256", "bfloat16", 3.4, 11.8, 6.1)):
    for name, ms, bw in (("validated_loss", ours, 0.81), ("validated_loss [validate=off]", ours * 0.95, 0.85),
                         ("torch eager", eager, 0.23), ("torch.compile", compiled, 0.45),
                         ("flash-attn", ours * 1.2, 0.7)):
        for pass_name in ("fwd", "fwd+bwd"):
            SAMPLE_BENCH["rows"].append({"shape": shape, "dtype": dtype, "pass": pass_name, "contender": name, "ms": ms,
                                         "bw_fraction_of_copy": bw, "copy_equiv_bytes_per_elem": 6.2})


def fake_steps(out, bench):
    """Steps of every kind made of small Python programs: a build that passes, a pytest step with a
    failure, one that runs out of time, a sanitizer that finds an error, a benchmark."""
    Cmd, Step = gpu_check.Cmd, gpu_check.Step
    records = [{"nodeid": "tests/test_cuda.py::test_a", "outcome": "passed"},
               {"nodeid": "tests/test_cuda.py::test_b[c33-bf16]", "outcome": "failed",
                "message": "AssertionError: off"},
               {"nodeid": "tests/test_cuda.py::test_c", "outcome": "skipped"}]
    write_results = f"""
        import json, sys
        with open({os.path.join(out, 'results-grid.jsonl')!r}, 'w') as f:
            for r in {records!r}:
                f.write(json.dumps(r) + '\\n')
        sys.exit(1)"""
    sanitizer_log = "========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 2 errors"
    return [
        Step("build", "build", [Cmd(py("print('compiling')"), "build.log"),
                                Cmd(py("print('smoke: one CUDA loss and its gradient ran')"), "build-smoke.log")],
             30, 5, sequential=True, stop_on_failure=True),
        Step("cuda-grid", "pytest", [Cmd(py(write_results), "grid.log", results="results-grid.jsonl")], 30, 5),
        Step("validation", "pytest", [Cmd(py("import time; time.sleep(60)"), "validation.log",
                                          results="results-validation.jsonl", junit="junit-validation.xml")], 2, 1),
        Step("sanitizer", "sanitizer", [Cmd(py(f"print({sanitizer_log!r}); raise SystemExit(86)"),
                                            "sanitizer-memcheck.log")], 30, 5, sequential=True),
        Step("bench", "bench", [Cmd(py(f"import json; json.dump({bench!r}, "
                                       f"open({os.path.join(out, 'gpu_bench.json')!r}, 'w'))"),
                                    "bench.log")], 30, 5),
    ]


def test_main_runs_every_step_records_each_failure_and_summarises(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    info = {"executable": sys.executable, "python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0",
            "cuda_available": True, "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "gpu_memory_gib": 79.1}
    monkeypatch.setattr(gpu_check, "find_cuda_home", lambda **kw: (str(tmp_path), sys.executable))
    monkeypatch.setattr(gpu_check, "tool_version", lambda argv, pattern: "13.0")
    monkeypatch.setattr(gpu_check, "make_plan", lambda args, python, machine: fake_steps(str(out), SAMPLE_BENCH))
    monkeypatch.setattr(gpu_check, "KILL_GRACE", 2.0)
    status = gpu_check.main(["--out", str(out), "--budget", "120"], probe_fn=lambda python: info)
    assert status == 1
    printed = capsys.readouterr().out
    summary = (out / "summary.txt").read_text().splitlines()
    assert "\n".join(summary) in printed
    assert 8 <= len(summary) <= 14, summary
    assert summary[0].startswith("gpu-check: NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB) | torch 2.11.0+cu130")
    text = "\n".join(summary)
    assert "build: ok" in text and "smoke: one CUDA loss" in text
    assert "tests: 1 passed, 1 failed, 1 skipped" in text
    assert "first failure: cuda-grid: tests/test_cuda.py::test_b[c33-bf16]: AssertionError: off" in text
    assert "validation no tests ran [timeout]" in text
    assert "sanitizer: FAIL, memcheck 2 errors" in text
    assert "8192x128256 bf16: vl 3.4 (81%), eager 11.8 (23%), compile 6.1 (45%), flash 4.08 (70%) | vl 6.2 B/el" in text
    assert "16384x256000 bfloat16: out of time" in text
    assert summary[-2].startswith("steps: build ok") and summary[-2].endswith("-> FAIL")
    assert "validation timeout" in summary[-2] and "bench ok" in summary[-2]
    saved = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in saved["steps"]] == ["ok", "FAIL", "timeout", "FAIL", "ok"]
    assert json.loads((out / "env.json").read_text())["capability"] == "9.0"


def test_a_failed_build_skips_the_steps_that_need_it(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    info = {"executable": sys.executable, "torch": "2.6.0", "torch_cuda": "12.4", "cuda_available": True,
            "capability": "8.0"}
    steps = fake_steps(str(out), SAMPLE_BENCH)
    steps[0].cmds[0] = gpu_check.Cmd(py("print('csrc/cuda/x.cu(3): error: no'); raise SystemExit(1)"), "build.log")
    monkeypatch.setattr(gpu_check, "find_cuda_home", lambda **kw: (str(tmp_path), sys.executable))
    monkeypatch.setattr(gpu_check, "tool_version", lambda argv, pattern: None)
    monkeypatch.setattr(gpu_check, "make_plan", lambda args, python, machine: steps)
    assert gpu_check.main(["--out", str(out)], probe_fn=lambda python: info) == 1
    saved = json.loads((out / "summary.json").read_text())["steps"]
    assert saved[0]["status"] == "FAIL" and "error: no" in saved[0]["detail"]
    assert all(s["status"] == "not run" and s["detail"] == "the build failed" for s in saved[1:])
    assert not (out / "build-smoke.log").exists()


# ----------------------------------------------------------------------------------------- reading results


def test_counts_from_results_and_junit(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in (
        {"nodeid": "a", "outcome": "passed"}, {"nodeid": "b", "outcome": "error", "message": "fixture broke"},
        {"nodeid": "c", "outcome": "xfailed"})) + '\n{"nodeid": "d", "outc')  # the last line cut by a kill
    counts, first = gpu_check.result_counts([str(results), str(tmp_path / "missing.jsonl")])
    assert (counts["passed"], counts["error"], counts["xfailed"], first) == (1, 1, 1, "b: fixture broke")
    junit = tmp_path / "j.xml"
    junit.write_text("""<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4">
      <testcase classname="tests.test_cuda" name="test_ok"/>
      <testcase classname="tests.test_cuda" name="test_bad[c1]"><failure message="AssertionError: loss differs">x
      </failure></testcase>
      <testcase classname="tests.test_cuda" name="test_skip"><skipped message="no"/></testcase>
      <testcase classname="tests.test_cuda" name="test_err"><error message="boom"/></testcase>
    </testsuite></testsuites>""")
    counts, first = gpu_check.junit_counts([str(junit)])
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["error"]) == (1, 1, 1, 1)
    assert first == "tests.test_cuda::test_bad[c1]: AssertionError: loss differs"
    assert gpu_check.counts_text(counts) == "1 passed, 1 failed, 1 error, 1 skipped"


def test_sanitizer_summaries():
    find = gpu_check.sanitizer_findings
    assert find("========= ERROR SUMMARY: 0 errors", "memcheck") == (0, "0 errors")
    assert find("========= ERROR SUMMARY: 1 error", "memcheck") == (1, "1 errors")
    assert find("========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)", "racecheck") == (
        3, "3 hazards (1 errors, 2 warnings)")
    assert find("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)", "racecheck")[0] == 0
    assert find("Segmentation fault", "memcheck") == (None, "no summary line")


def test_summary_from_sample_results():
    R = gpu_check.Result
    results = [R("build", "ok", 141.6, "smoke: one CUDA loss and its gradient ran", extra={"how": "sm_90, 16 jobs"}),
               R("validation", "ok", 38, counts={"passed": 21}),
               R("sync-debug", "ok", 9, counts={"passed": 5}),
               R("cuda-grid", "FAIL", 121, counts={"passed": 5012, "failed": 3, "skipped": 1},
                 first_failure="tests/test_cuda.py::test_parity_class_index[c50257-bf16]: AssertionError"),
               R("parity-cuda", "ok", 20, counts={"passed": 180}),
               R("sanitizer", "ok", 75, "memcheck 0 errors; racecheck 0 hazards (0 errors, 0 warnings)",
                 counts={"findings": 0}),
               R("bench", "ok", 130, "2 shape(s) measured", extra={"bench": SAMPLE_BENCH})]
    lines = gpu_check.summarize("gpu-check: header", results, "build/gpu-check", 452, 470)
    assert len(lines) <= 14
    assert lines[1] == "build: ok in 142 s (sm_90, 16 jobs); smoke: one CUDA loss and its gradient ran"
    assert lines[2].startswith("tests: 5218 passed, 3 failed, 1 skipped (validation 21 passed; sync-debug 5 passed; "
                               "cuda-grid 5012 passed, 3 failed, 1 skipped; parity-cuda 180 passed)")
    assert lines[3].startswith("first failure: cuda-grid: tests/test_cuda.py::test_parity_class_index[c50257-bf16]")
    assert lines[4] == "sanitizer: ok, memcheck 0 errors; racecheck 0 hazards (0 errors, 0 warnings)"
    assert lines[6].startswith("bench fwd+bwd, ms (bandwidth / copy")
    assert lines[7] == ("  4096x32000 f32: vl 1.1 (81%), eager 3.9 (23%), compile 2 (45%), flash 1.32 (70%)"
                        " | vl 6.2 B/el")
    assert lines[-2].endswith("total 452 s of 470 -> FAIL") and "cuda-grid FAIL 121s" in lines[-2]
    assert lines[-1].startswith("everything is in build/gpu-check/")
    ok = [R(r.name, "ok" if r.status == "FAIL" else r.status, r.seconds, r.detail, dict(r.counts, failed=0), None,
            r.extra) for r in results]
    assert gpu_check.summarize("h", ok, "o", 1, 470)[-2].endswith("-> PASS")


def test_clear_out_removes_only_its_own_files(tmp_path):
    for name in ("build.log", "junit-validation.xml", "results-cuda-grid-0.jsonl", "gpu_bench.png", "summary.txt",
                 "env.json", "notes.md", "keep.json"):
        (tmp_path / name).write_text("x")
    gpu_check.clear_out(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json", "notes.md"]


# ----------------------------------------------------------------------------------------- the pytest plugin


def collect(*args, **env):
    """Node ids pytest collects from tests/test_cuda.py with gpu_check_plugin loaded."""
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda.py", "--collect-only",
                           "-p", "gpu_check_plugin", "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True,
                          env=env_with(PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]), **env),
                          timeout=600)
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if line.startswith("tests/test_cuda.py::")]


def test_test_cuda_groups_partition_the_file():
    every = collect()
    assert len(every) > 1000
    groups = {name: collect("-k", k) for name, k in (("validation", gpu_check.K_VALIDATION),
                                                     ("sync-debug", gpu_check.K_SYNC_DEBUG))}
    assert not set(groups["validation"]) & set(groups["sync-debug"])
    groups["cuda-grid"] = [i for i in every if i not in set(groups["validation"] + groups["sync-debug"])]
    names = {g: {i.split("::")[1].split("[")[0] for i in ids} for g, ids in groups.items()}
    assert "test_bad_target_raises_and_context_survives" in names["validation"]
    assert "test_cuda_graph_capture" in names["validation"]
    assert names["sync-debug"] == {"test_deferred_never_synchronizes",
                                   "test_deferred_with_a_bad_target_never_synchronizes",
                                   "test_sync_under_compile_does_not_synchronize_and_reports_at_the_next_call",
                                   "test_cuda_graph_replay_with_a_bad_target_is_reported_by_check_deferred"}
    assert {"test_parity_class_index", "test_parity_probabilities", "test_n_times_c_past_int32"} <= names["cuda-grid"]
    # K_GRID selects the rest (each test in exactly one group); under FAST=1 and shards the plugin
    # keeps exactly what _keep says (the shards' split itself: test_keep_and_shards_split_the_grid)
    kept = collect("-k", gpu_check.K_GRID, VL_GPU_CHECK_KEEP="5", VL_GPU_CHECK_SHARD="1/3")
    assert kept == [i for i in groups["cuda-grid"] if gpu_check_plugin._keep(i, 5, (1, 3))]
    assert any("[" not in i for i in kept)  # some tests without parameters are in this shard too


def test_keep_and_shards_split_the_grid():
    import cuda_grid  # noqa: F401 (tests/ is on sys.path under pytest)

    ids = [f"tests/test_cuda.py::test_parity_class_index[{s}-{d}-{lay}-{o}-{r}]" for s, d, lay, o, r in cuda_grid.GRID]
    ids += ["tests/test_cuda.py::test_empty_batch"]
    fifth = [i for i in ids if gpu_check_plugin._keep(i, 5, None)]
    assert len(ids) / 8 < len(fifth) < len(ids) / 3
    assert "tests/test_cuda.py::test_empty_batch" in fifth  # tests without parameters always run
    assert {i.split("[")[1].split("-")[0] for i in fifth if "[" in i} == set(cuda_grid.SHAPES)  # every shape stays
    shards = [[i for i in fifth if gpu_check_plugin._keep(i, 5, (k, 4))] for k in range(4)]
    assert sorted(sum(shards, [])) == sorted(fifth) and min(map(len, shards)) > len(fifth) / 8
    assert gpu_check_plugin.parse_shard("2/4") == (2, 4)
    with pytest.raises(ValueError):
        gpu_check_plugin.parse_shard("4/4")


def test_routing_runs_the_cpu_suites_through_the_routed_calls(tmp_path):
    """What parity-cuda does, routed to the CPU here: every validated_loss call of the suite goes
    through the wrapper, the suite passes, each outcome lands in the results file."""
    results = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_nonfinite_corners.py", "-p", "gpu_check_plugin",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env_with(PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]),
                                       VL_GPU_CHECK_ROUTE="cpu", VL_GPU_CHECK_RESULTS=str(results)))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "validated_loss calls on CPU tensors were run on cpu" in done.stdout
    calls = int(done.stdout.split("gpu_check_plugin: ")[1].split()[0])
    counts, first = gpu_check.result_counts([str(results)])
    assert first is None and counts["passed"] > 20 and calls >= counts["passed"]


def test_routed_wrapper_moves_arguments_and_results():
    seen = []

    def fn(x, t, weight=None, **kw):
        seen.append((x.device.type, t.device.type, None if weight is None else weight.device.type, kw))
        return torch.zeros(()), torch.ones(2)

    wrapped = gpu_check_plugin.routed(fn, "meta")  # meta stands in for cuda: a device that is not the CPU
    out = wrapped(torch.ones(2, 3), torch.zeros(2, dtype=torch.long), weight=torch.ones(3), reduction="sum")
    assert seen == [("meta", "meta", "meta", {"reduction": "sum"})]
    assert isinstance(out, tuple) and len(out) == 2 and all(o.device.type == "cpu" for o in out)
    meta = torch.ones(2, 3, device="meta")
    wrapped(meta, torch.zeros(2, dtype=torch.long, device="meta"))  # nothing on the CPU: passed through
    assert seen[-1][:3] == ("meta", "meta", None)


# ----------------------------------------------------------------------------------------- the GPU scripts on the CPU


def test_kernel_driver_runs_on_the_cpu():
    done = subprocess.run([sys.executable, "scripts/gpu_check_kernels.py", "--device", "cpu", "--small"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env_with())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 validation errors on cpu" in done.stdout


EMULATED = sorted((ROOT / "build" / "cuda-emu" / "plain").glob("_C*.so"))


@pytest.mark.skipif(not EMULATED, reason="no emulated CUDA build (python scripts/build_cuda_emu.py)")
def test_kernel_driver_runs_the_emulated_cuda_kernels():
    """The sanitizer's driver through csrc/cuda's kernels, executed on the CPU by the emulated build:
    off and deferred modes behave as on a GPU there (no raise at the call)."""
    done = subprocess.run([sys.executable, "scripts/gpu_check_kernels.py", "--device", "cpu", "--small"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env=env_with(VALIDATED_LOSS_C_LIBRARY=str(EMULATED[0])))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 validation errors" in done.stdout
    launched = done.stdout.split("emulated CUDA kernel launches: ")[1]
    for kernel in ("forward_kernel<T, kTeamRows, kProb>", "forward_kernel<T, kBlockRow, kProb>",
                   "forward_kernel<T, kTiledRows, kProb>", "split_finish_kernel<T>", "index_backward_kernel<T>",
                   "prob_backward_kernel<T, kTeamRows>", "prob_backward_kernel<T, kBlockRow>",
                   "prob_backward_kernel<T, kTiledRows>", "weight_sum_kernel<T>",
                   "finalize_kernel<T>"):  # all but the graph-only publish kernel
        assert f"{kernel} x" in launched, launched


def test_gpu_bench_shapes_start_with_bench_quick_preset():
    pytest.importorskip("tqdm")
    import bench
    import gpu_bench

    assert [(s, d) for s, d in gpu_bench.SHAPES[:4]] == [((n, c), d) for n, c, d in bench.QUICK]
    shapes = {gpu_bench.shape_label(s) + " " + d for s, d in gpu_bench.SHAPES}
    assert {"8192x128256 bfloat16", "16384x256000 bfloat16", "8x32000x128 bfloat16"} <= shapes
    assert any(len(s) == 4 for s, _ in gpu_bench.SHAPES)  # NCHW segmentation
    args = gpu_bench.parse_args(["--fast"])
    assert gpu_bench.plan(args) == gpu_bench.SHAPES[:1] and (args.repeats, args.warmup) == (5, 1)
    assert gpu_bench.parse_shapes("8,32000,128:float32; 4x10") == [((8, 32000, 128), "float32"), ((4, 10), "bfloat16")]
    for bad in ("8", "4x0", "4x10:int8", ""):
        with pytest.raises(Exception):
            gpu_bench.parse_shapes(bad)


def test_gpu_bench_runs_on_the_cpu_and_the_summary_reads_it(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--device", "cpu", "--out", str(tmp_path),
                           "--shapes", "64x10:float32;4x10x3:float32", "--contenders", "validated_loss,torch eager",
                           "--repeats", "2", "--warmup", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env_with())
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert {r["shape"] for r in data["rows"]} == {"64x10", "4x10x3"}
    row = next(r for r in data["rows"] if r["shape"] == "4x10x3" and r["contender"] == "validated_loss"
               and r["pass"] == "fwd+bwd")
    assert row["N"] == 12 and row["C"] == 10 and row["model_bytes_per_elem"] == 12  # 3 passes x 4 bytes
    assert row["copy_equiv_bytes_per_elem"] > 0 and data["machine"]["timing"] == "wall clock"
    header = (tmp_path / "gpu_bench.csv").read_text().splitlines()[0]
    assert header.endswith("model_bytes_per_elem,copy_equiv_bytes_per_elem")
    assert "Copy-equivalent bytes per logit element" in (tmp_path / "gpu_bench.md").read_text()
    lines = gpu_check.bench_lines(data)
    assert lines[1].startswith("  64x10 f32: vl ") and "eager" in lines[1] and "B/el" in lines[1]
