"""The CPU gradient cache (validated_loss/memory.py, csrc/cpu/gradient_buffer.cpp).

A reused block holds the previous gradient's values, so every test that reuses one checks the new
gradient against torch: an element the kernel failed to write would show the stale value.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

BIG = (2048, 1000)  # 7.8 MiB of float32: above the 4 MiB where the cache starts


@pytest.fixture(autouse=True)
def fresh_cache():
    vl.empty_cache()
    before = vl.set_gradient_cache_limit(1 << 30)
    yield
    vl.set_gradient_cache_limit(before)
    vl.empty_cache()


def _grad(x, target, fn=vl.cross_entropy, **kwargs):
    leaf = x.detach().requires_grad_()
    fn(leaf, target, **kwargs).backward()
    return leaf.grad


def _case(shape=BIG, seed=0, dtype=torch.float32):
    g = gen(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    target = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = -100
    return x, target


def test_a_dead_gradient_block_is_reused_by_the_next_backward():
    x, target = _case()
    first = _grad(x, target)
    pointer, nbytes = first.data_ptr(), first.untyped_storage().nbytes()
    assert vl.gradient_cache_bytes() == 0
    del first
    assert vl.gradient_cache_bytes() >= nbytes
    # Different values in the same block: every element must be rewritten, ignored rows too.
    x2, target2 = _case(seed=1)
    second = _grad(x2, target2)
    assert second.data_ptr() == pointer
    assert vl.gradient_cache_bytes() == 0
    torch.testing.assert_close(second, _grad(x2, target2, F.cross_entropy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(4096, 10), (512, 4, 1024), (64, 70000)], ids=str)
def test_reused_blocks_give_torchs_gradient(shape, dtype):
    for seed in range(3):  # the second and third backward run in the first one's block
        x, target = _case(shape, seed, dtype)
        ours, theirs = _grad(x, target, reduction="sum"), _grad(x, target, F.cross_entropy, reduction="sum")
        low = dtype == torch.bfloat16  # one bfloat16 rounding apart at most; a stale value is far off
        torch.testing.assert_close(ours, theirs, rtol=2e-2 if low else 1e-5, atol=1e-3 if low else 1e-5)
        del ours


def test_probability_targets_reuse_blocks_too():
    x, _ = _case()
    for seed in range(2):
        q = torch.softmax(torch.randn(BIG, generator=gen(seed + 5)), dim=1)
        torch.testing.assert_close(_grad(x, q), _grad(x, q, F.cross_entropy))


def test_limit_zero_disables_the_cache_and_returns_the_old_limit():
    assert vl.set_gradient_cache_limit(0) == 1 << 30
    x, target = _case()
    g = _grad(x, target)
    del g
    assert vl.gradient_cache_bytes() == 0


def test_a_block_larger_than_the_limit_is_freed():
    vl.set_gradient_cache_limit(4 << 20)
    x, target = _case()  # 7.8 MiB
    g = _grad(x, target)
    del g
    assert vl.gradient_cache_bytes() == 0


def test_empty_cache_returns_what_it_freed():
    x, target = _case()
    g = _grad(x, target)
    nbytes = g.untyped_storage().nbytes()
    del g
    held = vl.gradient_cache_bytes()
    assert held >= nbytes
    assert vl.empty_cache() == held
    assert vl.gradient_cache_bytes() == 0


def test_small_gradients_bypass_the_cache():
    x, target = _case((64, 100))
    g = _grad(x, target)
    del g
    assert vl.gradient_cache_bytes() == 0


def test_gradient_layout_follows_the_logits():
    x, target = _case((16, 1000, 128))
    permuted = x.permute(0, 2, 1).contiguous().permute(0, 2, 1)  # dense, class dim innermost
    assert _grad(permuted, target).stride() == permuted.stride()
    sliced = torch.randn(2048, 2000)[:, :1000]  # not dense: a contiguous gradient, as empty_like
    assert _grad(sliced, _case()[1]).is_contiguous()


def test_the_gradient_can_be_resized_and_accumulated_like_any_tensor():
    x, target = _case()
    leaf = x.detach().requires_grad_()
    vl.cross_entropy(leaf, target).backward()
    vl.cross_entropy(leaf, target).backward()  # accumulates into the cached-block gradient
    torch.testing.assert_close(leaf.grad, 2 * _grad(x, target, F.cross_entropy))
    leaf.grad.resize_(10, 10)  # its storage has an allocator: resizable
    assert leaf.grad.shape == (10, 10)


def test_limit_must_be_a_non_negative_int():
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError):
            vl.set_gradient_cache_limit(bad)


def test_disabled_cache_gives_fresh_blocks_and_keeps_what_it_holds():
    x, target = _case()
    g = _grad(x, target)
    pointer = g.data_ptr()
    del g
    held = vl.gradient_cache_bytes()
    assert held > 0
    with vl.gradient_cache_disabled():
        fresh = _grad(x, target)
        assert fresh.data_ptr() != pointer  # the cached block is not taken...
        del fresh                           # ...and this one is freed, not kept
        assert vl.gradient_cache_bytes() == held
    assert _grad(x, target).data_ptr() == pointer  # enabled again: the held block is reused


# ---- issue 15, item 14


def _cache_enabled():
    """Reads the process-wide switch (turning it on, which is what each caller expects here)."""
    from validated_loss._ops import ops

    return ops.set_gradient_cache_enabled(True)


def test_overlapping_disabled_blocks_in_two_threads_leave_the_cache_on():
    import threading

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with vl.gradient_cache_disabled():
            first_in.set()
            second_in.wait()
        first_out.set()

    def second():
        first_in.wait()
        with vl.gradient_cache_disabled():
            second_in.set()
            first_out.wait()
            x, target = _case()
            g = _grad(x, target)
            del g
            assert vl.gradient_cache_bytes() == 0  # still disabled while this block is open

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _cache_enabled()


def test_limit_takes_numpy_integers_and_limits_past_int64():
    import numpy as np

    vl.set_gradient_cache_limit(np.int64(1 << 20))
    assert vl.set_gradient_cache_limit(np.uint64(1 << 21)) == 1 << 20
    assert vl.set_gradient_cache_limit(2**63) == 1 << 21
    assert vl.set_gradient_cache_limit(2**80) == 2**63 - 1  # no limit, held as the largest int64
