"""linear_cross_entropy / LinearCrossEntropyLoss: parity with torch (its F.linear_cross_entropy,
reference and chunked paths, and F.cross_entropy(F.linear(x, W, b), t)), forward and gradients for
input, linear weight and bias, every argument combination; the LLM options; chunking; validation
and diagnostics; the module's torch interface."""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl
from torch_versions import NO_TORCH_LINEAR, TORCH_LINEAR, TORCH_VERSION

vl = require_vl()
from validated_loss import _reference  # noqa: E402
from validated_loss._linear_chunked import CHUNK_BYTES, auto_chunk_rows  # noqa: E402
from validated_loss._linear_module import OwnLinearCrossEntropyLoss, OwnLinearCrossEntropyOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

needs_torch_linear = pytest.mark.skipif(not TORCH_LINEAR, reason=NO_TORCH_LINEAR)

N, H, C = 23, 12, 40


def make(dtype=torch.float64, n=N, h=H, c=C, bias=False, ignore=None, seed=0, weight=False):
    x = torch.randn(n, h, generator=gen(seed), dtype=torch.float64)
    W = torch.randn(c, h, generator=gen(seed + 1), dtype=torch.float64) * 0.5
    b = torch.randn(c, generator=gen(seed + 2), dtype=torch.float64) if bias else None
    t = torch.randint(0, c, (n,), generator=gen(seed + 3))
    if ignore is not None and n > 1:
        t[::4] = ignore
    w = (torch.rand(c, generator=gen(seed + 4), dtype=torch.float64) + 0.3).to(dtype) if weight else None
    def cast(v):
        return None if v is None else v.to(dtype)

    return cast(x), cast(W), cast(b), t, w


def run(fn, x, W, b, grad_output=None, **kw):
    """(loss, [grad x, grad W, grad b]) of fn on fresh leaves."""
    leaves = [v.detach().clone().requires_grad_() if v is not None else None for v in (x, W, b)]
    out = fn(leaves[0], leaves[1], linear_bias=leaves[2], **kw)
    lse = None
    if isinstance(out, tuple):
        out, lse = out
    go = grad_output if grad_output is not None else torch.full_like(out, 1.7)
    total = (out * go).sum()
    if lse is not None:
        total = total + (lse * 0.3).sum()
    wanted = [v for v in leaves if v is not None]
    grads = torch.autograd.grad(total, wanted)
    grads = list(grads) + [None] * (3 - len(grads))
    return out.detach(), grads, (None if lse is None else lse.detach())


def torch_reference(x, W, target, linear_bias=None, **kw):
    """F.cross_entropy on the full logits (torch's reference path, spelled out)."""
    return F.cross_entropy(F.linear(x, W, linear_bias), target, **kw)


def torch_linear_cross_entropy(x, W, target, linear_bias=None, **kw):
    """torch's F.linear_cross_entropy; before torch 2.13 its reference path spelled out (K-dimensional
    weights flattened for F.linear, the logits reshaped to (N, C, *out_features))."""
    if TORCH_LINEAR:
        return F.linear_cross_entropy(x, W, target, linear_bias=linear_bias, **kw)
    rows = W.shape[:-1]
    b = None if linear_bias is None else linear_bias.reshape(-1)
    logits = F.linear(x, W.reshape(-1, W.shape[-1]), b).reshape(*x.shape[:-1], *rows)
    return F.cross_entropy(logits, target, **kw)


def formula_reference(x, W, target, linear_bias=None, weight=None, reduction="mean", ignore_index=-100,
                      label_smoothing=0.0, lse_square_scale=0.0, softcap=None, return_lse=False):
    loss, lse = _reference.cross_entropy(F.linear(x, W, linear_bias), target, weight, reduction, ignore_index,
                                         label_smoothing, lse_square_scale, softcap)
    return (loss, lse) if return_lse else loss


def assert_matches(ours, ref, tol=dict(rtol=1e-10, atol=1e-12)):
    o_loss, o_grads, o_lse = ours
    r_loss, r_grads, r_lse = ref
    torch.testing.assert_close(o_loss, r_loss, **tol)
    for o, r in zip(o_grads, r_grads):
        if r is None:
            assert o is None
        else:
            torch.testing.assert_close(o, r, **tol)
    if r_lse is not None:
        torch.testing.assert_close(o_lse, r_lse.to(o_lse.dtype), **tol)


COMBOS = list(itertools.product(["mean", "sum", "none"], [False, True], [None, 3], [0.0, 0.15], [False, True]))


@pytest.mark.parametrize("chunk", [5, None])
@pytest.mark.parametrize("reduction, weight, ignore, smoothing, bias", COMBOS)
def test_parity_with_full_logits(reduction, weight, ignore, smoothing, bias, chunk):
    x, W, b, t, w = make(bias=bias, ignore=ignore, weight=weight)
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    if ignore is not None:
        kw["ignore_index"] = ignore
    go = torch.randn(N, generator=gen(9), dtype=x.dtype) if reduction == "none" else None
    ours = run(_bind(vl.linear_cross_entropy, t), x, W, b, go, chunk_size=chunk, **kw)
    assert_matches(ours, run(_bind(torch_reference, t), x, W, b, go, **kw))
    # and torch's own F.linear_cross_entropy (reference path), the same keyword arguments
    if TORCH_LINEAR:
        assert_matches(ours, run(_bind(F.linear_cross_entropy, t), x, W, b, go, **kw))


# run() calls fn(x, W, linear_bias=...): the target is bound here.
def _bind(fn, t):
    return lambda x, W, linear_bias=None, **k: fn(x, W, t, linear_bias=linear_bias, **k)


@needs_torch_linear
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_parity_with_torch_chunked_path(reduction, bias):
    """torch's chunked path (options given; it supports no smoothing) agrees too."""
    x, W, b, t, w = make(bias=bias, ignore=-100, weight=True)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=6, allow_retain_graph=True)
    kw = dict(weight=w, reduction=reduction)
    ours = run(_bind(vl.linear_cross_entropy, t), x, W, b, options=opts, **kw)
    ref = run(_bind(F.linear_cross_entropy, t), x, W, b, options=opts, **kw)
    assert_matches(ours, ref)


LLM = {
    "z": dict(lse_square_scale=0.05),
    "cap": dict(softcap=3.0),
    "z+cap+lse": dict(lse_square_scale=0.02, softcap=2.0, return_lse=True),
}


@pytest.mark.parametrize("llm", list(LLM))
@pytest.mark.parametrize("reduction, weight, ignore, smoothing, bias", COMBOS[::3])
def test_llm_options(llm, reduction, weight, ignore, smoothing, bias):
    x, W, b, t, w = make(bias=bias, ignore=ignore, weight=weight, seed=4)
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing, **LLM[llm])
    if ignore is not None:
        kw["ignore_index"] = ignore
    go = torch.randn(N, generator=gen(8), dtype=x.dtype) if reduction == "none" else None
    ours = run(_bind(vl.linear_cross_entropy, t), x, W, b, go, chunk_size=7, **kw)
    ref = run(_bind(formula_reference, t), x, W, b, go, **kw)
    assert_matches(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("llm", [dict(), dict(lse_square_scale=0.01, softcap=5.0)])
def test_low_precision(dtype, reduction, llm):
    """float32 / bfloat16: as close to the float64 truth (on the same rounded inputs) as torch's
    reference path in that dtype, within a small factor (grad W is summed over chunks)."""
    x, W, b, t, w = make(dtype, n=64, h=32, c=300, bias=True, ignore=-100, seed=2)
    kw = dict(reduction=reduction, **llm)
    go = torch.randn(64, generator=gen(3)).to(dtype) if reduction == "none" else None
    ours = run(_bind(vl.linear_cross_entropy, t), x, W, b, go, chunk_size=16, **kw)
    theirs = run(_bind(formula_reference, t), x, W, b, go, **kw)
    truth = run(_bind(formula_reference, t), x.double(), W.double(), b.double(),
                None if go is None else go.double(), **kw)
    for o, th, tr in zip([ours[0]] + ours[1], [theirs[0]] + theirs[1], [truth[0]] + truth[1]):
        err_ours = (o.double() - tr).abs().max().item()
        err_torch = (th.double() - tr).abs().max().item()
        floor = torch.finfo(dtype).eps * tr.abs().max().item()
        assert err_ours <= 3 * err_torch + 2 * floor, (err_ours, err_torch, floor)


@pytest.mark.parametrize("chunk", [1, 4, 23, 1000])
def test_chunk_sizes(chunk):
    x, W, b, t, w = make(bias=True, ignore=-100, weight=True, seed=6)
    kw = dict(weight=w, label_smoothing=0.1, lse_square_scale=0.01)
    ours = run(_bind(vl.linear_cross_entropy, t), x, W, b, chunk_size=chunk, **kw)
    ref = run(_bind(formula_reference, t), x, W, b, **kw)
    assert_matches(ours, ref)


def test_options_batch_chunk_size_is_the_chunk_size(monkeypatch):
    seen = []
    from validated_loss import _linear_chunked

    original = _linear_chunked._chunks
    monkeypatch.setattr(_linear_chunked, "_chunks", lambda n, rows: (seen.append(rows), original(n, rows))[1])
    x, W, b, t, w = make()
    vl.linear_cross_entropy(x, W, t, options=vl.LinearCrossEntropyOptions(batch_chunk_size=6))
    vl.linear_cross_entropy(x, W, t, chunk_size=4, options=vl.LinearCrossEntropyOptions(batch_chunk_size=6))
    vl.linear_cross_entropy(x, W, t)
    assert seen == [6, 4, N]


def test_auto_chunk_rows():
    assert auto_chunk_rows(8192, 32000, 4) == 512  # ~64 MiB of float32 logits, whole 64-row panels
    assert auto_chunk_rows(8192, 32000, 2) == 1024
    assert auto_chunk_rows(100, 32000, 4) == 100
    assert auto_chunk_rows(10**6, 10**9, 4) == 1
    assert 512 * 32000 * 4 <= CHUNK_BYTES


def test_one_dimensional_input():
    x, W, b, t, w = make(bias=True)
    for reduction in ("mean", "none"):
        ours = run(_bind(vl.linear_cross_entropy, t[3]), x[3], W, b, reduction=reduction, return_lse=True)
        ref = run(_bind(formula_reference, t[3]), x[3], W, b, reduction=reduction, return_lse=True)
        assert ours[0].shape == ()
        assert ours[2].shape == ()
        assert_matches(ours, ref)


def test_gradients_only_where_asked():
    x, W, b, t, w = make(bias=True)
    W = W.clone().requires_grad_()
    loss = vl.linear_cross_entropy(x, W, t, linear_bias=b)
    (gW,) = torch.autograd.grad(loss, [W])
    ref = torch.autograd.grad(torch_reference(x, W, t, b), [W])[0]
    torch.testing.assert_close(gW, ref)
    with torch.no_grad():
        torch.testing.assert_close(vl.linear_cross_entropy(x, W, t, linear_bias=b), torch_reference(x, W, t, b))


def test_no_gradient_work_without_autograd(monkeypatch):
    """Under no_grad (or with nothing requiring grad) only the loss is computed."""
    from validated_loss import _linear_chunked

    monkeypatch.setattr(_linear_chunked._Gradients, "add_chunk", lambda *a: pytest.fail("gradient computed"))
    x, W, b, t, w = make(bias=True)
    leaves = [v.clone().requires_grad_() for v in (x, W, b)]
    with torch.no_grad():
        loss, lse = vl.linear_cross_entropy(*leaves[:2], t, linear_bias=leaves[2], return_lse=True)
    torch.testing.assert_close(loss, torch_reference(x, W, t, b))
    assert lse.shape == t.shape
    vl.linear_cross_entropy(x, W, t, linear_bias=b, reduction="none")


def test_lse_only_gradient():
    """Only the returned lse is used: gradients through a recomputation."""
    x, W, b, t, w = make(bias=True, ignore=-100)
    leaves = [v.clone().requires_grad_() for v in (x, W, b)]
    _, lse = vl.linear_cross_entropy(leaves[0], leaves[1], t, linear_bias=leaves[2], return_lse=True, chunk_size=5)
    ours = torch.autograd.grad(lse.sum(), leaves)
    leaves_r = [v.clone().requires_grad_() for v in (x, W, b)]
    _, lse_r = formula_reference(leaves_r[0], leaves_r[1], t, linear_bias=leaves_r[2], return_lse=True)
    for o, r in zip(ours, torch.autograd.grad(lse_r.sum(), leaves_r)):
        torch.testing.assert_close(o, r)


def test_second_backward():
    x, W, b, t, w = make()
    W = W.clone().requires_grad_()
    loss = vl.linear_cross_entropy(x, W, t)
    loss.backward(retain_graph=True)
    first = W.grad.clone()
    loss.backward()  # recomputed: the forward's gradients went to the first backward (issue 15, item 5)
    torch.testing.assert_close(W.grad, 2 * first)
    W.grad = None
    opts = vl.LinearCrossEntropyOptions(allow_retain_graph=True)
    loss = vl.linear_cross_entropy(x, W, t, options=opts)
    loss.backward(retain_graph=True)
    first = W.grad.clone()
    loss.backward()
    torch.testing.assert_close(W.grad, 2 * first)
    # 'none' recomputes: no flag needed
    W.grad = None
    loss = vl.linear_cross_entropy(x, W, t, reduction="none")
    loss.sum().backward(retain_graph=True)
    loss.sum().backward()
    torch.testing.assert_close(W.grad, 2 * N * first)  # the sum of the rows is N times their mean


def test_empty_batch():
    x, W, b, t, w = make(n=0)
    assert torch.isnan(vl.linear_cross_entropy(x, W, t))
    assert vl.linear_cross_entropy(x, W, t, reduction="sum") == 0
    assert vl.linear_cross_entropy(x, W, t, reduction="none").shape == (0,)


# --------------------------------------------------------------------------- the whole-logits paths


def test_probability_targets_and_k_dim_weights_match_torch():
    x, W, b, t, w = make(bias=True)
    q = torch.softmax(torch.randn(N, C, generator=gen(5), dtype=x.dtype), 1)
    for kw in (dict(), dict(label_smoothing=0.1, reduction="sum")):
        assert_matches(run(_bind(vl.linear_cross_entropy, q), x, W, b, **kw),
                       run(_bind(torch_linear_cross_entropy, q), x, W, b, **kw))
    Wk = torch.randn(C, 3, H, generator=gen(6), dtype=x.dtype)
    bk = torch.randn(C, 3, generator=gen(7), dtype=x.dtype)
    tk = torch.randint(0, C, (N, 3), generator=gen(8))
    assert_matches(run(_bind(vl.linear_cross_entropy, tk), x, Wk, bk, ignore_index=2),
                   run(_bind(torch_linear_cross_entropy, tk), x, Wk, bk, ignore_index=2))


def test_mixed_dtypes_raise_torchs_error():
    x, W, b, t, w = make()
    with pytest.raises(RuntimeError) as ours:
        vl.linear_cross_entropy(x.float(), W, t)
    if not TORCH_LINEAR:
        pytest.skip(NO_TORCH_LINEAR)
    with pytest.raises(RuntimeError) as theirs:
        F.linear_cross_entropy(x.float(), W, t)
    assert str(ours.value) == str(theirs.value)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("args", [
    lambda x, W, t: (x[None], W, t),          # 3-D input
    lambda x, W, t: (x, W[0], t),             # 1-D weight
    lambda x, W, t: (x, W[:, :-1], t),        # in_features differ
])
def test_shape_errors_are_torchs(args):
    x, W, b, t, w = make()
    with pytest.raises(RuntimeError) as ours:
        vl.linear_cross_entropy(*args(x, W, t))
    if not TORCH_LINEAR:
        pytest.skip(NO_TORCH_LINEAR)
    with pytest.raises(RuntimeError) as theirs:
        F.linear_cross_entropy(*args(x, W, t))
    assert str(ours.value) == str(theirs.value)


def test_bias_shape_error_is_torchs():
    x, W, b, t, w = make()
    bad = torch.zeros(C + 1, dtype=x.dtype)
    with pytest.raises(RuntimeError) as ours:
        vl.linear_cross_entropy(x, W, t, linear_bias=bad)
    if not TORCH_LINEAR:
        pytest.skip(NO_TORCH_LINEAR)
    with pytest.raises(RuntimeError) as theirs:
        F.linear_cross_entropy(x, W, t, linear_bias=bad)
    assert str(ours.value) == str(theirs.value)


def test_batch_size_mismatch():
    x, W, b, t, w = make()
    with pytest.raises(vl.BatchSizeMismatchError) as error:
        vl.linear_cross_entropy(x, W, t[:-1])
    assert isinstance(error.value, ValueError)
    text = str(error.value)
    assert f"Expected input batch_size ({N}) to match target batch_size ({N - 1})" in text
    assert f"input has shape ({N}, {H})" in text and f"linear_weight ({C}, {H})" in text


def test_out_of_range_target_position_is_the_full_targets():
    x, W, b, t, w = make()
    t = t.clone()
    t[19] = C + 3
    t[21] = -7
    with pytest.raises(vl.TargetOutOfRangeError) as error:
        vl.linear_cross_entropy(x, W, t, chunk_size=4)  # row 19 is row 3 of the fifth chunk
    e = error.value
    assert e.position == (19,) and e.value == C + 3 and e.num_classes == C and e.count == 2
    assert f"target[19] = {C + 3}" in str(e) and f"2 of {N} targets are invalid" in str(e)


def test_out_of_range_target_is_found_before_any_product(monkeypatch):
    from validated_loss import _linear_chunked

    monkeypatch.setattr(_linear_chunked, "_chunk_logits", lambda *a: pytest.fail("computed logits"))
    x, W, b, t, w = make()
    t = t.clone()
    t[-1] = C
    with pytest.raises(vl.TargetOutOfRangeError):
        vl.linear_cross_entropy(x, W, t)


def test_other_metadata_errors_name_the_logits():
    x, W, b, t, w = make()
    with pytest.raises(vl.WeightShapeError, match="input @ linear_weight.T"):
        vl.linear_cross_entropy(x, W, t, weight=torch.ones(C + 1, dtype=x.dtype))
    with pytest.raises(vl.TargetDtypeError):
        vl.linear_cross_entropy(x, W, t.int())
    with pytest.raises(vl.LabelSmoothingRangeError):
        vl.linear_cross_entropy(x, W, t, label_smoothing=5.0)


def test_argument_errors():
    x, W, b, t, w = make()
    with pytest.raises(ValueError):
        vl.linear_cross_entropy(x, W, t, reduction="avg")
    with pytest.raises(ValueError):
        vl.linear_cross_entropy(x, W, t, chunk_size=0)
    with pytest.raises(ValueError):
        vl.linear_cross_entropy(x, W, t, softcap=-1.0)
    with pytest.raises(ValueError):
        vl.linear_cross_entropy(x, W, t, validate="later")
    q = torch.softmax(torch.randn(N, C, dtype=x.dtype), 1)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified"):
        vl.linear_cross_entropy(x, W, q, ignore_index=-100)


# --------------------------------------------------------------------------- the module


@needs_torch_linear
def test_module_is_torchs():
    torch.manual_seed(0)
    ours = vl.LinearCrossEntropyLoss(H, C, bias=True, dtype=torch.float64, ignore_index=3, label_smoothing=0.1)
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(H, C, bias=True, dtype=torch.float64, ignore_index=3,
                                             label_smoothing=0.1)
    assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours) == repr(theirs)
    x, _, _, t, _ = make()
    lo = ours(x, t)
    lt = theirs(x, t)
    torch.testing.assert_close(lo, lt)
    lo.backward()
    lt.backward()
    for po, pt in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(po.grad, pt.grad)


def test_module_extras():
    m = vl.LinearCrossEntropyLoss(H, C, dtype=torch.float64, softcap=2.0, lse_square_scale=0.1, return_lse=True,
                                  chunk_size=5)
    x, _, _, t, _ = make()
    loss, lse = m(x, t)
    ref_loss, ref_lse = formula_reference(x, m.linear.weight, t, softcap=2.0, lse_square_scale=0.1, return_lse=True)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(lse, ref_lse)


def test_module_k_dimensional():
    ours = vl.LinearCrossEntropyLoss(H, C, out_features=(2,), bias=True, dtype=torch.float64)
    x, _, _, _, _ = make()
    t = torch.randint(0, C, (N, 2), generator=gen(2))
    W = ours.linear.weight.reshape(C, 2, H)
    b = ours.linear.bias.reshape(C, 2)
    torch.testing.assert_close(ours(x, t), torch_linear_cross_entropy(x, W, t, linear_bias=b))


# The same checkpoint layout on every torch: a state_dict saved on one torch loads on another.
MODULE_KWARGS = [dict(), dict(bias=True, out_features=(2, 3), weight=torch.rand(C, dtype=torch.float64) + 0.5,
                              ignore_index=3, label_smoothing=0.1, reduction="sum",
                              options=vl.LinearCrossEntropyOptions(batch_chunk_size=4))]


@pytest.mark.parametrize("kw", MODULE_KWARGS, ids=["defaults", "everything"])
def test_module_layout_on_every_torch(kw):
    m = vl.LinearCrossEntropyLoss(H, C, dtype=torch.float64, **kw)
    rows = C * 6 if kw else C
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    expected = {"linear.weight": (rows, H)}
    if kw:
        expected.update({"weight": (C,), "linear.bias": (rows,)})
    assert shapes == expected
    assert (m.num_classes, m.out_features, m.ignore_index, m.label_smoothing) == \
        (C, kw.get("out_features", ()), kw.get("ignore_index"), kw.get("label_smoothing", 0.0))
    m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()})


@needs_torch_linear
@pytest.mark.parametrize("kw", MODULE_KWARGS, ids=["defaults", "everything"])
def test_own_module_base_is_torchs(kw):
    """The constructor and layout used on a torch without nn.LinearCrossEntropyLoss, against
    torch's own: the same parameters from the same seed, state_dict, attributes and repr."""
    torch.manual_seed(3)
    ours = OwnLinearCrossEntropyLoss(H, C, dtype=torch.float64, **kw)
    torch.manual_seed(3)
    theirs = torch.nn.LinearCrossEntropyLoss(H, C, dtype=torch.float64, **kw)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, theirs.state_dict()[k], rtol=0, atol=0)
    for name in ("num_classes", "out_features", "reduction", "ignore_index", "label_smoothing", "options"):
        assert getattr(ours, name) == getattr(theirs, name)
    for bad in (dict(weight=torch.ones(C + 1)), dict(label_smoothing=1.5)):
        with pytest.raises(RuntimeError) as e_ours:
            OwnLinearCrossEntropyLoss(H, C, **bad)
        with pytest.raises(RuntimeError) as e_theirs:
            torch.nn.LinearCrossEntropyLoss(H, C, **bad)
        assert str(e_ours.value) == str(e_theirs.value)


@needs_torch_linear
def test_own_options_are_torchs():
    for kw in (dict(), dict(allow_retain_graph=True, batch_chunk_size=8, chunking_method=None,
                            acc_policy="accurate", acc_dtype=torch.float32)):
        assert repr(OwnLinearCrossEntropyOptions(**kw)) == repr(torch.nn.LinearCrossEntropyOptions(**kw))
    for bad in (dict(acc_policy="fast"), dict(chunking_method="aspect_ratio:0"), dict(chunking_method="rows"),
                dict(batch_chunk_size=0), dict(batch_chunk_size=2.0), dict(acc_dtype=torch.int64)):
        with pytest.raises(ValueError) as e_ours:
            OwnLinearCrossEntropyOptions(**bad)
        with pytest.raises(ValueError) as e_theirs:
            torch.nn.LinearCrossEntropyOptions(**bad)
        # Ours are torch 2.13's words; 2.14 appends the valid choices to some of them.
        assert str(e_theirs.value).startswith(str(e_ours.value))
        if TORCH_VERSION == (2, 13):
            assert str(e_ours.value) == str(e_theirs.value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        OwnLinearCrossEntropyOptions().batch_chunk_size = 3


def test_compiled_model_runs_eagerly_inside():
    torch._dynamo.reset()
    m = vl.LinearCrossEntropyLoss(H, C, dtype=torch.float64, chunk_size=6)
    x, _, _, t, _ = make()
    out = torch.compile(m, backend="aot_eager")(x, t)
    out.backward()
    g = m.linear.weight.grad.clone()
    m.zero_grad()
    ref = torch_reference(x, m.linear.weight, t)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, m.linear.weight.grad)
    torch._dynamo.reset()
