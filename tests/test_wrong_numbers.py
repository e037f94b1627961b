"""Inputs where validated_loss once gave other numbers than torch (issue 15, items 1-4): a
non-finite weight on an unused class, a fully ignored batch in linear_cross_entropy's 'mean', the
sum of many float32 class weights, float32 totals past the float32 range. Each is compared with
torch.nn.functional.cross_entropy itself."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

pytestmark = pytest.mark.usefixtures("single_thread")


def _grads(fn, x, *args, **kw):
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, *args, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return loss.detach(), grad


# ---- 1. a non-finite weight on a class no target uses


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("C", [5, 40, 1000])  # packed small rows, rows in lanes, chunked rows
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nonfinite_weight_on_unused_class_keeps_gradient_finite(bad, C, reduction):
    x = torch.randn(33, C, generator=gen(C), dtype=torch.float32)
    t = torch.randint(1, C, (33,), generator=gen(C + 1))  # class 0 never occurs
    w = torch.rand(C, generator=gen(C + 2)) + 0.5
    w[0] = bad  # e.g. 1 / class_counts with a count of 0
    ours, g_ours = _grads(vl.cross_entropy, x, t, w, reduction=reduction)
    ref, g_ref = _grads(F.cross_entropy, x, t, w, reduction=reduction)
    assert torch.isfinite(g_ref).all()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("C", [5, 40, 1000])
def test_nonfinite_weight_on_unused_class_strided_logits(C):
    # (N, C, d) logits: the class dimension is strided (rows in lanes / strided chunk loads).
    x = torch.randn(3, C, 7, generator=gen(C), dtype=torch.float32)
    t = torch.randint(1, C, (3, 7), generator=gen(C + 1))
    w = torch.ones(C)
    w[0] = float("inf")
    ours, g_ours = _grads(vl.cross_entropy, x, t, w)
    ref, g_ref = _grads(F.cross_entropy, x, t, w)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_nonfinite_weight_on_unused_class_linear():
    x = torch.randn(17, 8, generator=gen(1), dtype=torch.float64, requires_grad=True)
    W = torch.randn(30, 8, generator=gen(2), dtype=torch.float64, requires_grad=True)
    t = torch.randint(1, 30, (17,), generator=gen(3))
    w = torch.ones(30, dtype=torch.float64)
    w[0] = float("inf")
    ours = vl.linear_cross_entropy(x, W, t, weight=w, chunk_size=5)
    g_ours = torch.autograd.grad(ours, (x, W))
    ref = F.cross_entropy(x @ W.T, t, w)
    g_ref = torch.autograd.grad(ref, (x, W))
    assert all(torch.isfinite(g).all() for g in g_ref)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


# ---- 2. linear_cross_entropy 'mean' over no counted target


@pytest.mark.parametrize("case", ["all_ignored", "empty"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_mean_without_counted_targets_has_zero_gradients(case, bias):
    n = 0 if case == "empty" else 9
    x = torch.randn(n, 6, generator=gen(4), dtype=torch.float64, requires_grad=True)
    W = torch.randn(11, 6, generator=gen(5), dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, generator=gen(6), dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.full((n,), -100)
    leaves = [v for v in (x, W, b) if v is not None]
    ours = vl.linear_cross_entropy(x, W, t, linear_bias=b)
    g_ours = torch.autograd.grad(ours, leaves)
    ref = F.cross_entropy(F.linear(x, W, b), t)
    g_ref = torch.autograd.grad(ref, leaves)
    assert ours.isnan() and ref.isnan()
    for a, r in zip(g_ours, g_ref):
        assert (r == 0).all()
        torch.testing.assert_close(a, r)


def test_linear_mean_fully_masked_micro_batch_does_not_poison_accumulation():
    head = vl.LinearCrossEntropyLoss(6, 11, bias=False).double()
    x = torch.randn(8, 6, generator=gen(7), dtype=torch.float64)
    t = torch.randint(0, 11, (8,), generator=gen(8))
    head(x, t).backward()
    head(x, torch.full((8,), -100)).backward()  # every token of this micro-batch is padding
    assert torch.isfinite(head.linear.weight.grad).all()


# ---- 3. the sum of many float32 class weights


def test_weighted_smoothing_float32_large_vocabulary_is_as_accurate_as_torch():
    C = 32000
    x = torch.randn(64, C, generator=gen(9), dtype=torch.float32)
    t = torch.randint(0, C, (64,), generator=gen(10))
    w = torch.rand(C, generator=gen(11), dtype=torch.float32) * 10
    truth = F.cross_entropy(x.double(), t, w.double(), reduction="none", label_smoothing=0.1)
    ours = vl.cross_entropy(x, t, w, reduction="none", label_smoothing=0.1).double()
    torch_err = ((F.cross_entropy(x, t, w, reduction="none", label_smoothing=0.1).double() - truth) / truth).abs().max()
    our_err = ((ours - truth) / truth).abs().max()
    assert our_err <= max(4 * torch_err, 5e-7), (our_err, torch_err)


# ---- 4. float32 totals past the float32 range: inf, as torch, not an exception


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_float32_loss_past_float32_range_is_inf(reduction):
    x = torch.randn(4, 5, generator=gen(12), dtype=torch.float32)
    t = torch.tensor([0, 1, 2, 3])
    w = torch.full((5,), 3e38)
    ours = vl.cross_entropy(x, t, w, reduction=reduction)
    ref = F.cross_entropy(x, t, w, reduction=reduction)
    torch.testing.assert_close(ours, ref, equal_nan=True)
    assert ours.dtype == ref.dtype


def test_linear_float32_chunk_sum_past_float32_range_is_inf():
    x = torch.randn(4, 3, generator=gen(13), dtype=torch.float32)
    W = torch.randn(5, 3, generator=gen(14), dtype=torch.float32) * 40
    t = torch.tensor([0, 1, 2, 3])
    w = torch.full((5,), 3e38)
    ref = F.cross_entropy(x @ W.T, t, w, reduction="sum")
    ours = vl.linear_cross_entropy(x, W.requires_grad_(), t, weight=w, reduction="sum", chunk_size=2)
    assert ref.isinf()
    torch.testing.assert_close(ours.detach(), ref)
