"""The chunked kernels' own exp (csrc/cpu/fast_math.h) against the float64 truth.

Rows with more than 64 classes take every exp of a finite row from exp_nonpositive, a degree-5
polynomial of ours instead of ATen's exp. These tests hold it to the project's bar: losses and
gradients at least as close to float64 as torch's own float32/bfloat16 results, exact zeros where
a probability underflows or a logit is -inf, and -inf/huge-gap rows right.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()
pytestmark = pytest.mark.usefixtures("all_threads")


def _errors(fn, x, target, ref_loss, ref_grad):
    leaf = x.detach().clone().requires_grad_()
    loss = fn(leaf, target, reduction="none")
    loss.sum().backward()
    loss_err = (loss.double() - ref_loss).abs()
    grad_err = (leaf.grad.double() - ref_grad).abs()
    return {
        "loss max": loss_err.max().item(),
        "loss mean": loss_err.mean().item(),
        "grad max": grad_err.max().item(),
        "grad rms": grad_err.pow(2).mean().sqrt().item(),
    }


# (rows, classes, logit scale): an LLM vocabulary, ImageNet-like, and C = 1003, whose rows end in
# a partial vector on every SIMD width.
SHAPES = [(256, 32000, 3.0), (2048, 1000, 5.0), (2048, 1003, 2.0)]


@pytest.mark.parametrize("n,c,scale", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_closer_to_float64_than_torch(n, c, scale, dtype):
    g = gen(c)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, c, (n,), generator=g)
    x64 = x.double().requires_grad_()
    ref_loss = F.cross_entropy(x64, target, reduction="none")
    ref_loss.sum().backward()
    ours = _errors(vl.cross_entropy, x, target, ref_loss.detach(), x64.grad)
    theirs = _errors(F.cross_entropy, x, target, ref_loss.detach(), x64.grad)
    for key in ours:
        # 1e-9 absolute slack: where both are essentially exact (bfloat16 losses round alike).
        assert ours[key] <= theirs[key] * 1.05 + 1e-9, (key, ours, theirs)


@pytest.mark.parametrize("c", [1000, 1003])
def test_neg_inf_and_underflowing_logits(c):
    """-inf logits, and logits far enough below the row's max that e^(x - max) underflows
    float32: the loss is the float64 one, those gradients are exactly 0."""
    g = gen(3 * c)
    x = torch.randn(64, c, generator=g, dtype=torch.float64) * 2
    x[:, 5::7] = float("-inf")
    x[:, 3::11] -= 150.0  # e^-150 underflows float32 (a kExpArgFloor edge: < -86)
    x[::2, 1::13] -= 87.0  # around the floor itself
    target = torch.randint(0, c, (64,), generator=g)
    target[target % 7 == 5] = 0  # no -inf target (its loss would be inf)
    x32 = x.float().requires_grad_()
    loss = vl.cross_entropy(x32, target, reduction="none")
    loss.sum().backward()
    x64 = x.clone().requires_grad_()
    ref = F.cross_entropy(x64, target, reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-5, atol=1e-7)
    is_target = torch.zeros(64, c, dtype=torch.bool)
    is_target[torch.arange(64), target] = True
    off_target = x32.grad.masked_fill(is_target, 0)  # a target's gradient is p - 1
    assert (off_target[:, 5::7] == 0).all()
    assert (off_target[:, 3::11] == 0).all()
    assert (x32.grad[~is_target] != 0).any()  # and the rest is not all zero


def test_nan_and_inf_rows_keep_torchs_results():
    """Rows holding NaN or +inf take ATen's exp (fast_math's needs a finite max): NaN losses and
    gradients exactly where torch has them."""
    g = gen(5)
    x = torch.randn(6, 1003, generator=g)
    x[1, 17] = float("nan")
    x[3, 900] = float("inf")
    x[4, :] = float("-inf")
    target = torch.tensor([1, 2, 3, 4, 5, 6])
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = vl.cross_entropy(ours, target, reduction="none")
    loss.sum().backward()
    ref = F.cross_entropy(theirs, target, reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(loss, ref, equal_nan=True)
    torch.testing.assert_close(ours.grad, theirs.grad, equal_nan=True)
