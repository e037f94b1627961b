"""linear_cross_entropy under autograd's higher-order uses (issue 15, item 5): a second backward
through a retained graph, create_graph=True (a gradient penalty), gradcheck and gradgradcheck;
compared with torch's default path, F.cross_entropy(F.linear(x, W, b), t)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

pytestmark = pytest.mark.usefixtures("single_thread")

REDUCTIONS = ["mean", "sum", "none"]


def leaves(n=7, h=4, c=9, bias=True, seed=0):
    x = torch.randn(n, h, generator=gen(seed), dtype=torch.float64).requires_grad_()
    W = (torch.randn(c, h, generator=gen(seed + 1), dtype=torch.float64) * 0.5).requires_grad_()
    b = torch.randn(c, generator=gen(seed + 2), dtype=torch.float64).requires_grad_() if bias else None
    t = torch.randint(0, c, (n,), generator=gen(seed + 3))
    t[1] = -100
    return x, W, b, t


def torch_loss(x, W, b, t, **kw):
    return F.cross_entropy(F.linear(x, W, b), t, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_backward_through_retained_graph(reduction):
    x, W, b, t = leaves()
    loss = vl.linear_cross_entropy(x, W, t, linear_bias=b, reduction=reduction, chunk_size=3).sum()
    first = torch.autograd.grad(loss, (x, W, b), retain_graph=True)
    second = torch.autograd.grad(loss, (x, W, b))
    ref = torch.autograd.grad(torch_loss(x, W, b, t, reduction=reduction).sum(), (x, W, b))
    for a, s, r in zip(first, second, ref):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(s, r)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradient_penalty_with_create_graph(reduction, smoothing):
    def penalty(fn, **extra):
        x, W, b, t = leaves()
        loss = fn(x, W, t, linear_bias=b, reduction=reduction, label_smoothing=smoothing, **extra).sum()
        gx, gW = torch.autograd.grad(loss, (x, W), create_graph=True)
        assert gx.requires_grad and gW.requires_grad
        total = loss + (gx ** 2).sum() + (gW ** 2).sum()
        return torch.autograd.grad(total, (x, W, b))

    ours = penalty(vl.linear_cross_entropy, chunk_size=3)
    ref = penalty(lambda x, W, t, linear_bias, **kw: F.cross_entropy(x @ W.T + linear_bias, t, **kw))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck(reduction):
    x, W, b, t = leaves(n=5, h=3, c=6)

    def fn(x, W, b):
        return vl.linear_cross_entropy(x, W, t, linear_bias=b, reduction=reduction, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (x, W, b))
    assert torch.autograd.gradgradcheck(fn, (x, W, b))


def test_gradcheck_with_lse_and_z_loss():
    x, W, b, t = leaves(n=5, h=3, c=6)

    def fn(x, W, b):
        loss, lse = vl.linear_cross_entropy(x, W, t, linear_bias=b, lse_square_scale=0.1, return_lse=True,
                                            chunk_size=2)
        return loss, lse

    assert torch.autograd.gradcheck(fn, (x, W, b))
    assert torch.autograd.gradgradcheck(fn, (x, W, b))
