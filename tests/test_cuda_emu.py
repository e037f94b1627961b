"""The CUDA kernels executed on the CPU: the emulated build (make test-cuda-emu) serves CPU tensors
with csrc/cuda/'s host code and kernels, run by csrc/cuda_emu (threads as fibers, exact barriers and
warp operations). The same grid and comparisons as tests/test_cuda.py (tests/cuda_grid.py), plus
what only the emulation can vary: the thread and block schedule (a correct kernel gives bitwise the
same result under every one), events that land late, and graph capture and replay driven from here.

Skipped unless VALIDATED_LOSS_C_LIBRARY points at the emulated build (the Makefile sets it).
"""

import os
import re
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import seed_of, vl
from cuda_grid import (DTYPES, GRID, OPTIONS, REDUCTIONS, SHAPES, compare, compare_probabilities,
                       make_inputs, seeded)
from validated_loss import _library

pytestmark = pytest.mark.skipif(not _library.EMULATED_CUDA, reason="run by make test-cuda-emu (emulated CUDA build)")

DEV = "cpu"  # CPU tensors, CUDA kernels
emu = torch.ops.validated_loss_emu if _library.EMULATED_CUDA else None
SCHEDULES = ("forward", "reverse", "random:7")
# A reduced grid for the sanitizer pass (VL_CUDA_EMU_REDUCED=1): one layout, two options.
REDUCED = os.environ.get("VL_CUDA_EMU_REDUCED") == "1"


@pytest.fixture(autouse=True)
def schedule(request):
    """Each test under a seeded random schedule of its own unless it sets one."""
    os.environ["VL_CUDA_EMU_SCHEDULE"] = f"random:{seed_of(request.node.name) & 0xFFFF}"
    yield
    os.environ.pop("VL_CUDA_EMU_SCHEDULE", None)


def grid():
    """Every shape, dtype and layout of the GPU grid, each with a fifth of the option x reduction
    pairs (chosen by a hash, so every pair is covered across shapes): the whole GPU grid takes
    about half an hour emulated on two cores. The sanitizer pass takes a fifth of that again."""
    keep = 25 if REDUCED else 5
    return [g for g in GRID if seed_of(*g) % keep == 0]


@pytest.mark.parametrize("shape,dtype,lay,option,reduction", grid())
def test_parity_class_index(shape, dtype, lay, option, reduction):
    o = OPTIONS[option]
    seed = seed_of(shape, dtype, lay, option, reduction) & 0xFFFF
    x, t, w = make_inputs(shape, DTYPES[dtype], lay, weighted=o["weighted"], ignore=o["ignore"], seed=seed, device=DEV)
    compare(x, t, w, dict(o["kwargs"], reduction=reduction), seed)


PROB_SHAPES = ["tiny", "c33", "bvt", "c1023", "c4097", "c32771", "nchw"]  # the first 3: the reduced grid


@pytest.mark.parametrize("shape", PROB_SHAPES[:3] if REDUCED else PROB_SHAPES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("option", ["plain", "weight_smooth"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_probabilities(shape, dtype, option, reduction):
    compare_probabilities(shape, dtype, option, reduction, DEV)


def outputs_under(schedule, fn):
    os.environ["VL_CUDA_EMU_SCHEDULE"] = schedule
    return [t.detach().clone() for t in fn()]


@pytest.mark.parametrize("shape", ["c33", "c1000", "c4097", "c50257", "nchw"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_every_schedule_gives_the_same_bits(shape, dtype):
    """Threads and blocks in order, reversed and shuffled: a kernel without races cannot tell."""
    n, c, extra = SHAPES[shape]
    n = max(n, 40) if c < 2000 else n  # several blocks
    x = (torch.randn((n, c, *extra), generator=seeded(1)) * 3).to(DTYPES[dtype])
    t = torch.randint(0, c, (n, *extra), generator=seeded(2))
    t[0] = -100
    w = torch.rand(c, generator=seeded(3)) + 0.5
    q = torch.softmax(torch.randn(x.shape, generator=seeded(4)), 1).to(x.dtype)

    def run():
        xi = x.clone().requires_grad_()
        loss, lse = vl.cross_entropy(xi, t, weight=w.to(x.dtype), label_smoothing=0.1, reduction="none",
                                     lse_square_scale=1e-3, return_lse=True)
        (g,) = torch.autograd.grad(loss.sum() + lse.sum(), xi)
        xp = x.clone().requires_grad_()
        lp = vl.cross_entropy(xp, q, label_smoothing=0.1)
        (gp,) = torch.autograd.grad(lp, xp)
        return loss, lse, g, lp, gp, vl.cross_entropy(x, t, weight=w.to(x.dtype), reduction="sum")

    reference = outputs_under(SCHEDULES[0], run)
    for schedule in SCHEDULES[1:]:
        for a, b in zip(reference, outputs_under(schedule, run)):
            same_nans = (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num())
            assert torch.equal(a, b) or same_nans, schedule


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("shape", ["tiny", "c1000", "c4097", "nchw"])
def test_status_record_first_invalid_target(shape):
    """Several bad targets across blocks: the record keeps the lowest flat position, its value and
    the count, whatever order the blocks ran in; the rows get NaN and zero gradient."""
    n, c, extra = SHAPES[shape]
    n = max(n, 300)
    x = torch.randn((n, c, *extra), generator=seeded(5), requires_grad=True)
    t = torch.randint(0, c, (n, *extra), generator=seeded(6))
    flat = t.view(-1)
    bad = {len(flat) - 1: c, len(flat) // 2: -5, 7: c + 3, 3: -100}  # 3 is ignore_index
    for position, value in bad.items():
        flat[position] = value
    for schedule in SCHEDULES:
        os.environ["VL_CUDA_EMU_SCHEDULE"] = schedule
        status = torch.ops.validated_loss.cross_entropy_fwd(x.detach(), t, None, 0, -100, 0.0, False, 0)[3]
        assert status.tolist()[:3] == [7, c + 3, 3], schedule
        with pytest.raises(vl.TargetOutOfRangeError) as info:
            vl.cross_entropy(x, t)
        assert info.value.position == tuple(int(i) for i in torch.unravel_index(torch.tensor(7), t.shape))
        assert info.value.count == 3
        loss = vl.cross_entropy(x, t, reduction="none", validate="off")
        (g,) = torch.autograd.grad(loss.nansum(), x)
        rows = torch.isnan(loss)
        assert rows.view(-1).nonzero().view(-1).tolist() == sorted(p for p in bad if p != 3)
        assert torch.all(g.movedim(1, -1)[rows] == 0)


@pytest.mark.parametrize("shape", ["tiny", "c1000", "c4097"])
def test_check_finite_names_the_first_nonfinite_logit(shape):
    n, c, _ = SHAPES[shape]
    x = torch.randn(max(n, 300), c, generator=seeded(8))
    x[250, c // 2] = float("inf")
    x[40, c - 1] = float("nan")
    t = torch.zeros(x.shape[0], dtype=torch.long)
    with pytest.raises(vl.NonFiniteLogitsError) as info:
        vl.cross_entropy(x, t, check_finite=True)
    assert f"input[40] (row 40), class {c - 1} is NaN or infinite; 2 of 300 rows" in str(info.value)
    loss = vl.cross_entropy(x, t, reduction="none", validate="off")
    torch.testing.assert_close(loss, F.cross_entropy(x, t, reduction="none"), equal_nan=True)


def test_deferred_reports_once_the_copy_lands():
    """validate='deferred': the status copy's event reports 'not ready' twice; the error surfaces
    at the first call after it landed, naming the call that made it."""
    x = torch.randn(8, 5)
    bad = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    good = torch.zeros(8, dtype=torch.long)
    ops = torch.ops.validated_loss
    previous = emu.set_event_delay(2)
    try:
        ops.cross_entropy_fwd(x, bad, None, 1, -100, 0.0, False, 2)  # queued, not landed
        ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 2)  # checks: not landed yet
        ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 0)  # checks: still not
        with pytest.raises(vl.TargetOutOfRangeError) as info:
            ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 0)
    finally:
        emu.set_event_delay(previous)
    assert info.value.position == (5,) and "found by deferred validation" in str(info.value)
    ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 0)  # reported once
    vl.check_deferred()


@pytest.mark.parametrize("validate", [1, 2])
def test_graph_replay_publishes_a_bad_target(validate):
    """Captured forward (what torch.cuda.graph does): nothing is waited for or queued at capture;
    each replay runs the kernels again and publishes a bad status into a mapped slot, which the
    next check raises; a clean replay publishes nothing; the slot is recycled with the graph."""
    x = torch.randn(16, 1000, generator=seeded(9))
    t = torch.randint(0, 1000, (16,), generator=seeded(10))
    good = t.clone()
    ops = torch.ops.validated_loss
    ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, validate)  # warm-up: the first slots
    emu.begin_capture(0)
    try:
        loss = ops.cross_entropy_fwd(x, t, None, 1, -100, 0.0, False, validate)[0]
    finally:
        graph = emu.end_capture()
    try:
        vl.check_deferred()  # nothing replayed yet
        t[7] = 1000
        emu.replay(graph)
        assert torch.isnan(loss)
        with pytest.raises(vl.TargetOutOfRangeError) as info:
            vl.check_deferred()
        assert info.value.position == (7,) and "replay of the CUDA graph" in str(info.value)
        vl.check_deferred()  # reported once
        t.copy_(good)
        emu.replay(graph)
        vl.check_deferred()
        torch.testing.assert_close(loss, F.cross_entropy(x, good))
    finally:
        emu.destroy_graph(graph)


def captured_forward(x, t):
    """A graph holding one validating forward (validate=1: under capture, a published slot)."""
    ops = torch.ops.validated_loss
    ops.cross_entropy_fwd(x, torch.zeros_like(t), None, 1, -100, 0.0, False, 1)  # first slots, outside
    emu.begin_capture(0)
    try:
        loss = ops.cross_entropy_fwd(x, t, None, 1, -100, 0.0, False, 1)[0]
    finally:
        graph = emu.end_capture()
    return graph, loss


def test_a_live_clean_graph_costs_no_check():
    """While a captured graph lives and its replays are clean, eager calls find nothing pending
    (the check op is skipped); a bad replay, or the graph's release, makes one pending."""
    x = torch.randn(8, 5)
    t = torch.zeros(8, dtype=torch.long)
    vl.check_deferred()
    graph, _ = captured_forward(x, t)
    try:
        emu.replay(graph)
        assert _library._C.pending_checks() == 0
        t[3] = 9
        emu.replay(graph)
        assert _library._C.pending_checks() == 1
        with pytest.raises(vl.TargetOutOfRangeError):
            vl.check_deferred()
        assert _library._C.pending_checks() == 0
    finally:
        emu.destroy_graph(graph)
    assert _library._C.pending_checks() == 1  # the released graph's slot, recycled at the next check
    vl.check_deferred()
    assert _library._C.pending_checks() == 0


def test_an_error_from_a_graph_keeps_the_queued_checks():
    """A check that finds a graph replay's error drops only what it examined: a deferred call
    whose copy has not landed yet is still checked, and reported, later."""
    x = torch.randn(8, 5)
    t = torch.zeros(8, dtype=torch.long)
    bad = torch.tensor([0, 1, 2, 3, 4, 0, 7, 1])
    vl.check_deferred()
    graph, _ = captured_forward(x, t)
    ops = torch.ops.validated_loss
    previous = emu.set_event_delay(1)
    try:
        ops.cross_entropy_fwd(x, bad, None, 1, -100, 0.0, False, 2)  # queued, lands after one query
        t[2] = -5
        emu.replay(graph)
        with pytest.raises(vl.TargetOutOfRangeError) as from_graph:
            vl.check_deferred()
        assert from_graph.value.position == (2,) and "replay of the CUDA graph" in str(from_graph.value)
        with pytest.raises(vl.TargetOutOfRangeError) as from_queue:
            vl.check_deferred()
        assert from_queue.value.position == (6,) and "in the loss of call" in str(from_queue.value)
    finally:
        emu.set_event_delay(previous)
        emu.destroy_graph(graph)
        vl.check_deferred()


def test_deferred_check_leaves_another_threads_capture_intact():
    """One thread captures a graph (global mode, torch.cuda.graph's default) while another runs a
    deferred loss: that thread's check queries its copy's event, which must not invalidate the
    capture (CUDA refuses an event query in global mode while any thread captures)."""
    x = torch.randn(8, 5)
    good = torch.zeros(8, dtype=torch.long)
    ops = torch.ops.validated_loss
    ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 2)  # warm-up outside the capture
    vl.check_deferred()
    errors = []

    def other_thread():
        try:
            ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 2)  # queues a copy behind an event
            vl.check_deferred()  # queries the event
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    emu.begin_capture(0)
    try:
        ops.cross_entropy_fwd(x, good, None, 1, -100, 0.0, False, 2)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    finally:
        graph = emu.end_capture()  # raises if the capture was invalidated
    emu.destroy_graph(graph)
    assert not errors, errors


# --------------------------------------------------------------------------- the other kernels


@pytest.mark.parametrize("shape", ["tiny", "c1000", "c32771", "nchw"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_inplace_backward_is_bitwise_the_out_of_place_gradient(shape, dtype):
    n, c, spatial = SHAPES[shape]
    x = torch.randn((n, c) + spatial, generator=seeded(3), dtype=torch.float64).to(DTYPES[dtype])
    t = torch.randint(0, c, (n,) + spatial, generator=seeded(4))
    grads = []
    for inplace in (False, True):
        logits = x.clone().requires_grad_().clone()
        loss = vl.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=inplace)
        grads.append(torch.autograd.grad(loss, logits)[0])
    assert torch.equal(grads[0], grads[1])


def reference_llm_loss(x, t, w, reduction, z, cap):
    """z-loss and softcap written in torch ops (float64)."""
    xc = cap * torch.tanh(x / cap) if cap else x
    lse = torch.logsumexp(xc, 1)
    per_row = F.cross_entropy(xc, t, weight=w, reduction="none", label_smoothing=0.1)
    counted = t != -100
    per_row = per_row + z * lse.square() * counted
    if reduction == "none":
        return per_row, lse
    if reduction == "sum":
        return per_row.sum(), lse
    total = (w[t.clamp(min=0)] * counted).sum() if w is not None else counted.sum()
    return per_row.sum() / total, lse


@pytest.mark.parametrize("shape", ["tiny", "c1000", "c32771"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_softcap_return_lse(shape, reduction):
    n, c, _ = SHAPES[shape]
    x = torch.randn(n, c, generator=seeded(1), dtype=torch.float64) * 4
    t = torch.randint(0, c, (n,), generator=seeded(2))
    t[::3] = -100
    w = torch.rand(c, generator=seeded(3), dtype=torch.float64) + 0.5
    results = []
    for fn in ("ours", "reference"):
        xd = x.clone().requires_grad_()
        if fn == "ours":
            loss, lse = vl.cross_entropy(xd, t, weight=w, reduction=reduction, label_smoothing=0.1,
                                         lse_square_scale=0.01, softcap=5.0, return_lse=True)
        else:
            loss, lse = reference_llm_loss(xd, t, w, reduction, 0.01, 5.0)
        counted = t != -100
        (g,) = torch.autograd.grad(loss.sum() + 0.5 * lse[counted].sum(), xd)
        results.append((loss.detach(), lse.detach()[counted], g))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_chunk_step(reduction):
    """cross_entropy_fwd_grad (forward, then the backward kernel over the chunk's logits)."""
    x = torch.randn(300, 64, generator=seeded(4), dtype=torch.float64)
    W = torch.randn(5000, 64, generator=seeded(5), dtype=torch.float64) * 0.1
    t = torch.randint(0, 5000, (300,), generator=seeded(7))
    t[::7] = -100
    out = []
    for fn in ("ours", "torch"):
        xl, Wl = x.clone().requires_grad_(), W.clone().requires_grad_()
        if fn == "ours":
            loss = vl.linear_cross_entropy(xl, Wl, t, reduction=reduction, chunk_size=64)
        else:
            loss = F.cross_entropy(xl @ Wl.T, t, reduction=reduction)
        loss.sum().backward()
        out.append((loss.detach(), xl.grad, Wl.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fwd_grad_refuses_overlapping_logits():
    """The CUDA chunk step writes the gradient over the logits: expanded rows would race."""
    logits = torch.randn(1, 7).expand(5, 7)
    target = torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="cross_entropy_fwd_grad writes the gradient over the logits"):
        torch.ops.validated_loss.cross_entropy_fwd_grad(logits, target, None, 2, -100, 0.0, 0.0, 0.0, None, None)


def test_empty_batch_and_zero_classes():
    for reduction in REDUCTIONS:
        x = torch.randn(0, 5, requires_grad=True)
        t = torch.zeros(0, dtype=torch.long)
        ours, ref = vl.cross_entropy(x, t, reduction=reduction), F.cross_entropy(x, t, reduction=reduction)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, equal_nan=True)


def _launches():
    return {name: int(n) for name, n in re.findall(r"(\S.*?) x(\d+)(?:, |$)", emu.launch_counts())}


def _converting_ops(fn):
    """aten ops that copy or convert a tensor while fn runs, by name."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = ("aten::_to_copy", "aten::copy_", "aten::clone", "aten::empty_strided")
    return sorted(e.name for e in prof.events() if e.name in names)


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_class_weights_cost_nothing_per_call_without_smoothing(dtype):
    """Class weights of the logits' dtype are read by the kernels as they are (half types widened at
    each read): a weighted forward and backward launches no weight-sum kernel and converts nothing
    more than the same call without weights; with label smoothing the sum kernel runs once per
    op, and the results match torch either way."""
    x, t, w = make_inputs("c1000", DTYPES[dtype], "contig", weighted=True, ignore=True, seed=11, device=DEV)

    def step(weight, smoothing=0.0):
        xg = x.detach().requires_grad_()
        vl.cross_entropy(xg, t, weight, label_smoothing=smoothing).backward()
        return xg.grad

    before = _launches()
    step(w)
    after = _launches()
    assert after.get("weight_sum_kernel<T>", 0) == before.get("weight_sum_kernel<T>", 0)
    assert _converting_ops(lambda: step(w)) == _converting_ops(lambda: step(None))
    step(w, 0.1)
    assert _launches().get("weight_sum_kernel<T>", 0) == after.get("weight_sum_kernel<T>", 0) + 2
    for smoothing in (0.0, 0.1):
        compare(x, t, w, {"reduction": "mean", "label_smoothing": smoothing}, 11)


KERNELS = ["forward_kernel<T, kTeamRows, kProb>", "forward_kernel<T, kBlockRow, kProb>",
           "forward_kernel<T, kTiledRows, kProb>", "split_finish_kernel<T>", "index_backward_kernel<T>",
           "prob_backward_kernel<T, kTeamRows>", "prob_backward_kernel<T, kBlockRow>",
           "prob_backward_kernel<T, kTiledRows>", "weight_sum_kernel<T>",
           "finalize_kernel<T>", "publish_status_kernel"]


def test_zz_every_kernel_was_launched():
    """Runs last (file order): every kernel of csrc/cuda/ ran in this session (launch counts are
    printed in the summary line by conftest)."""
    counts = emu.launch_counts()
    missing = [k for k in KERNELS if f"{k} x" not in counts]
    assert not missing, f"never launched: {missing}; launched: {counts}"
