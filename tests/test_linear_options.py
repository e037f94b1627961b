"""linear_cross_entropy with torch's LinearCrossEntropyOptions (issue 15, item 10): the
accumulate dtype the options resolve to (acc_dtype, acc_policy) is honoured as torch's chunked
path honours it, and that path's class weights of another floating dtype are taken. Compared
with torch's F.linear_cross_entropy on the same options, and both with float64 torch."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

from torch_versions import NO_TORCH_LINEAR, TORCH_LINEAR  # noqa: E402

# Every test here compares with torch's chunked path under the same options (built at collection).
if not TORCH_LINEAR:
    pytest.skip(NO_TORCH_LINEAR, allow_module_level=True)

pytestmark = pytest.mark.usefixtures("single_thread")

Options = torch.nn.LinearCrossEntropyOptions


def case(dtype, n=64, h=96, c=200, seed=0):
    x = torch.randn(n, h, generator=gen(seed), dtype=torch.float64)
    W = torch.randn(c, h, generator=gen(seed + 1), dtype=torch.float64) * 0.3
    b = torch.randn(c, generator=gen(seed + 2), dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen(seed + 3))
    t[::7] = -100
    return x.to(dtype), W.to(dtype), b.to(dtype), t


def loss_and_grads(fn, x, W, b, t, **kw):
    leaves = [v.detach().clone().requires_grad_() for v in (x, W, b)]
    loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2], **kw)
    grads = torch.autograd.grad(loss.float().sum(), leaves)
    return [loss.detach()] + list(grads)


def error(results, truth):
    return [((r.double() - t).abs().max() / t.abs().max()).item() for r, t in zip(results, truth)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [Options(), Options(acc_dtype=torch.float32, acc_policy="accurate")],
                         ids=["auto", "float32"])
def test_accumulate_dtype_from_options_is_honoured(dtype, reduction, options):
    x, W, b, t = case(dtype)
    truth = loss_and_grads(F.linear_cross_entropy, x.double(), W.double(), b.double(), t, reduction=reduction)
    theirs = loss_and_grads(F.linear_cross_entropy, x, W, b, t, reduction=reduction, options=options)
    ours = loss_and_grads(vl.linear_cross_entropy, x, W, b, t, reduction=reduction, options=options)
    for o, th in zip(ours, theirs):
        assert o.dtype == th.dtype
    for what, e_ours, e_torch in zip(("loss", "input", "weight", "bias"), error(ours, truth), error(theirs, truth)):
        assert e_ours <= 2 * e_torch + 1e-6, (what, e_ours, e_torch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [Options(), Options(acc_policy="compact")], ids=["auto", "input-dtype"])
def test_float32_class_weight_with_half_input(dtype, options):
    x, W, b, t = case(dtype)
    w = torch.rand(W.shape[0], generator=gen(9)) + 0.5  # float32
    theirs = loss_and_grads(F.linear_cross_entropy, x, W, b, t, weight=w, options=options)
    ours = loss_and_grads(vl.linear_cross_entropy, x, W, b, t, weight=w, options=options)
    truth = loss_and_grads(F.linear_cross_entropy, x.double(), W.double(), b.double(), t, weight=w.double())
    assert ours[0].dtype == theirs[0].dtype == dtype
    for what, e_ours, e_torch in zip(("loss", "input", "weight", "bias"), error(ours, truth), error(theirs, truth)):
        assert e_ours <= 2 * e_torch + 2e-3, (what, e_ours, e_torch)


def test_without_options_a_mixed_weight_is_refused_as_torch():
    x, W, b, t = case(torch.bfloat16)
    w = torch.rand(W.shape[0]) + 0.5
    with pytest.raises(RuntimeError):
        F.linear_cross_entropy(x, W, t, weight=w)
    with pytest.raises(RuntimeError):
        vl.linear_cross_entropy(x, W, t, weight=w)
