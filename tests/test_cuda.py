"""The CUDA kernels on a GPU: parity with torch, validation modes, no device-side assert, graphs.

Every test here needs a CUDA device and is skipped without one (CI machines and the development
machine have none: these tests were written without being run; see README for what was verified
where). They use the public API, validated_loss.cross_entropy(..., validate=...).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import seed_of, vl
from cuda_grid import (DTYPES, GRID, OPTIONS, REDUCTIONS, SHAPES, compare, compare_probabilities,
                       make_inputs, seeded)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
@pytest.mark.parametrize("shape,dtype,lay,option,reduction", GRID)
def test_parity_class_index(shape, dtype, lay, option, reduction):
    o = OPTIONS[option]
    seed = seed_of(shape, dtype, lay, option, reduction) & 0xFFFF
    x, t, w = make_inputs(shape, DTYPES[dtype], lay, weighted=o["weighted"], ignore=o["ignore"], seed=seed, device=DEV)
    compare(x, t, w, dict(o["kwargs"], reduction=reduction), seed)


@pytest.mark.parametrize("shape", ["tiny", "c1023", "c32771", "nchw"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("option", ["plain", "weight_smooth"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_probabilities(shape, dtype, option, reduction):
    compare_probabilities(shape, dtype, option, reduction, DEV)


def test_matches_cpu_ops():
    """Same op, same inputs: CUDA and CPU outputs agree (lse, total weight, status layout)."""
    g = seeded(7)
    x = torch.randn(64, 1000, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    t[::5] = -100
    w = torch.rand(1000, generator=g) + 0.5
    ops = torch.ops.validated_loss
    for reduction in (0, 1, 2):
        cpu = ops.cross_entropy_fwd(x, t, w, reduction, -100, 0.1, True, 1)
        gpu = ops.cross_entropy_fwd(x.to(DEV), t.to(DEV), w.to(DEV), reduction, -100, 0.1, True, 1)
        for a, b, name in zip(cpu, gpu, ("loss", "lse", "total_weight", "status")):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            if name == "status":
                assert torch.equal(a, b.cpu()), (a, b)
            else:
                torch.testing.assert_close(b.cpu(), a, rtol=2e-5, atol=2e-5, msg=name)


def test_bad_target_raises_and_context_survives():
    x = torch.randn(6, 5, device=DEV, requires_grad=True)
    bad = torch.tensor([0, 1, 5, 2, -3, 4], device=DEV)
    with pytest.raises(vl.TargetOutOfRangeError) as on_gpu:
        vl.cross_entropy(x, bad)
    with pytest.raises(vl.TargetOutOfRangeError) as on_cpu:
        vl.cross_entropy(x.detach().cpu(), bad.cpu())
    assert str(on_gpu.value) == str(on_cpu.value)
    assert isinstance(on_gpu.value, IndexError)
    assert "target[2] = 5" in str(on_gpu.value) and "2 of 6 targets are invalid" in str(on_gpu.value)
    # No device-side assert: the context is alive and the next call computes normally.
    good = torch.tensor([0, 1, 4, 2, 3, 4], device=DEV)
    loss = vl.cross_entropy(x, good)
    loss.backward()
    torch.cuda.synchronize()
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), good))


def test_off_mode_returns_nan_rows_without_raising():
    x = torch.randn(4, 7, device=DEV)
    bad = torch.tensor([1, 7, 2, 3], device=DEV)
    loss = vl.cross_entropy(x, bad, reduction="none", validate="off")
    torch.cuda.synchronize()
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all()
    status = torch.ops.validated_loss.cross_entropy_fwd(x, bad, None, 0, -100, 0.0, False, 0)[3].cpu().tolist()
    assert status == [1, 7, 1, -1, -1, 0]


def test_invalid_row_gets_zero_gradient():
    x = torch.randn(4, 7, device=DEV, requires_grad=True)
    bad = torch.tensor([1, 9, 2, -100], device=DEV)
    loss = vl.cross_entropy(x, bad, reduction="none", validate="off")
    (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
    assert torch.all(grad[1] == 0) and torch.all(grad[3] == 0)
    ref = torch.autograd.grad(F.cross_entropy(x, bad.clamp(max=6), reduction="none")[[0, 2]].sum(), x)[0]
    torch.testing.assert_close(grad[[0, 2]], ref[[0, 2]])


def test_deferred_never_synchronizes():
    x = torch.randn(32, 1000, device=DEV, requires_grad=True)
    t = torch.randint(0, 1000, (32,), device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in REDUCTIONS:
            for validate in ("deferred", "off"):
                loss = vl.cross_entropy(x, t, reduction=reduction, validate=validate)
                torch.autograd.grad(loss.sum(), x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_deferred_reports_at_a_later_call():
    x = torch.randn(8, 5, device=DEV)
    bad = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1], device=DEV)
    good = torch.zeros(8, dtype=torch.long, device=DEV)
    vl.cross_entropy(x, bad, validate="deferred")  # does not raise here
    torch.cuda.synchronize()
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.cross_entropy(x, good, validate="deferred")
    with pytest.raises(vl.TargetOutOfRangeError) as on_cpu:
        vl.cross_entropy(x.cpu(), bad.cpu())
    assert str(info.value).startswith(str(on_cpu.value) + "\n(found by deferred validation in the loss of call #")
    assert "test_cuda.py:" in str(info.value) and info.value.position == (5,)
    vl.cross_entropy(x, good, validate="deferred")  # reported once


# --------------------------------------------------------------------------- deferred validation
# What each test relies on is in README "Validation modes": no wait on the host in 'deferred' mode,
# nor in 'sync' mode inside torch.compile or a CUDA-graph capture; the error surfaces at the next
# call, at backward, or at validated_loss.check_deferred().


@pytest.fixture
def no_sync():
    """Raise if anything synchronizes with the device inside the block (torch's sync debug mode)."""
    torch.cuda.synchronize()

    class Block:
        def __enter__(self):
            torch.cuda.set_sync_debug_mode("error")

        def __exit__(self, *exc):
            torch.cuda.set_sync_debug_mode("default")

    yield Block()
    torch.cuda.set_sync_debug_mode("default")


def bad_target(n, classes, position, value):
    t = torch.randint(0, classes, (n,), generator=seeded(n), device="cpu")
    t[position] = value
    return t.to(DEV)


def test_deferred_with_a_bad_target_never_synchronizes(no_sync):
    x = torch.randn(32, 1000, device=DEV, requires_grad=True)
    good, bad = bad_target(32, 1000, 0, 0), bad_target(32, 1000, 5, 1000)
    vl.cross_entropy(x, good, validate="deferred").backward()  # warm-up: pinned blocks, events
    torch.cuda.synchronize()
    with no_sync:
        loss = vl.cross_entropy(x, bad, validate="deferred", reduction="sum")
    torch.cuda.synchronize()
    assert torch.isnan(loss)
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        loss.backward()  # at backward at the latest
    assert info.value.position == (5,) and info.value.value == 1000


@pytest.fixture
def compiled_loss():
    torch._dynamo.reset()
    yield torch.compile(lambda x, t: vl.cross_entropy(x, t), fullgraph=True)  # validate="sync", the default
    torch._dynamo.reset()


def test_sync_under_compile_does_not_synchronize_and_reports_at_the_next_call(compiled_loss, no_sync):
    x = torch.randn(16, 100, device=DEV)
    good, bad = bad_target(16, 100, 0, 0), bad_target(16, 100, 3, -7)
    compiled_loss(x, good)  # compiled outside the no-sync block
    torch.cuda.synchronize()
    with no_sync:
        loss = compiled_loss(x, bad)  # a 'sync' op would wait here, and raise
    torch.cuda.synchronize()
    assert torch.isnan(loss)
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        compiled_loss(x, good)
    assert info.value.position == (3,) and info.value.value == -7 and info.value.count == 1
    assert "torch.compile graph" in str(info.value)
    assert torch.isfinite(compiled_loss(x, good))  # reported once


def test_sync_under_compile_reports_at_backward(compiled_loss):
    x = torch.randn(16, 100, device=DEV, requires_grad=True)
    good, bad = bad_target(16, 100, 0, 0), bad_target(16, 100, 9, 100)
    compiled_loss(x, good).backward()
    x.grad = None
    loss = compiled_loss(x, bad)
    torch.cuda.synchronize()
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        loss.backward()  # the compiled backward's op checks the queue
    assert info.value.position == (9,) and info.value.value == 100


def captured_step(x, t, validate="sync"):
    """A CUDA graph of forward and backward (torch's recipe: warm up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            torch.autograd.grad(vl.cross_entropy(x, t, validate=validate), x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = vl.cross_entropy(x, t, validate=validate)  # 'sync' cannot wait here: the graph publishes
        (grad,) = torch.autograd.grad(loss, x)
    return graph, loss, grad


@pytest.mark.parametrize("validate", ["sync", "deferred"])
def test_cuda_graph_replay_with_a_bad_target_is_reported_by_check_deferred(validate, no_sync):
    x = torch.randn(16, 1000, device=DEV, requires_grad=True)
    t = bad_target(16, 1000, 0, 0)
    good, bad = t.clone(), bad_target(16, 1000, 7, 1000)
    graph, loss, grad = captured_step(x, t, validate)
    vl.check_deferred()  # nothing replayed yet
    with no_sync:
        t.copy_(bad)
        graph.replay()  # no wait, no copy outside the graph, no crash
    torch.cuda.synchronize()
    assert torch.isnan(loss) and torch.all(grad[7] == 0)
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.check_deferred()
    message = str(info.value)
    assert info.value.position == (7,) and info.value.value == 1000
    assert "replay of the CUDA graph" in message and "test_cuda.py:" in message
    vl.check_deferred()  # reported once
    t.copy_(good)
    graph.replay()
    torch.cuda.synchronize()
    vl.check_deferred()  # a clean replay publishes nothing
    torch.testing.assert_close(loss, F.cross_entropy(x, good))


def test_cuda_graph_keeps_the_first_bad_replay_until_checked():
    x = torch.randn(8, 50, device=DEV, requires_grad=True)
    t = bad_target(8, 50, 0, 0)
    graph, _, _ = captured_step(x, t)
    for target in (bad_target(8, 50, 2, 50), bad_target(8, 50, 6, -3), bad_target(8, 50, 0, 0)):
        t.copy_(target)
        graph.replay()
    torch.cuda.synchronize()
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.cross_entropy(x, bad_target(8, 50, 0, 0))  # the next eager call reports it too
    assert info.value.position == (2,) and info.value.value == 50


def test_check_finite_same_error_as_cpu():
    x = torch.randn(5, 9)
    x[3, 4] = float("nan")
    t = torch.zeros(5, dtype=torch.long)
    with pytest.raises(vl.NonFiniteLogitsError) as on_cpu:
        vl.cross_entropy(x, t, check_finite=True)
    with pytest.raises(vl.NonFiniteLogitsError) as on_gpu:
        vl.cross_entropy(x.to(DEV), t.to(DEV), check_finite=True)
    assert str(on_gpu.value) == str(on_cpu.value)


def test_cuda_graph_capture():
    x = torch.randn(16, 1000, device=DEV, requires_grad=True)
    t = torch.randint(0, 1000, (16,), device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up (allocator, lazy init) outside the capture
            loss = vl.cross_entropy(x, t, label_smoothing=0.1)
            torch.autograd.grad(loss, x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = vl.cross_entropy(x, t, label_smoothing=0.1)  # 'sync' behaves as 'deferred' here
        (static_grad,) = torch.autograd.grad(static_loss, x)
    for _ in range(2):
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
        t.copy_(torch.randint(0, 1000, (16,), device=DEV))
        graph.replay()
        torch.cuda.synchronize()
        ref = F.cross_entropy(x, t, label_smoothing=0.1)
        torch.testing.assert_close(static_loss, ref)
        torch.testing.assert_close(static_grad, torch.autograd.grad(ref, x)[0])


def test_current_stream_and_determinism():
    x = torch.randn(300, 4099, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, 4099, (300,), device=DEV)
    stream = torch.cuda.Stream()
    results = []
    for _ in range(2):
        with torch.cuda.stream(stream):
            loss = vl.cross_entropy(x, t, label_smoothing=0.1)
            (grad,) = torch.autograd.grad(loss, x)
        stream.synchronize()
        results.append((loss.clone(), grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", ["tiny", "c32771"])
def test_autocast_reads_low_precision_logits_and_returns_float32(reduction, shape):
    """acc_loss: bfloat16 logits read as they are, float32 losses (per row too), bfloat16 gradient."""
    n, c, _ = SHAPES[shape]
    x = torch.randn(n, c, device=DEV, dtype=torch.bfloat16)
    t = torch.randint(0, c, (n,), device=DEV)
    results = []
    for fn in (vl.cross_entropy, F.cross_entropy):
        xl = x.detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(xl, t, reduction=reduction, label_smoothing=0.1)
        (g,) = torch.autograd.grad(loss.sum(), xl)
        results.append((loss.detach(), g))
    (ours, g_ours), (ref, g_ref) = results
    assert ours.dtype == ref.dtype == torch.float32 and g_ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("dt", ["f32", "bf16"])
@pytest.mark.parametrize("shape", ["tiny", "c1023", "c32771", "nchw"])
def test_inplace_backward_gives_the_same_gradient_in_the_logits(dt, shape):
    """cross_entropy_bwd_: the backward kernel over the logits, bitwise the out-of-place gradient."""
    n, c, spatial = SHAPES[shape]
    x = torch.randn((n, c) + spatial, generator=seeded(3), dtype=torch.float64).to(DEV, DTYPES[dt])
    t = torch.randint(0, c, (n,) + spatial, generator=seeded(4)).to(DEV)
    results = []
    for inplace in (False, True):
        leaf = x.detach().requires_grad_()
        logits = leaf.clone()
        loss = vl.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=inplace)
        (g,) = torch.autograd.grad(loss, logits)
        results.append((g, g.data_ptr() == logits.data_ptr()))
    (fresh, aliased_fresh), (in_place, aliased) = results
    assert aliased and not aliased_fresh
    assert torch.equal(fresh, in_place)


def test_empty_batch():
    x = torch.randn(0, 5, device=DEV, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long, device=DEV)
    for reduction in REDUCTIONS:
        ours, ref = vl.cross_entropy(x, t, reduction=reduction), F.cross_entropy(x, t, reduction=reduction)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs a GPU with >= 40 GiB")
def test_n_times_c_past_int32():
    n, c = 17000, 128256  # N*C = 2.18e9 > 2^31
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(n, c, device=DEV, dtype=torch.bfloat16, generator=g)
    t = torch.randint(0, c, (n,), device=DEV, generator=g)
    loss = vl.cross_entropy(x, t, reduction="none")
    rows = torch.tensor([0, 1, (2**31) // c, (2**31) // c + 1, n - 1], device=DEV)
    ref = F.cross_entropy(x[rows].float(), t[rows], reduction="none")
    torch.testing.assert_close(loss[rows].float(), ref, rtol=1e-2, atol=1e-2)
    del x
    torch.cuda.empty_cache()
    assert math.isfinite(loss.float().sum().item())


# --------------------------------------------------------------------------- LLM options, linear head


@pytest.mark.parametrize("shape", ["tiny", "c1000", "c32771"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_llm_options_match_cpu(shape, reduction):
    """z-loss, softcap and return_lse: the CUDA kernels give the CPU kernels' loss, lse and gradient."""
    n, c, _ = SHAPES[shape]
    x = torch.randn(n, c, generator=seeded(1)) * 4
    t = torch.randint(0, c, (n,), generator=seeded(2))
    t[::3] = -100
    w = torch.rand(c, generator=seeded(3)) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, lse_square_scale=0.01, softcap=5.0,
              return_lse=True)
    out = []
    for device in ("cpu", DEV):
        xd = x.to(device).requires_grad_()
        loss, lse = vl.cross_entropy(xd, t.to(device), **{**kw, "weight": w.to(device)})
        (loss.sum() + 0.5 * lse.sum()).backward()
        out.append((loss.detach().cpu(), lse.detach().cpu(), xd.grad.cpu()))
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_cross_entropy_matches_cpu(reduction, dtype):
    """The chunked linear head on CUDA (the fused op: forward, then the backward kernel in place)."""
    x = torch.randn(300, 64, generator=seeded(4))
    W = torch.randn(5000, 64, generator=seeded(5)) * 0.1
    b = torch.randn(5000, generator=seeded(6))
    t = torch.randint(0, 5000, (300,), generator=seeded(7))
    t[::7] = -100
    out = []
    for device in ("cpu", DEV):
        leaves = [v.to(device, dtype).requires_grad_() for v in (x, W, b)]
        loss = vl.linear_cross_entropy(leaves[0], leaves[1], t.to(device), linear_bias=leaves[2],
                                       reduction=reduction, chunk_size=64, softcap=20.0, lse_square_scale=1e-3)
        loss.sum().backward()
        out.append([loss.detach().float().cpu()] + [v.grad.float().cpu() for v in leaves])
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    for a, g in zip(*out):
        torch.testing.assert_close(g, a, **tol)


def test_linear_cross_entropy_bad_target_position():
    x = torch.randn(50, 8, device=DEV)
    W = torch.randn(20, 8, device=DEV)
    t = torch.randint(0, 20, (50,), device=DEV)
    t[41] = 20
    with pytest.raises(vl.TargetOutOfRangeError) as error:
        vl.linear_cross_entropy(x, W, t, chunk_size=8)
    assert error.value.position == (41,)
