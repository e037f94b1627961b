"""cross_entropy's LLM-training options: z-loss (lse_square_scale), logit softcapping (softcap) and
return_lse, against the same loss written with torch ops (validated_loss._reference, checked here
against a formula written out in the test), forward and gradients."""

import functools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from conftest import compare_cross_entropy, gen, relayout, require_vl

vl = require_vl()
from validated_loss import _reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

OPTIONS = {  # name: (lse_square_scale, softcap)
    "z": (0.05, None),
    "cap": (0.0, 4.0),
    "z+cap": (0.02, 2.5),
}
SHAPES = {  # lanes path (C <= 64), chunked rows (C > 2048), K-dimensional, one row
    "lanes": ((17, 7), (17,)),
    "chunks": ((5, 2500), (5,)),
    "kdim": ((2, 9, 3), (2, 3)),
    "1d": ((9,), ()),
}
EXTRAS = {
    "plain": dict(),
    "weight": dict(weight=True),
    "weight-ignore-ls": dict(weight=True, ignore_index=1, label_smoothing=0.1),
    "ignore-ls": dict(ignore_index=2, label_smoothing=0.2),
}


def _case(shape_name, extra_name, dtype, seed=0):
    (x_shape, t_shape) = SHAPES[shape_name]
    kw = dict(EXTRAS[extra_name])
    C = x_shape[0] if len(x_shape) == 1 else x_shape[1]
    x = (torch.randn(x_shape, generator=gen(seed), dtype=torch.float64) * 3).to(dtype)
    t = torch.randint(0, C, t_shape, generator=gen(seed + 1))
    if "ignore_index" in kw and t.numel() > 1:
        t.view(-1)[::3] = kw["ignore_index"]
    if kw.pop("weight", False):
        kw["weight"] = (torch.rand(C, generator=gen(seed + 2), dtype=torch.float64) + 0.3).to(dtype)
    return x, t, kw


def _reference_loss(input, target, weight=None, *, reduction="mean", ignore_index=-100, label_smoothing=0.0,
                    lse_square_scale=0.0, softcap=None):
    return _reference.cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing,
                                    lse_square_scale, softcap)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_parity_with_torch_formula(option, shape, extra, reduction, dtype):
    z, cap = OPTIONS[option]
    x, t, kw = _case(shape, extra, dtype)
    if shape == "1d" and "ignore_index" in kw:
        kw["ignore_index"] = -100
    llm = dict(lse_square_scale=z, softcap=cap)
    compare_cross_entropy(x, t, kw.pop("weight", None), ours=functools.partial(vl.cross_entropy, **llm),
                          reference=functools.partial(_reference_loss, **llm), reduction=reduction, **kw)


def test_reference_is_the_written_out_formula():
    """_reference (the tests' oracle) against the definition spelled out by hand."""
    x = torch.randn(6, 5, dtype=torch.float64) * 3
    t = torch.tensor([0, 4, -100, 2, 2, 1])
    w = torch.rand(5, dtype=torch.float64) + 0.5
    z, cap = 0.1, 2.0
    capped = cap * torch.tanh(x / cap)
    lse = torch.logsumexp(capped, 1)
    kept = t != -100
    nll = lse - capped.gather(1, t.clamp(min=0)[:, None])[:, 0]
    rows = torch.where(kept, w[t.clamp(min=0)] * nll + z * lse**2, 0)
    total_w = w[t[kept]].sum()
    for reduction, expected in (("none", rows), ("sum", rows.sum()), ("mean", rows.sum() / total_w)):
        loss, got_lse = _reference.cross_entropy(x, t, w, reduction, -100, 0.0, z, cap)
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(got_lse, torch.where(kept, lse, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cap", [None, 3.0])
def test_return_lse(shape, cap, dtype):
    x, t, kw = _case(shape, "ignore-ls" if shape != "1d" else "plain", dtype, seed=5)
    loss, lse = vl.cross_entropy(x, t, softcap=cap, return_lse=True, **kw)
    assert lse.shape == t.shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref_loss, ref_lse = _reference.cross_entropy(x.double(), t, None, "mean", kw.get("ignore_index", -100),
                                                 kw.get("label_smoothing", 0.0), 0.0, cap)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype != torch.float64 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse.double(), ref_lse, **tol)
    torch.testing.assert_close(loss, vl.cross_entropy(x, t, softcap=cap, **kw))  # same loss as without lse
    if "ignore_index" in kw:
        assert (lse[t == kw["ignore_index"]] == 0).all()  # ignored rows are not read


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("which", ["lse-only", "both"])
def test_lse_gradient(which, reduction):
    """Gradients flowing into the returned lse (alone, or with the loss's) match torch's graph."""
    x, t, kw = _case("chunks", "weight-ignore-ls", torch.float64, seed=7)
    x = x[:, :300].contiguous()
    t = t.clamp(max=299)
    kw["weight"] = kw["weight"][:300]
    g_lse = torch.randn(t.shape, generator=gen(9), dtype=torch.float64)
    llm = dict(lse_square_scale=0.03, softcap=5.0)

    def total(fn, x):
        loss, lse = fn(x)
        out = (lse * g_lse).sum()
        return out + (loss * 1.3).sum() if which == "both" else out

    xo = x.clone().requires_grad_()
    total(lambda v: vl.cross_entropy(v, t, reduction=reduction, return_lse=True, **llm, **kw), xo).backward()
    xr = x.clone().requires_grad_()
    total(lambda v: _reference.cross_entropy(v, t, kw["weight"], reduction, kw["ignore_index"],
                                             kw["label_smoothing"], llm["lse_square_scale"], llm["softcap"]),
          xr).backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-12)


GRAD_CASES = {
    "z-mean": dict(lse_square_scale=0.1),
    "cap-sum": dict(softcap=2.0, reduction="sum"),
    "z-cap-weight-ignore-ls": dict(lse_square_scale=0.05, softcap=1.5, ignore_index=1, label_smoothing=0.2,
                                   weight=True),
    "z-cap-none": dict(lse_square_scale=0.2, softcap=3.0, reduction="none", weight=True),
}


def _grad_fn(case, return_lse, shape=(6, 5)):
    kw = dict(GRAD_CASES[case])
    C = shape[1]
    t = torch.randint(0, C, shape[:1] + shape[2:], generator=gen(3))
    if "ignore_index" in kw:
        t.view(-1)[::3] = kw["ignore_index"]
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(C, generator=gen(4), dtype=torch.float64) + 0.2
    x = (torch.randn(shape, generator=gen(5), dtype=torch.float64) * 2).requires_grad_()
    if return_lse:
        return x, lambda v: vl.cross_entropy(v, t, return_lse=True, **kw)
    return x, lambda v: vl.cross_entropy(v, t, **kw)


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradcheck(case, return_lse):
    x, fn = _grad_fn(case, return_lse)
    assert gradcheck(fn, (x,))


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradgradcheck(case, return_lse):
    x, fn = _grad_fn(case, return_lse)
    assert gradgradcheck(fn, (x,))


def test_gradcheck_kdim_lanes():
    x, fn = _grad_fn("z-cap-weight-ignore-ls", True, shape=(2, 5, 3))
    assert gradcheck(fn, (x,))


def test_softcap_keeps_huge_logits_finite():
    """Capped logits of 1e4 scale: loss and gradient stay finite and match the reference."""
    x = torch.randn(4, 3000, generator=gen(1)) * 1e4
    t = torch.randint(0, 3000, (4,), generator=gen(2))
    compare_cross_entropy(x, t, ours=functools.partial(vl.cross_entropy, softcap=30.0),
                          reference=functools.partial(_reference_loss, softcap=30.0))


def test_check_finite_with_softcap():
    """An infinite logit caps to +-cap (finite loss, nothing to report); NaN is still reported."""
    x = torch.randn(3, 10)
    x[1, 4] = float("inf")
    t = torch.tensor([0, 1, 2])
    loss = vl.cross_entropy(x, t, softcap=5.0, check_finite=True)
    assert torch.isfinite(loss)
    x[2, 7] = float("nan")
    with pytest.raises(vl.NonFiniteLogitsError):
        vl.cross_entropy(x, t, softcap=5.0, check_finite=True)


def test_defaults_are_todays_results():
    x = torch.randn(8, 300, generator=gen(3))
    t = torch.randint(0, 300, (8,), generator=gen(4))
    a = vl.cross_entropy(x, t, label_smoothing=0.1)
    b = vl.cross_entropy(x, t, label_smoothing=0.1, lse_square_scale=0.0, softcap=None, return_lse=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, error", [
    (dict(softcap=0.0), ValueError),
    (dict(softcap=-1.0), ValueError),
    (dict(softcap=float("nan")), ValueError),
    (dict(softcap="3"), TypeError),
    (dict(lse_square_scale=float("inf")), ValueError),
    (dict(lse_square_scale=None), TypeError),
    (dict(return_lse=1), TypeError),
])
def test_argument_errors(bad, error):
    with pytest.raises(error):
        vl.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), **bad)


@pytest.mark.parametrize("option", [dict(lse_square_scale=0.1), dict(softcap=2.0), dict(return_lse=True)])
def test_probability_targets_are_refused(option):
    x = torch.randn(2, 3)
    with pytest.raises(NotImplementedError):
        vl.cross_entropy(x, torch.softmax(torch.randn(2, 3), 1), **option)


def test_functorch_grad_uses_the_torch_formula():
    """torch.func.grad runs torch's composite (our ops' autograd does not support it): same options."""
    x = torch.randn(5, 7, dtype=torch.float64, generator=gen(1))
    t = torch.tensor([0, 3, -100, 6, 1])
    kw = dict(lse_square_scale=0.1, softcap=2.0)
    got = torch.func.grad(lambda v: vl.cross_entropy(v, t, **kw))(x)
    xr = x.clone().requires_grad_()
    _reference_loss(xr, t, **kw).backward()
    torch.testing.assert_close(got, xr.grad)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_fullgraph():
    lin = torch.nn.Linear(8, 6, dtype=torch.float64)
    x = torch.randn(7, 8, dtype=torch.float64, generator=gen(2))
    t = torch.tensor([0, 5, 1, -100, 2, 2, 4])

    def f(x, t):
        loss, lse = vl.cross_entropy(lin(x), t, lse_square_scale=0.1, softcap=3.0, return_lse=True)
        return loss + 0.5 * lse.sum()

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(x, t)
    out.backward()
    g = lin.weight.grad.clone()
    lin.zero_grad()
    ref_loss, ref_lse = _reference.cross_entropy(lin(x), t, None, "mean", -100, 0.0, 0.1, 3.0)
    (ref_loss + 0.5 * ref_lse.sum()).backward()
    torch.testing.assert_close(out, ref_loss + 0.5 * ref_lse.sum())
    torch.testing.assert_close(g, lin.weight.grad)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("layout", ["transposed", "sliced", "class_last"])
def test_non_contiguous_logits(layout):
    shape = (3, 40, 2) if layout == "class_last" else (6, 40)
    x = relayout(torch.randn(shape, generator=gen(4)), layout)
    t = torch.randint(0, 40, shape[:1] + shape[2:], generator=gen(5))
    llm = dict(lse_square_scale=0.05, softcap=2.0)
    compare_cross_entropy(x, t, ours=functools.partial(vl.cross_entropy, **llm),
                          reference=functools.partial(_reference_loss, **llm), label_smoothing=0.1)
