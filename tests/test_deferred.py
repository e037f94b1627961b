"""validate="deferred": the queue of status records and when it raises (CPU stand-ins for GPU
events; the GPU path itself is exercised by tests/test_cuda.py where a GPU exists)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import validated_loss as vl
from validated_loss import _deferred


class NotYet:
    """An event whose copy has not landed until `land()`."""

    def __init__(self):
        self.done = False

    def query(self):
        return self.done


def status_of(position, value, count):
    return torch.tensor([position, value, count, -1, -1, 0], dtype=torch.int64)


@pytest.fixture(autouse=True)
def empty_queue():
    _deferred._pending.clear()
    yield
    _deferred._pending.clear()


def test_a_clean_status_never_raises():
    _deferred.submit(status_of(-1, -1, 0), [4], 5, -100, [4, 5])
    _deferred.check_pending()
    assert _deferred.pending_count() == 0


def test_a_bad_status_raises_the_kernels_error_naming_its_call():
    _deferred.submit(status_of(2, 9, 1), [4], 5, -100, [4, 5])
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        _deferred.check_pending()
    message = str(info.value)
    assert message.startswith("Target 9 is out of bounds. target[2] = 9")
    assert "validate='deferred'" in message and "call #" in message and "test_deferred.py" in message
    assert info.value.position == (2,) and info.value.value == 9 and info.value.count == 1
    _deferred.check_pending()  # reported once, then the queue is clear


def test_nothing_is_raised_before_the_copy_lands():
    _deferred.submit(status_of(0, -7, 3), [3], 5, -100, [3, 5])
    event = NotYet()
    _deferred._pending[-1].ready = event
    _deferred.check_pending()  # must not block or raise
    assert _deferred.pending_count() == 1
    event.done = True
    with pytest.raises(IndexError, match="Target -7 is out of bounds"):
        _deferred.check_pending()


def test_the_next_loss_call_reports_an_earlier_deferred_error():
    _deferred.submit(status_of(1, 12, 1), [2, 3], 10, -100, [2, 10, 3])
    x, t = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(vl.TargetOutOfRangeError, match=r"target\[0, 1\] = 12"):
        vl.cross_entropy(x, t, validate="deferred")
    assert torch.isfinite(vl.cross_entropy(x, t, validate="deferred"))  # the next call is clean


def test_backward_reports_a_pending_error():
    x = torch.randn(4, 5, requires_grad=True)
    loss = vl.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    _deferred.submit(status_of(3, 5, 1), [4], 5, -100, [4, 5])
    with pytest.raises(vl.TargetOutOfRangeError):
        loss.backward()
    assert x.grad is None  # nothing written after the error


def test_cpu_calls_raise_at_once_in_every_mode():
    x, t = torch.randn(3, 4), torch.tensor([0, 4, 1])
    for mode in ("sync", "deferred", "off"):
        with pytest.raises(vl.TargetOutOfRangeError):
            vl.cross_entropy(x, t, validate=mode)
    assert _deferred.pending_count() == 0


ROOT = Path(__file__).resolve().parent.parent
RULES = ["tests/deferred_test.cpp", "csrc/deferred_queue.cpp", "csrc/graph_slots.cpp"]


@pytest.mark.parametrize("flags", [["-O2"], ["-O1", "-fsanitize=undefined,address", "-fno-sanitize-recover=all"]],
                         ids=["plain", "sanitized"])
def test_queue_and_slot_rules_on_the_host(tmp_path, flags):
    """The queue's and the graph slots' rules (csrc/deferred_queue.h, graph_slots.h), torch-free,
    with stand-ins for CUDA events and mapped pinned memory."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / "deferred_test"
    build = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}", *flags,
                            *(str(ROOT / f) for f in RULES), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and " 0 failures" in run.stdout, run.stdout + run.stderr
