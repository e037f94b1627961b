"""pytest plugin for make gpu-check (scripts/gpu_check.py loads it with `-p gpu_check_plugin`).

Three things, each switched on by an environment variable, none of them touching a test file:

  VL_GPU_CHECK_RESULTS=path   one JSON line per test outcome, written as it happens, so that the
                              counts survive a step killed at its time limit (pytest writes its
                              JUnit XML only at the end)
  VL_GPU_CHECK_KEEP=k         keep one parametrized case in k (chosen by a hash of its id, so every
                              shape keeps some of its cases): the FAST=1 grid
  VL_GPU_CHECK_SHARD=i/n      keep the cases whose id hashes to i mod n: n processes share the grid
  VL_GPU_CHECK_ROUTE=device   validated_loss.cross_entropy and linear_cross_entropy move CPU tensor
                              arguments to `device`, run there, and move the results back: suites
                              written for CPU tensors (tests/test_wrong_numbers.py,
                              tests/test_nonfinite_corners.py) then compare the CUDA kernels with
                              torch's CPU results, as `make test-cuda-emu` does with the emulated
                              kernels. Autograd follows the copies, so gradients reach the CPU leaves.
"""

import functools
import json
import os
import zlib

_routed = {"calls": 0}


def _keep(nodeid, keep, shard):
    h = zlib.crc32(nodeid.encode())
    if keep > 1 and "[" in nodeid and h % keep:
        return False
    if shard is not None:
        i, n = shard
        return (h // max(keep, 1)) % n == i
    return True


def parse_shard(text):
    """'i/n' -> (i, n) with 0 <= i < n."""
    i, n = (int(v) for v in text.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: expected i/n with 0 <= i < n")
    return i, n


def pytest_collection_modifyitems(config, items):
    keep = int(os.environ.get("VL_GPU_CHECK_KEEP") or 1)
    shard = os.environ.get("VL_GPU_CHECK_SHARD")
    shard = parse_shard(shard) if shard else None
    if keep <= 1 and shard is None:
        return
    kept, dropped = [], []
    for item in items:
        (kept if _keep(item.nodeid, keep, shard) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# ------------------------------------------------------------------------------------ results file


def _write(record):
    path = os.environ.get("VL_GPU_CHECK_RESULTS")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call":
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
    elif report.failed:
        outcome = "error"  # in a fixture's setup or teardown
    elif report.when == "setup" and report.skipped:
        outcome = "skipped"
    else:
        return
    record = {"nodeid": report.nodeid, "outcome": outcome, "when": report.when,
              "seconds": round(getattr(report, "duration", 0.0), 4)}
    if outcome in ("failed", "error"):
        record["message"] = _first_line(report)
    _write(record)


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid or "<collection>", "outcome": "error", "when": "collect",
                "message": _first_line(report)})


def _first_line(report):
    text = getattr(report, "longreprtext", "") or ""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("E ")]
    line = lines[0][1:].strip() if lines else (text.strip().splitlines() or [""])[-1]
    return line[:300]


# ------------------------------------------------------------------------------------ routing


def _move(value, device):
    import torch

    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
        return value.to(device)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_move(v, device) for v in value)
    return value


def _back(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to("cpu")
    if isinstance(value, tuple):
        return tuple(_back(v) for v in value)
    return value


def routed(fn, device):
    """fn with its CPU tensor arguments moved to `device` and its tensor results moved back to the
    CPU; a call whose tensors are on no CPU is passed through unchanged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        tensors = [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)]
        if not any(t.device.type == "cpu" for t in tensors):
            return fn(*args, **kwargs)
        _routed["calls"] += 1
        out = fn(*(_move(a, device) for a in args), **{k: _move(v, device) for k, v in kwargs.items()})
        return _back(out)

    wrapper.__wrapped_for_gpu_check__ = True
    return wrapper


def pytest_configure(config):
    device = os.environ.get("VL_GPU_CHECK_ROUTE")
    if not device:
        return
    import validated_loss as vl

    for name in ("cross_entropy", "linear_cross_entropy"):
        fn = getattr(vl, name)
        if not getattr(fn, "__wrapped_for_gpu_check__", False):
            setattr(vl, name, routed(fn, device))


def pytest_terminal_summary(terminalreporter):
    device = os.environ.get("VL_GPU_CHECK_ROUTE")
    if device:
        terminalreporter.write_line(f"gpu_check_plugin: {_routed['calls']} validated_loss calls on CPU tensors "
                                    f"were run on {device}")
