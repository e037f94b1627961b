#!/usr/bin/env python3
"""make gpu-check: everything a GPU can tell about validated_loss, in one command, offline, in minutes.

    make gpu-check [PYTHON=python3] [OUT=build/gpu-check] [FAST=1] [ONLY=build,bench]
    python scripts/gpu_check.py [--out DIR] [--fast] [--only STEPS] [--budget SECONDS] [--dry-run]

Uses the interpreter that runs it (the machine's Python and torch: no virtual environment, nothing
installed or downloaded). Refuses in one line, exit status 2, where torch.cuda.is_available() is
False or no nvcc is found. Otherwise runs these steps, each in its own process with a time limit;
a step that fails or runs out of time is recorded and the later steps still run:

  build        setup.py build_ext --inplace for the GPU present (TORCH_CUDA_ARCH_LIST = its compute
               capability, MAX_JOBS = the cores), then one CUDA loss checked against torch
  validation   tests/test_cuda.py's validation-mode tests: sync, deferred, off, graph capture, a bad
               target then a good call in the same process (no device-side assert), compiled calls
  sync-debug   tests/test_cuda.py's tests that run deferred (and compiled 'sync') calls under
               torch.cuda.set_sync_debug_mode("error")
  cuda-grid    the rest of tests/test_cuda.py: the GPU grid of tests/cuda_grid.py (the one
               tests/test_cuda_emu.py runs through the emulated kernels), in parallel shards
  parity-cuda  tests/test_wrong_numbers.py and tests/test_nonfinite_corners.py with validated_loss's
               calls routed to CUDA tensors (scripts/gpu_check_plugin.py), torch on the CPU as reference
  sanitizer    compute-sanitizer memcheck and racecheck over scripts/gpu_check_kernels.py's small
               grid, our kernels only (skipped, and said so, where compute-sanitizer is absent)
  bench        benchmarks/gpu_bench.py: validated_loss vs torch eager, torch.compile, Liger-Kernel and
               flash-attn (when importable), CUDA-event timing, bandwidth against a copy

Everything goes to OUT (default build/gpu-check/): one log per process, JUnit XML per pytest
process, gpu_bench.md/.csv/.json/.png, summary.txt/.json; the summary is printed at the end.
FAST=1: a fifth of the grid, the small sanitizer grid, the benchmark's first shape only.
Exit status: 0 every step passed (or was skipped for a missing optional tool), 1 a step failed, ran
out of time or could not run, 2 refused or bad arguments. (`make` reports any failure as 2: run
the script directly to tell them apart.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFUSED = 2
DEFAULT_OUT = os.path.join("build", "gpu-check")
DEFAULT_BUDGET = 470.0  # seconds: the 8 minutes, less time for the summary
KILL_GRACE = 10.0  # seconds between SIGINT (pytest then writes its JUnit XML) and SIGKILL

# tests/test_cuda.py in three groups; every test is in exactly one (tests/test_gpu_check.py checks it).
SYNC_DEBUG_TERMS = "synchroniz or replay_with_a_bad_target"
VALIDATION_TERMS = "bad_target or off_mode or invalid_row or deferred or under_compile or cuda_graph or check_finite"
K_SYNC_DEBUG = SYNC_DEBUG_TERMS
K_VALIDATION = f"({VALIDATION_TERMS}) and not ({SYNC_DEBUG_TERMS})"
K_GRID = f"not ({VALIDATION_TERMS} or {SYNC_DEBUG_TERMS})"
PARITY_SUITES = ["tests/test_wrong_numbers.py", "tests/test_nonfinite_corners.py"]  # make test-cuda-emu's
FAST_KEEP = 5  # FAST=1 keeps one parametrized grid case in 5

STEP_NAMES = ["build", "validation", "sync-debug", "cuda-grid", "parity-cuda", "sanitizer", "bench"]
# name -> (budget full, budget FAST, the least worth running with), seconds
BUDGETS = {
    "build": (300, 300, 60),
    "validation": (60, 45, 20),
    "sync-debug": (45, 30, 15),
    "cuda-grid": (150, 45, 30),
    "parity-cuda": (45, 30, 15),
    "sanitizer": (90, 45, 25),
    "bench": (150, 60, 45),
}

PROBE = r"""
import importlib.util, json, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import torch
except Exception as e:
    info["error"] = "cannot import torch: %s: %s" % (type(e).__name__, e)
    print(json.dumps(info))
    raise SystemExit(0)
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=bool(torch.cuda.is_available()))
try:
    from torch.utils import cpp_extension
    info["torch_cuda_home"] = cpp_extension.CUDA_HOME
except Exception:
    pass
if info["cuda_available"]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    info.update(gpu=props.name, capability="%d.%d" % (props.major, props.minor),
                gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
modules = {}
for name in ("pytest", "setuptools", "ninja", "triton", "liger_kernel", "flash_attn", "matplotlib"):
    version = None
    if importlib.util.find_spec(name) is not None:
        try:
            from importlib.metadata import version as v
            version = v(name.replace("_", "-"))
        except Exception:
            version = "present"
    modules[name] = version
info["modules"] = modules
print(json.dumps(info))
"""

BUILD_SMOKE = r"""
import torch, torch.nn.functional as F
import validated_loss as vl
from validated_loss import _build_info
assert _build_info.CUDA, "the in-place build has no CUDA kernels"
assert torch._C._dispatch_has_kernel_for_dispatch_key("validated_loss::cross_entropy_fwd", "CUDA")
x = torch.randn(8, 1000, device="cuda", requires_grad=True)
t = torch.randint(0, 1000, (8,), device="cuda")
loss = vl.cross_entropy(x, t)
loss.backward()
torch.cuda.synchronize()
ref = F.cross_entropy(x.detach(), t)
assert torch.allclose(loss.detach(), ref, rtol=1e-5, atol=1e-5), (loss.item(), ref.item())
print("smoke: one CUDA loss and its gradient ran, loss %.6f (torch %.6f); archs %s"
      % (loss.item(), ref.item(), _build_info.CUDA_ARCHS))
"""


# ------------------------------------------------------------------------------------------ arguments


def env_flag(value, name="FAST"):
    """FAST=1/true/yes/on -> True; unset, empty, 0/false/no/off -> False; anything else: ValueError."""
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={value!r}: expected 1 or 0")


def parse_steps(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STEP_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"steps are among {', '.join(STEP_NAMES)}; got {text!r}")
    return names


def parse_args(argv=None, environ=None):
    environ = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=environ.get("OUT") or DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--fast", action="store_true", default=None, help="reduced grid, first benchmark shape only")
    p.add_argument("--only", type=parse_steps, default=None, help=f"comma-separated subset of: {', '.join(STEP_NAMES)}")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"seconds for all steps (default {DEFAULT_BUDGET:g})")
    p.add_argument("--shards", type=int, default=None,
                   help="processes sharing the GPU grid (default: cores / 4, at most 4)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the steps and their commands; run nothing, refuse nothing")
    args = p.parse_args(argv)
    if args.fast is None:
        try:
            args.fast = env_flag(environ.get("FAST"))
        except ValueError as error:
            p.error(str(error))
    if args.only is None and environ.get("ONLY"):
        try:
            args.only = parse_steps(environ["ONLY"])
        except argparse.ArgumentTypeError as error:
            p.error(f"ONLY: {error}")
    args.out_shown = args.out.rstrip("/") or "/"
    args.out = os.path.abspath(args.out)  # the steps run in the repository root
    if args.budget <= 0:
        p.error("--budget must be positive")
    if args.shards is not None and args.shards < 1:
        p.error("--shards must be >= 1")
    return args


# ------------------------------------------------------------------------------------------ the machine


def probe(python=None, timeout=120):
    """What the interpreter sees: torch, CUDA, the GPU, optional modules (a subprocess, so this
    process never initialises CUDA)."""
    python = python or sys.executable
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"executable": python, "error": f"cannot run {python}: {error}"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"executable": python, "error": f"{python} failed to report on torch: {tail}"}
    return json.loads(lines[-1])


def find_cuda_home(environ=None, torch_guess=None, defaults=("/usr/local/cuda",)):
    """(toolkit directory, nvcc path) or None: the first of $CUDA_HOME, $CUDA_PATH, the directory of
    the nvcc on PATH (links resolved), torch's guess and /usr/local/cuda that has bin/nvcc, those
    with include/cuda_runtime.h first (an nvcc wrapper outside the toolkit has no headers)."""
    environ = os.environ if environ is None else environ
    candidates = [environ.get("CUDA_HOME"), environ.get("CUDA_PATH")]
    on_path = shutil.which("nvcc", path=environ.get("PATH", ""))
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent.parent))
        candidates.append(str(Path(on_path).parent.parent))
    candidates += [torch_guess, *defaults]
    homes = [Path(c) for c in dict.fromkeys(c for c in candidates if c) if (Path(c) / "bin" / "nvcc").is_file()]
    if not homes:
        return None
    homes.sort(key=lambda h: not (h / "include" / "cuda_runtime.h").is_file())  # stable: order kept otherwise
    return str(homes[0]), str(homes[0] / "bin" / "nvcc")


def find_compute_sanitizer(cuda_home, environ=None):
    environ = os.environ if environ is None else environ
    found = shutil.which("compute-sanitizer", path=environ.get("PATH", ""))
    if found:
        return found
    if cuda_home:
        for rel in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer"):
            path = Path(cuda_home) / rel
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def tool_version(argv, pattern):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, out)
    return m.group(1) if m else None


def refusal(info, cuda_home):
    """The one-line refusal, or None when the machine can run the check."""
    exe = info.get("executable", sys.executable)
    if info.get("error"):
        return f"gpu-check: refused: {info['error']} (PYTHON={exe}); nothing was run"
    if not info.get("cuda_available"):
        why = ("a CPU-only build" if not info.get("torch_cuda")
               else f"built for CUDA {info['torch_cuda']}, but no device is visible")
        return (f"gpu-check: refused: torch.cuda.is_available() is False (torch {info.get('torch')}, {why}; "
                f"PYTHON={exe}); nothing was run")
    if cuda_home is None:
        return ("gpu-check: refused: no nvcc (looked in $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, torch's CUDA_HOME and "
                "/usr/local/cuda/bin), so the extension cannot be built; nothing was run")
    return None


# ------------------------------------------------------------------------------------------ steps


@dataclass
class Cmd:
    argv: list
    log: str  # file name under OUT
    env: dict = field(default_factory=dict)
    results: str | None = None  # pytest: the plugin's JSON-lines file under OUT
    junit: str | None = None


@dataclass
class Step:
    name: str
    kind: str  # build | pytest | sanitizer | bench
    cmds: list
    budget: float
    reserve: float
    sequential: bool = False  # commands one after another (else at the same time)
    stop_on_failure: bool = False  # sequential: the next command runs only if this one succeeded
    skip: str | None = None  # why it does not run (a missing optional tool)


@dataclass
class Result:
    name: str
    status: str  # ok | FAIL | timeout | skipped | not run
    seconds: float = 0.0
    detail: str = ""
    counts: dict = field(default_factory=dict)
    first_failure: str | None = None
    extra: dict = field(default_factory=dict)


def pytest_cmd(python, name, targets, out, k=None, env=None):
    junit, results = f"junit-{name}.xml", f"results-{name}.jsonl"
    argv = [python, "-m", "pytest", *targets, "-p", "gpu_check_plugin", "-p", "no:cacheprovider", "-rfE",
            "--tb=short", f"--junitxml={os.path.join(out, junit)}"]
    if k:
        argv += ["-k", k]
    return Cmd(argv, f"{name}.log", dict(env or {}, VL_GPU_CHECK_RESULTS=os.path.join(out, results)),
               results=results, junit=junit)


def default_shards(cores):
    return max(1, min(4, (cores or 1) // 4))


def make_plan(args, python, machine):
    """The steps, in order, with their commands and budgets. `machine`: capability, cores,
    cuda_home, sanitizer (paths or None)."""
    out, fast = args.out, args.fast
    cores = machine.get("cores") or os.cpu_count() or 1
    paths = [str(ROOT / "scripts"), str(ROOT), os.environ.get("PYTHONPATH")]
    base_env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    keep = {"VL_GPU_CHECK_KEEP": str(FAST_KEEP)} if fast else {}

    def budget(name):
        full, quick, least = BUDGETS[name]
        return (quick if fast else full), least

    steps = []
    scripts_dir = sysconfig.get_path("scripts")  # ninja installed with this Python lives here
    cuda_home = machine.get("cuda_home")
    path = os.pathsep.join(p for p in [scripts_dir, cuda_home and os.path.join(cuda_home, "bin"),
                                       os.environ.get("PATH", "")] if p)
    build_env = {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": machine.get("capability") or "",
                 "MAX_JOBS": str(cores), "PATH": path}
    if cuda_home:
        build_env["CUDA_HOME"] = cuda_home
    steps.append(Step("build", "build", [
        Cmd([python, "setup.py", "build_ext", "--inplace"], "build.log", build_env),
        Cmd([python, "-c", BUILD_SMOKE], "build-smoke.log", base_env),
    ], *budget("build"), sequential=True, stop_on_failure=True))
    steps.append(Step("validation", "pytest",
                      [pytest_cmd(python, "validation", ["tests/test_cuda.py"], out, K_VALIDATION, base_env)],
                      *budget("validation")))
    steps.append(Step("sync-debug", "pytest",
                      [pytest_cmd(python, "sync-debug", ["tests/test_cuda.py"], out, K_SYNC_DEBUG, base_env)],
                      *budget("sync-debug")))
    shards = args.shards or default_shards(cores)
    grid = []
    for i in range(shards):
        name = "cuda-grid" if shards == 1 else f"cuda-grid-{i}"
        env = dict(base_env, **keep)
        if shards > 1:
            env["VL_GPU_CHECK_SHARD"] = f"{i}/{shards}"
        grid.append(pytest_cmd(python, name, ["tests/test_cuda.py"], out, K_GRID, env))
    steps.append(Step("cuda-grid", "pytest", grid, *budget("cuda-grid")))
    steps.append(Step("parity-cuda", "pytest",
                      [pytest_cmd(python, "parity-cuda", PARITY_SUITES, out, None,
                                  dict(base_env, VL_GPU_CHECK_ROUTE="cuda"))], *budget("parity-cuda")))
    sanitizer = machine.get("sanitizer")
    driver = [python, "scripts/gpu_check_kernels.py"] + (["--small"] if fast else [])
    san_env = dict(base_env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # every allocation exact: no pool to hide in
    san_cmds = [Cmd([sanitizer or "compute-sanitizer", "--tool", tool, "--kernel-name", "kns=validated_loss",
                     "--error-exitcode", "86", "--print-limit", "30", *driver], f"sanitizer-{tool}.log", san_env)
                for tool in ("memcheck", "racecheck")]
    # memcheck and racecheck side by side (two processes on the one GPU): each gets the whole step's time
    steps.append(Step("sanitizer", "sanitizer", san_cmds, *budget("sanitizer"),
                      skip=None if sanitizer else "compute-sanitizer not found (PATH, CUDA_HOME)"))
    steps.append(Step("bench", "bench", [
        Cmd([python, "benchmarks/gpu_bench.py", "--out", out, "--time-budget", "{budget}"]
            + (["--fast"] if fast else []), "bench.log", base_env)], *budget("bench")))
    if args.only:
        steps = [s for s in steps if s.name in args.only]
    return steps


def step_timeout(step, remaining, later):
    """Seconds this step may run: its budget, less what the later steps need at the least (`later`),
    but never below its own least (time permitting)."""
    return max(0.0, min(step.budget, max(remaining - later, min(step.reserve, remaining))))


# ------------------------------------------------------------------------------------------ running


def _kill(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_cmds(cmds, out, timeout, sequential=False, cwd=ROOT, stop_on_failure=False):
    """Runs the commands (in parallel, or one after another), each with stdout+stderr in its log,
    all within `timeout` seconds: past it, SIGINT to each process group (pytest then writes its
    report), SIGKILL KILL_GRACE seconds later. Returns [(returncode or None if not started,
    timed_out)] in order."""
    deadline = time.monotonic() + timeout
    results = [(None, False)] * len(cmds)
    batches = [[i] for i in range(len(cmds))] if sequential else [list(range(len(cmds)))]
    for batch in batches:
        if time.monotonic() >= deadline:
            break
        if stop_on_failure and any(rc not in (None, 0) for rc, _ in results):
            break
        procs = {}
        try:
            for i in batch:
                c = cmds[i]
                argv = [a.replace("{budget}", f"{max(5.0, deadline - time.monotonic() - 15):.0f}") for a in c.argv]
                log = open(os.path.join(out, c.log), "w")
                log.write("$ " + " ".join(shlex.quote(a) for a in argv) + "\n")
                log.flush()
                env = dict(os.environ, **c.env)
                procs[i] = (subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True), log)
            interrupted_at = None
            while any(p.poll() is None for p, _ in procs.values()):
                now = time.monotonic()
                if interrupted_at is None and now >= deadline:
                    interrupted_at = now
                    for p, _ in procs.values():
                        if p.poll() is None:
                            _kill(p, signal.SIGINT)
                elif interrupted_at is not None and now >= interrupted_at + KILL_GRACE:
                    for p, _ in procs.values():
                        if p.poll() is None:
                            _kill(p, signal.SIGKILL)
                time.sleep(0.2)
            for i, (p, _) in procs.items():
                results[i] = (p.returncode, interrupted_at is not None)
        finally:
            for p, log in procs.values():
                if p.poll() is None:
                    _kill(p, signal.SIGKILL)
                    p.wait()
                log.close()
    return results


# ------------------------------------------------------------------------------------------ reading results

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def result_counts(paths):
    """Counts of outcomes and the first failure from gpu_check_plugin's JSON-lines files."""
    counts = dict.fromkeys(OUTCOMES, 0)
    first = None
    for path in paths:
        if not path or not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                counts[rec.get("outcome", "error")] = counts.get(rec.get("outcome", "error"), 0) + 1
                if first is None and rec.get("outcome") in ("failed", "error"):
                    first = rec["nodeid"] + (f": {rec['message']}" if rec.get("message") else "")
    return counts, first


def junit_counts(paths):
    """The same from JUnit XML (where the plugin's file is missing)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    first = None
    for path in paths:
        if not path or not os.path.exists(path):
            continue
        root = ET.parse(path).getroot()
        for case in root.iter("testcase"):
            kinds = [child.tag for child in case]
            if "failure" in kinds or "error" in kinds:
                counts["failed" if "failure" in kinds else "error"] += 1
                if first is None:
                    node = case.find("failure") if "failure" in kinds else case.find("error")
                    msg = (node.get("message") or "").splitlines()[0][:300] if node is not None else ""
                    first = f"{case.get('classname')}::{case.get('name')}" + (f": {msg}" if msg else "")
            elif "skipped" in kinds:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    return counts, first


def last_line(path, pattern=None):
    try:
        with open(path, errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return ""
    if pattern:
        lines = [line for line in lines if re.search(pattern, line)]
    return lines[-1] if lines else ""


def counts_text(counts):
    parts = [f"{counts.get(k, 0)} {k}" for k in OUTCOMES if counts.get(k)]
    return ", ".join(parts) if parts else "no tests ran"


def sanitizer_findings(text, tool):
    """Errors (memcheck) or hazards (racecheck) from compute-sanitizer's closing summary line."""
    if tool == "racecheck":
        m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
        if m:
            found = int(m.group(2)) + int(m.group(3))
            return found, f"{m.group(1)} hazards ({m.group(2)} errors, {m.group(3)} warnings)"
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    if m:
        return int(m.group(1)), f"{m.group(1)} errors"
    return None, "no summary line"


def interpret(step, outcomes, seconds, out):
    """A Result from what the step's processes left behind."""
    timed_out = any(t for _, t in outcomes)
    rcs = [rc for rc, _ in outcomes]
    failed = any(rc not in (0, None) for rc in rcs) or any(rc is None for rc in rcs)
    status = "timeout" if timed_out else ("FAIL" if failed else "ok")
    res = Result(step.name, status, round(seconds, 1))
    if step.kind == "pytest":
        files = [os.path.join(out, c.results) for c in step.cmds if c.results]
        counts, first = result_counts(files)
        if not any(os.path.exists(f) for f in files):
            counts, first = junit_counts([os.path.join(out, c.junit) for c in step.cmds if c.junit])
        res.counts, res.first_failure = counts, first
        res.detail = counts_text(counts)
        if status == "ok" and (counts["failed"] or counts["error"]):
            res.status = "FAIL"
        if failed and not (counts["failed"] or counts["error"]):
            codes = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}
            bad = [rc for rc in rcs if rc not in (0, None)]
            why = codes.get(bad[0], f"exit status {bad[0]}") if bad else "did not start"
            res.detail += f"; pytest: {why} ({last_line(os.path.join(out, step.cmds[0].log))[:160]})"
    elif step.kind == "build":
        build_rc, smoke_rc = rcs[0], rcs[1] if len(rcs) > 1 else None
        build_log, smoke_log = os.path.join(out, "build.log"), os.path.join(out, "build-smoke.log")
        if build_rc is None:
            res.detail = "the build did not start"
        elif timed_out and smoke_rc is None:
            res.detail = "the build ran out of time"
        elif build_rc != 0:
            res.detail = "build failed: " + (last_line(build_log, r"[Ee]rror") or last_line(build_log))[:200]
        elif smoke_rc != 0:
            res.detail = "built, but the smoke check failed: " + last_line(smoke_log)[:200]
        else:
            res.detail = last_line(smoke_log)[:200]
    elif step.kind == "sanitizer":
        parts, total = [], 0
        for c, (rc, _) in zip(step.cmds, outcomes):
            tool = "racecheck" if "racecheck" in c.argv else "memcheck"
            if rc is None:
                parts.append(f"{tool} not run")
                continue
            try:
                text = Path(out, c.log).read_text(errors="replace")
            except OSError:
                text = ""
            n, words = sanitizer_findings(text, tool)
            total += n or 0
            parts.append(f"{tool} {words}" + ("" if rc in (0, 86) else f" (exit status {rc})"))
        res.detail = "; ".join(parts)
        res.counts = {"findings": total}
        if total and res.status == "ok":
            res.status = "FAIL"
    elif step.kind == "bench":
        bench = load_bench(out)
        if bench:
            res.extra["bench"] = bench
            shapes = list(dict.fromkeys(r["shape"] + " " + r["dtype"] for r in bench["rows"]))
            res.detail = f"{len(shapes)} shape(s) measured"
            skipped = [s for s in bench.get("config", {}).get("skipped", []) if " at " not in s["what"]]
            if skipped:
                res.detail += f", {len(skipped)} skipped ({skipped[0]['what']}: {skipped[0]['reason']})"
        else:
            res.detail = "no results: " + last_line(os.path.join(out, "bench.log"))[:160]
    return res


def load_bench(out, stem="gpu_bench"):
    try:
        with open(os.path.join(out, f"{stem}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ summary

SHORT = {"validated_loss": "vl", "torch eager": "eager", "torch.compile": "compile", "liger-kernel": "liger",
         "flash-attn": "flash"}
DTYPE_SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}


def bench_lines(bench):
    """fwd+bwd per shape: ms and bandwidth / copy for each main contender, validated_loss's
    copy-equivalent bytes per logit element."""
    rows = [r for r in bench.get("rows", []) if r["pass"] == "fwd+bwd" and r["contender"] in SHORT]
    if not rows:
        return []
    lines = ["bench fwd+bwd, ms (bandwidth / copy of the same bytes); vl's bytes per logit element at copy speed:"]
    for shape, dtype in dict.fromkeys((r["shape"], r["dtype"]) for r in rows):
        group = {r["contender"]: r for r in rows if (r["shape"], r["dtype"]) == (shape, dtype)}
        cells = [f"{SHORT[name]} {r['ms']:.3g} ({100 * r['bw_fraction_of_copy']:.0f}%)" for name, r in group.items()]
        ours = group.get("validated_loss")
        tail = (f" | vl {ours['copy_equiv_bytes_per_elem']:.1f} B/el"
                if ours and "copy_equiv_bytes_per_elem" in ours else "")
        lines.append(f"  {shape} {DTYPE_SHORT.get(dtype, dtype)}: " + ", ".join(cells) + tail)
    return lines


def summarize(header, results, out, total_seconds, budget):
    """The printed summary (about a dozen lines), from the machine's facts and the steps' results."""
    by = {r.name: r for r in results}
    lines = [header]
    if "build" in by:
        r = by["build"]
        line = f"build: {r.status} in {r.seconds:.0f} s ({r.extra.get('how', '')}); {r.detail}"
        lines.append(line.replace(" ()", ""))
    tests = [r for r in results if r.counts and any(k in r.counts for k in OUTCOMES)]
    if tests:
        total = {k: sum(r.counts.get(k, 0) for r in tests) for k in OUTCOMES}
        per = "; ".join(f"{r.name} {counts_text(r.counts)}" + ("" if r.status in ("ok", "FAIL") else f" [{r.status}]")
                        for r in tests)
        lines.append(f"tests: {counts_text(total)} ({per})")
        firsts = [f"{r.name}: {r.first_failure}" for r in tests if r.first_failure]
        if firsts:
            lines.append(f"first failure: {firsts[0][:220]}")
    if "sanitizer" in by:
        r = by["sanitizer"]
        lines.append(f"sanitizer: {r.status}" + (f", {r.detail}" if r.detail else ""))
    if "bench" in by:
        r = by["bench"]
        lines.append(f"bench: {r.status} in {r.seconds:.0f} s, {r.detail}")
        if r.extra.get("bench"):
            lines += bench_lines(r.extra["bench"])
    verdict = "PASS" if all(r.status in ("ok", "skipped") for r in results) else "FAIL"
    lines.append("steps: " + " | ".join(f"{r.name} {r.status} {r.seconds:.0f}s" for r in results)
                 + f" | total {total_seconds:.0f} s of {budget:.0f} -> {verdict}")
    lines.append(f"everything is in {out}/ (summary.txt/.json, one .log per process, junit-*.xml, "
                 "gpu_bench.md/.csv/.json/.png)")
    return lines


def header_line(info, nvcc_version, fast):
    gpu = info.get("gpu", "no GPU")
    cap = info.get("capability")
    sm = f"sm_{cap.replace('.', '')}, " if cap else ""
    return (f"gpu-check: {gpu} ({sm}{info.get('gpu_memory_gib', '?')} GiB) | torch {info.get('torch')} "
            f"(CUDA {info.get('torch_cuda')}) | nvcc {nvcc_version or '?'} | Python {info.get('python')} | "
            f"{'FAST=1' if fast else 'full'}")


def write_summary(out, lines, info, results, machine):
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    payload = {"machine": dict(info, **{k: v for k, v in machine.items() if k != "cores"}, cores=machine.get("cores")),
               "steps": [{"name": r.name, "status": r.status, "seconds": r.seconds, "detail": r.detail,
                          "counts": r.counts, "first_failure": r.first_failure} for r in results]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(payload, f, indent=2)


OUR_FILES = re.compile(r"^(.*\.log|junit-.*\.xml|results-.*\.jsonl|gpu_bench\.(md|csv|json|png)"
                       r"|summary\.(txt|json)|env\.json)$")


def clear_out(out):
    """Removes what an earlier run of this script left in OUT (its own file names only)."""
    for name in os.listdir(out):
        if OUR_FILES.match(name) and os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


# ------------------------------------------------------------------------------------------ main


def main(argv=None, probe_fn=probe):
    args = parse_args(argv)
    python = sys.executable
    started = time.monotonic()
    info = probe_fn(python)
    found = find_cuda_home(torch_guess=info.get("torch_cuda_home"))
    cuda_home, nvcc = found if found else (None, None)
    if not args.dry_run:
        why = refusal(info, found)
        if why:
            print(why, file=sys.stderr)
            return REFUSED
    machine = {"capability": info.get("capability") or ("X.Y" if args.dry_run else None), "cores": os.cpu_count(),
               "cuda_home": cuda_home, "nvcc": nvcc, "sanitizer": find_compute_sanitizer(cuda_home)}
    steps = make_plan(args, python, machine)
    if args.dry_run:
        print(f"gpu-check plan (dry run; {'FAST=1' if args.fast else 'full'}, budget {args.budget:.0f} s, "
              f"OUT={args.out_shown}):")
        for s in steps:
            print(f"  {s.name}: up to {s.budget:.0f} s" + (f" (skipped: {s.skip})" if s.skip else ""))
            for c in s.cmds:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in c.env.items() if k != "PATH")
                print(f"    {env} {' '.join(shlex.quote(a) for a in c.argv)}".replace("\n", " ")[:400])
        return 0

    os.makedirs(args.out, exist_ok=True)
    clear_out(args.out)
    nvcc_version = tool_version([nvcc, "--version"], r"release ([\d.]+)")
    machine["nvcc_version"] = nvcc_version
    if machine["sanitizer"]:
        machine["sanitizer_version"] = tool_version([machine["sanitizer"], "--version"], r"Version ([\w.]+)")
    with open(os.path.join(args.out, "env.json"), "w") as f:
        json.dump(dict(info, **machine), f, indent=2)
    header = header_line(info, nvcc_version, args.fast)
    print(header, flush=True)

    results = []
    budget_end = started + args.budget
    built = True
    try:
        for i, step in enumerate(steps):
            later = sum(s.reserve for s in steps[i + 1:] if not s.skip)
            remaining = budget_end - time.monotonic()
            stamp = f"[{time.monotonic() - started:5.0f} s]"
            if step.skip:
                results.append(Result(step.name, "skipped", 0.0, step.skip))
            elif step.name != "build" and not built:
                results.append(Result(step.name, "not run", 0.0, "the build failed"))
            elif remaining < 5:
                results.append(Result(step.name, "not run", 0.0, "out of time"))
            else:
                timeout = step_timeout(step, remaining, later)
                print(f"gpu-check {stamp} {step.name} (up to {timeout:.0f} s) ...", flush=True)
                t0 = time.monotonic()
                outcomes = run_cmds(step.cmds, args.out, timeout, step.sequential,
                                    stop_on_failure=step.stop_on_failure)
                res = interpret(step, outcomes, time.monotonic() - t0, args.out)
                if step.name == "build":
                    res.extra["how"] = (f"sm_{(machine['capability'] or '?').replace('.', '')}, {machine['cores']} jobs"
                                        + ("" if shutil.which("ninja", path=step.cmds[0].env.get("PATH")) else
                                           ", no ninja: one file at a time"))
                    built = res.status == "ok"
                results.append(res)
            r = results[-1]
            print(f"gpu-check {stamp} {r.name}: {r.status} in {r.seconds:.0f} s; {r.detail}"[:300], flush=True)
    except KeyboardInterrupt:
        results.append(Result("interrupted", "FAIL", 0.0, "stopped by the user"))
    total = time.monotonic() - started
    lines = summarize(header, results, args.out_shown, total, args.budget)
    write_summary(args.out, lines, info, results, machine)
    print("\n" + "\n".join(lines))
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
