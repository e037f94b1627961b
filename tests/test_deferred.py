"""Deferred validation: the queue of status records and when it raises. The queue's and the graph
slots' rules run on the host with stand-ins for CUDA events (tests/deferred_test.cpp); the Python
tests queue CPU status records (landed at once) through the same ops. The GPU path itself is in
tests/test_cuda.py, run where a GPU exists."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import validated_loss as vl
from validated_loss import _deferred


def status_of(position, value, count):
    return torch.tensor([position, value, count, -1, -1, 0], dtype=torch.int64)


@pytest.fixture(autouse=True)
def empty_queue():
    _deferred.clear()
    yield
    _deferred.clear()


def error_of(status, target_shape, num_classes, logits_shape):
    """What the CPU path raises for this status record (raise_for_status, the one wording)."""
    with pytest.raises(vl.ValidatedLossError) as info:
        torch.ops.validated_loss.raise_for_status(status, target_shape, num_classes, -100, logits_shape)
    return info.value


def test_a_clean_status_never_raises():
    _deferred.submit(status_of(-1, -1, 0), [4], 5, -100, [4, 5])
    assert _deferred.pending_count() == 1
    vl.check_deferred()
    assert _deferred.pending_count() == 0


def test_a_bad_status_raises_the_cpu_error_naming_its_call():
    _deferred.submit(status_of(2, 9, 1), [4], 5, -100, [4, 5])
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.check_deferred()
    message = str(info.value)
    cpu_message = str(error_of(status_of(2, 9, 1), [4], 5, [4, 5]))
    assert message.startswith(cpu_message + "\n(found by deferred validation in the loss of call #")
    assert "test_deferred.py:" in message and "raised at the next loss call or backward" in message
    assert info.value.position == (2,) and info.value.value == 9 and info.value.count == 1
    assert info.value.num_classes == 5 and info.value.ignore_index == -100
    vl.check_deferred()  # reported once, then the queue is clear


def test_a_non_finite_status_raises_non_finite_logits_error():
    _deferred.submit(torch.tensor([-1, -1, 0, 3, 1, 2]), [4], 5, -100, [4, 5])
    with pytest.raises(vl.NonFiniteLogitsError) as info:
        vl.check_deferred()
    assert str(info.value).startswith("Non-finite logits: input[3] (row 3), class 1")
    assert (info.value.row, info.value.column) == (3, 1)


def test_the_first_call_wins_and_the_rest_is_dropped():
    _deferred.submit(status_of(1, 7, 1), [4], 5, -100, [4, 5])
    _deferred.submit(status_of(0, 8, 1), [4], 5, -100, [4, 5])
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.check_deferred()
    assert info.value.value == 7
    assert _deferred.pending_count() == 0
    vl.check_deferred()


def test_calls_are_numbered_and_named_once():
    """The origin the Python layer sets names the next queued check only; unnamed checks come from
    compiled graphs (the op queues them without Python running)."""
    messages = []
    for named in (True, False):
        if named:
            vl._C.set_call_origin("train.py:57 in step")
        torch.ops.validated_loss.deferred_submit(status_of(0, 5, 1), [2], 5, -100, [2, 5])
        with pytest.raises(vl.TargetOutOfRangeError) as info:
            vl.check_deferred()
        messages.append(str(info.value))
    first, second = (int(m.split("call #")[1].split(" ")[0]) for m in messages)
    assert second == first + 1
    assert "(train.py:57 in step)" in messages[0]
    assert "torch.compile graph" in messages[1] and "train.py" not in messages[1]


def test_which_eager_calls_queue_and_are_named(monkeypatch):
    """The Python layer names a call (the caller's file:line costs more than the check) exactly when
    the op will queue its status: 'deferred' on CUDA, and 'sync' on CUDA while capturing."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    modes = _deferred.VALIDATE_MODES
    assert [_deferred.may_queue(modes[m], cuda) for m in ("off", "sync", "deferred")] == [False, False, True]
    capturing[0] = True
    assert [_deferred.may_queue(modes[m], cuda) for m in ("off", "sync", "deferred")] == [False, True, True]
    assert not any(_deferred.may_queue(code, cpu) for code in modes.values())


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
RULES = ["tests/deferred_test.cpp", "csrc/validation/deferred_queue.cpp", "csrc/validation/graph_slots.cpp"]


@pytest.mark.parametrize("flags", [["-O2"], ["-O1", "-fsanitize=undefined,address", "-fno-sanitize-recover=all"]],
                         ids=["plain", "sanitized"])
def test_queue_and_slot_rules_on_the_host(tmp_path, flags):
    """The queue's and the graph slots' rules (csrc/validation/deferred_queue.h, graph_slots.h), torch-free,
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
