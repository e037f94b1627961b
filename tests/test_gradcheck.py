"""Autograd and compiler integration: gradcheck / gradgradcheck in float64, torch.library.opcheck on
every op of the library (samples captured from the public API), and torch.compile(fullgraph=True)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import gen, relayout, require_vl

vl = require_vl()
pytestmark = pytest.mark.usefixtures("single_thread")

C = 5
F64 = torch.float64


def logits(shape, seed=0, layout="contig"):
    return relayout(torch.randn(shape, generator=gen(seed), dtype=F64), layout, seed).requires_grad_()


def index_target(shape, seed=1, ignore=None):
    t = torch.randint(0, C, shape, generator=gen(seed))
    if ignore is not None and t.numel() > 1:
        t.view(-1)[::3] = ignore
    return t


def probs(shape, seed=2):
    return torch.softmax(torch.randn(shape, generator=gen(seed), dtype=F64), 1 if len(shape) > 1 else 0)


INDEX_CASES = {
    # name: (input shape, target shape, kwargs)
    "2d-mean": ((4, C), (4,), dict()),
    "2d-sum": ((4, C), (4,), dict(reduction="sum")),
    "2d-none": ((4, C), (4,), dict(reduction="none")),
    "2d-ls": ((4, C), (4,), dict(label_smoothing=0.3)),
    "2d-ls-none": ((4, C), (4,), dict(label_smoothing=0.3, reduction="none")),
    "2d-weight": ((4, C), (4,), dict(weight=True)),
    "2d-weight-ls-sum": ((4, C), (4,), dict(weight=True, label_smoothing=0.2, reduction="sum")),
    "2d-ignore": ((6, C), (6,), dict(ignore_index=2)),
    "2d-ignore-weight-ls": ((6, C), (6,), dict(ignore_index=-100, weight=True, label_smoothing=0.1)),
    "2d-ignore-none": ((6, C), (6,), dict(ignore_index=0, reduction="none", weight=True)),
    "1d": ((C,), (), dict(weight=True)),
    "3d-ls": ((2, C, 3), (2, 3), dict(label_smoothing=0.25, ignore_index=1)),
    "4d-mean": ((2, C, 2, 3), (2, 2, 3), dict()),
    "4d-weight-ignore-ls": ((2, C, 2, 3), (2, 2, 3), dict(weight=True, ignore_index=4, label_smoothing=0.4)),
    "4d-none": ((2, C, 2, 3), (2, 2, 3), dict(reduction="none", weight=True)),
    "ls-1.0": ((4, C), (4,), dict(label_smoothing=1.0, weight=True)),
}


def _index_fn(case):
    in_shape, t_shape, kw = INDEX_CASES[case]
    kw = dict(kw)
    t = index_target(t_shape, ignore=kw.get("ignore_index"))
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(C, generator=gen(3), dtype=F64) + 0.2
    return logits(in_shape), (lambda x: vl.cross_entropy(x, t, **kw))


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_gradcheck_class_index(case):
    x, fn = _index_fn(case)
    assert gradcheck(fn, (x,))


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_gradgradcheck_class_index(case):
    x, fn = _index_fn(case)
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
def test_gradcheck_non_contiguous(layout):
    shape = (2, C, 3, 2) if layout == "channels_last" else (4, C)
    x = logits(shape, layout=layout)
    t = index_target(shape[:1] + shape[2:])
    assert gradcheck(lambda x: vl.cross_entropy(x, t, label_smoothing=0.1), (x,))
    q = relayout(probs(shape), layout, 3).requires_grad_()
    assert gradcheck(lambda x, q: vl.cross_entropy(x, q), (x, q))


PROB_CASES = {
    "2d-mean": ((4, C), dict()),
    "2d-sum": ((4, C), dict(reduction="sum")),
    "2d-none": ((4, C), dict(reduction="none")),
    "2d-ls": ((4, C), dict(label_smoothing=0.3)),
    "2d-weight-ls": ((4, C), dict(weight=True, label_smoothing=0.2)),
    "1d": ((C,), dict()),
    "4d-weight-none": ((2, C, 2, 2), dict(weight=True, reduction="none")),
    "3d-ls-sum": ((2, C, 3), dict(label_smoothing=0.5, reduction="sum")),
}


@pytest.mark.parametrize("case", list(PROB_CASES))
@pytest.mark.parametrize("wrt", ["input", "input+target", "target", "input+target+weight"])
@pytest.mark.parametrize("order", ["grad", "gradgrad"])
def test_gradcheck_probability(case, wrt, order):
    shape, kw = PROB_CASES[case]
    kw = dict(kw)
    has_w = kw.pop("weight", False)
    if "weight" in wrt and not has_w:
        pytest.skip("no weight in this case")
    x = logits(shape)
    q = probs(shape)
    w = torch.rand(C, generator=gen(3), dtype=F64) + 0.2 if has_w else None
    inputs = {"input": x, "target": q, "weight": w}
    names = wrt.split("+")
    for n in names:
        inputs[n].requires_grad_()
    if "input" not in names:
        x.requires_grad_(False)

    def fn(*diff):
        a = dict(inputs, **dict(zip(names, diff)))
        return vl.cross_entropy(a["input"], a["target"], a["weight"], **kw)

    args = tuple(inputs[n] for n in names)
    check = gradcheck if order == "grad" else gradgradcheck
    assert check(fn, args)


def test_gradcheck_would_fail_on_a_wrong_gradient():
    """The checks above can fail: a deliberately wrong backward is caught by gradcheck."""
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t):
            ctx.save_for_backward(x, t)
            return vl.cross_entropy(x.detach(), t)

        @staticmethod
        def backward(ctx, g):
            x, t = ctx.saved_tensors
            return g * torch.softmax(x, 1) / x.shape[0], None  # forgets the one-hot term

    x = logits((4, C))
    t = index_target((4,))
    assert not gradcheck(lambda x: Wrong.apply(x, t), (x,), raise_exception=False)


# --------------------------------------------------------------------------- opcheck

OPS = ("cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_bwd_", "cross_entropy_prob_fwd",
       "cross_entropy_prob_bwd", "cross_entropy_fwd_grad")


class _Spy(TorchDispatchMode):
    """Records every validated_loss op call (forward and backward) with copies of its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "validated_loss":
            self.calls.append((func, tuple(_copy(a) for a in args), {k: _copy(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def _copy(a):
    if not isinstance(a, torch.Tensor):
        return a
    if a.numel() and min(a.stride(), default=1) == 0:
        return a.detach().clone()
    c = torch.empty_strided(a.size(), a.stride(), dtype=a.dtype)  # keep the strides the op saw
    c.copy_(a.detach())
    return c


# What requires grad in an opcheck sample: the differentiable floating arguments.
_DIFFERENTIABLE = {
    "cross_entropy_fwd": {"logits"},
    "cross_entropy_bwd": {"grad_loss", "logits", "grad_lse"},
    "cross_entropy_prob_fwd": {"logits", "target", "weight"},
    "cross_entropy_prob_bwd": {"grad_loss", "logits", "target"},
}


def _public_calls():
    """Public-API calls covering the ops' argument space (dtypes, shapes, strides, options)."""
    g = gen(11)
    configs = [  # (dtype, shape, layout, reduction, label_smoothing)
        (torch.float32, (6, C), "contig", "mean", 0.0),
        (torch.float64, (6, C), "transposed", "none", 0.2),
        (torch.bfloat16, (6, C), "contig", "sum", 0.2),
        (torch.float16, (6, C), "sliced", "mean", 0.1),
        (torch.float32, (2, C, 3, 2), "channels_last", "mean", 0.2),
        (torch.float64, (2, C, 3), "class_last", "none", 0.0),
        (torch.float32, (C,), "contig", "sum", 0.0),
        (torch.float32, (0, C), "contig", "mean", 0.0),  # NaN mean: opcheck cannot compare NaN outputs
        (torch.float64, (2, C, 0), "contig", "none", 0.1),
    ]
    out = []
    for dtype, shape, layout, red, ls in configs:
        x = relayout(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype), layout)
        t_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
        t = torch.randint(0, C, t_shape, generator=g)
        if t.numel() > 2:
            t.view(-1)[::3] = 1
        w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
        cdim = 1 if len(shape) > 1 else 0
        q = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), cdim).to(dtype)
        out.append((x, t, dict(weight=w, ignore_index=1, reduction=red, label_smoothing=ls)))
        out.append((x, t, dict(reduction=red)))
        out.append((x, q, dict(weight=w if ls else None, reduction=red, label_smoothing=ls)))
    # The LLM options (z-loss, softcap, a gradient flowing into the returned lse) reach the ops too.
    x = torch.randn(6, C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (6,), generator=g)
    t[::3] = 1
    out.append((x, t, dict(ignore_index=1, reduction="none", lse_square_scale=0.1, softcap=2.0, return_lse=True)))
    out.append((x.float(), t, dict(label_smoothing=0.1, lse_square_scale=0.05, softcap=3.0)))
    return out


def _public_inplace_calls():
    """inplace_backward calls: the gradient written over the logits (dtypes, layouts, options)."""
    g = gen(14)
    x = torch.randn(6, C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (6,), generator=g)
    t[::3] = 1
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    x4 = relayout(torch.randn(2, C, 3, 2, generator=g), "channels_last")
    return [
        (x, t, dict(weight=w, ignore_index=1, label_smoothing=0.1)),
        (relayout(x.float(), "transposed"), t, dict(reduction="none")),
        (x.bfloat16(), t, dict(reduction="sum", lse_square_scale=0.1, softcap=2.0, return_lse=True)),
        (x4, torch.randint(0, C, (2, 3, 2), generator=g), dict(label_smoothing=0.2)),
    ]


def _public_autocast_calls():
    """Calls under CPU autocast (bfloat16/float16 logits, float32 losses)."""
    g = gen(13)
    x = torch.randn(6, C, generator=g)
    t = torch.randint(0, C, (6,), generator=g)
    q = torch.softmax(torch.randn(6, C, generator=g), 1)
    w = torch.rand(C, generator=g) + 0.5
    return [
        (x.bfloat16(), t, dict(weight=w, reduction="none", label_smoothing=0.1)),
        (x.half(), t, dict(reduction="mean")),
        (x.bfloat16(), q.bfloat16(), dict(reduction="none")),
        (x.half(), q.half(), dict(reduction="sum", label_smoothing=0.2)),
    ]


def _public_linear_calls():
    """linear_cross_entropy calls: its chunk step (cross_entropy_fwd_grad) in 'sum' and 'none'."""
    g = gen(12)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    W = torch.randn(C, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (7,), generator=g)
    t[::3] = 1
    return [
        (x, W, t, dict(chunk_size=3, ignore_index=1, label_smoothing=0.1)),
        (x.float(), W.float(), t, dict(chunk_size=4, reduction="none", softcap=2.0, lse_square_scale=0.1)),
        (x.bfloat16(), W.bfloat16(), t, dict(reduction="sum", return_lse=True)),
    ]


def _samples():
    samples = {name: [] for name in OPS}
    spy = _Spy()
    with spy:
        for i, (x, t, kw) in enumerate(_public_calls()):
            xl = x.detach().requires_grad_()
            tl = t.detach().requires_grad_(i % 2 == 0) if t.is_floating_point() else t  # target_grad both ways
            loss = vl.cross_entropy(xl, tl, **kw)
            loss, lse = loss if isinstance(loss, tuple) else (loss, None)
            go = torch.ones_like(loss) if loss.dim() else torch.tensor(1.5, dtype=loss.dtype)
            if lse is None:
                loss.backward(go)
            else:
                torch.autograd.backward([loss, lse], [go, torch.full_like(lse, 0.5)])
        for x, t, kw in _public_inplace_calls():  # cross_entropy_bwd_ (logits: a non-leaf copy)
            loss = vl.cross_entropy(x.detach().requires_grad_().clone(), t, inplace_backward=True, **kw)
            loss, lse = loss if isinstance(loss, tuple) else (loss, None)
            torch.autograd.backward([loss] + ([lse] if lse is not None else []),
                                    [torch.ones_like(loss)] + ([torch.full_like(lse, 0.5)] if lse is not None else []))
        for x, t, kw in _public_autocast_calls():  # acc_loss: half logits read as they are, float32 loss
            with torch.autocast("cpu", dtype=x.dtype):
                loss = vl.cross_entropy(x.detach().requires_grad_(), t, **kw)
            loss.backward(torch.ones_like(loss))
        for x, W, t, kw in _public_linear_calls():
            out = vl.linear_cross_entropy(x.detach().requires_grad_(), W.detach().requires_grad_(), t, **kw)
            loss, lse = out if isinstance(out, tuple) else (out, None)
            torch.autograd.backward([loss] + ([lse] if lse is not None else []),
                                    [torch.ones_like(loss)] + ([torch.full_like(lse, 0.5)] if lse is not None else []))
    for func, args, kwargs in spy.calls:
        name = func._schema.name.split("::")[1]
        schema_args = func._schema.arguments
        wanted = _DIFFERENTIABLE.get(name, set())
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     and schema_args[i].name in wanted else a for i, a in enumerate(args))
        samples.setdefault(name, []).append((func, args, kwargs))
    return samples


def _unique_samples():
    out = []
    seen = set()
    for name, calls in _samples().items():
        for func, args, kwargs in calls:
            key = (name,) + tuple((tuple(a.shape), a.dtype, a.stride(), a.requires_grad)
                                  if isinstance(a, torch.Tensor) else a for a in args)
            if key not in seen:
                seen.add(key)
                out.append((name, func, args, kwargs))
    return out


SAMPLES = _unique_samples()


def _library_ops():
    """The library's tensor ops (opcheck tests what a tensor op registers: fake kernel, autograd,
    schema; the gradient cache's settings take and return plain ints)."""
    names = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("validated_loss::"))
    return [n for n in names
            if any(isinstance(a.type, torch.TensorType)
                   for a in getattr(torch.ops.validated_loss, n).default._schema.arguments)]


# Host-side ops with no tensor output (they raise, or queue a check): nothing for opcheck to compare.
HOST_OPS = ("raise_for_status", "deferred_submit", "check_deferred")


def test_every_op_has_opcheck_samples():
    """Every op of the library is exercised below (a new op needs samples here)."""
    missing = [op for op in _library_ops() if op not in OPS and op not in HOST_OPS]
    assert not missing, f"ops without opcheck samples: {missing}"
    for op in OPS:
        assert any(s[0] == op for s in SAMPLES), f"the public API never called {op}"


def _sample_id(sample):
    name, func, args, _ = sample
    x = args[[a.name for a in func._schema.arguments].index("logits")]
    return f"{name}-{str(x.dtype)[6:]}-{'x'.join(map(str, x.shape))}-" + "-".join(
        str(a) for a in args if not isinstance(a, torch.Tensor) and a is not None)


@pytest.mark.parametrize("sample", SAMPLES, ids=[_sample_id(s) for s in SAMPLES])
def test_opcheck(sample):
    name, func, args, kwargs = sample
    empty = any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in args)
    # a NaN output (mean over nothing) makes the eager-vs-compiled comparison fail on NaN != NaN
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") if empty else \
        ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(func, args, kwargs, test_utils=utils)


def test_opcheck_raise_for_status():
    """The fallback path's op (devices without kernels): a clean status raises nothing."""
    op = torch.ops.validated_loss.raise_for_status.default
    status = torch.tensor([-1, -1, 0, -1, -1, 0])
    torch.library.opcheck(op, (status, [4], C, -100, [4, C]))


# --------------------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Net(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.lin = torch.nn.Linear(8, C, dtype=F64)
        self.loss = loss

    def forward(self, x, t):
        return self.loss(self.lin(x), t)


def _train_step(model, x, t):
    model.zero_grad(set_to_none=True)
    loss = model(x, t)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _functional_model(**kw):
    class F_(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, C, dtype=F64)

        def forward(self, x, t):
            return vl.cross_entropy(self.lin(x), t, **kw)
    return F_()


COMPILE_CASES = {
    "functional-index": (lambda: _functional_model(label_smoothing=0.1, ignore_index=2), "index"),
    "functional-index-none": (lambda: _functional_model(reduction="none"), "index"),
    "functional-prob": (lambda: _functional_model(label_smoothing=0.2), "prob"),
    "module-index": (lambda: Net(vl.CrossEntropyLoss(weight=torch.rand(C, dtype=F64) + 0.5, ignore_index=1)), "index"),
    "module-prob": (lambda: Net(vl.CrossEntropyLoss(reduction="sum")), "prob"),
}


def _data(kind, n=6):
    x = torch.randn(n, 8, generator=gen(n), dtype=F64)
    if kind == "index":
        t = torch.randint(0, C, (n,), generator=gen(n + 1))
    else:
        t = torch.softmax(torch.randn(n, C, generator=gen(n + 1), dtype=F64), 1)
    return x, t


def _compare_compiled(make, kind, backend, dynamic=None, sizes=(6,)):
    torch.manual_seed(0)
    model = make()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=dynamic)
    for n in sizes:
        x, t = _data(kind, n)
        out_eager = model(x, t)
        if out_eager.dim():
            out_eager = out_eager.sum()
        model.zero_grad(set_to_none=True)
        out_eager.backward()
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        out = compiled(x, t)
        if out.dim():
            out = out.sum()
        out.backward()
        torch.testing.assert_close(out.detach(), out_eager.detach(), rtol=1e-10, atol=1e-12)
        for g, ge in zip([p.grad for p in model.parameters()], eager_grads):
            torch.testing.assert_close(g, ge, rtol=1e-10, atol=1e-12)
        # and the loss is torch's
        with torch.no_grad():
            lin = model.lin(x)
        if hasattr(model, "loss"):
            ref = F.cross_entropy(lin, t, model.loss.weight, ignore_index=model.loss.ignore_index,
                                  reduction=model.loss.reduction, label_smoothing=model.loss.label_smoothing)
            torch.testing.assert_close(out.detach(), ref.sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_compile_fullgraph(case, backend):
    make, kind = COMPILE_CASES[case]
    _compare_compiled(make, kind, backend)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("case", ["functional-index", "module-prob"])
def test_compile_dynamic_shapes(case):
    """Symbolic batch sizes go through the fake kernels."""
    make, kind = COMPILE_CASES[case]
    _compare_compiled(make, kind, "aot_eager", dynamic=True, sizes=(6, 9, 3))


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_4d_channels_last():
    conv = torch.nn.Conv2d(3, C, 1, dtype=F64).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 4, 4, dtype=F64).to(memory_format=torch.channels_last)
    t = torch.randint(0, C, (2, 4, 4))

    def f(x, t):
        return vl.cross_entropy(conv(x), t, label_smoothing=0.1)

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(x, t)
    out.backward()
    g = conv.weight.grad.clone()
    conv.zero_grad()
    ref = F.cross_entropy(conv(x), t, label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, conv.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("tkind", ["index", "prob"])
def test_compile_autocast(tkind):
    """Under autocast the compiled graph reads the bfloat16 logits too (acc_loss through the fake
    kernels): a float32 loss and a bfloat16 gradient, equal to eager's."""
    x = torch.randn(6, C, generator=gen(1)).bfloat16()
    t = torch.randint(0, C, (6,), generator=gen(2)) if tkind == "index" else \
        torch.softmax(torch.randn(6, C, generator=gen(2)), 1).bfloat16()
    w = torch.rand(C, generator=gen(3)) + 0.5

    def f(x, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return vl.cross_entropy(x, t, w, label_smoothing=0.1)

    results = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        xl = x.detach().requires_grad_()
        loss = fn(xl, t)
        (g,) = torch.autograd.grad(loss, xl)
        results.append((loss, g))
    (eager, g_eager), (compiled, g_compiled) = results
    assert compiled.dtype == torch.float32 and g_compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(g_compiled, g_eager, rtol=0, atol=0)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_inductor():
    """The default backend (inductor) end to end."""
    _compare_compiled(COMPILE_CASES["module-index"][0], "index", "inductor")


# --------------------------------------------------------------------------- torch.func transforms


@pytest.mark.parametrize("tkind", ["index", "prob"])
def test_func_grad(tkind):
    """torch.func.grad works on F.cross_entropy; the drop-in must give the same gradient."""
    x = logits((4, C)).detach()
    t = index_target((4,), ignore=2) if tkind == "index" else probs((4, C))
    kw = dict(ignore_index=2) if tkind == "index" else {}
    expected = torch.func.grad(lambda a: F.cross_entropy(a, t, label_smoothing=0.1, **kw))(x)
    got = torch.func.grad(lambda a: vl.cross_entropy(a, t, label_smoothing=0.1, **kw))(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tkind", ["index", "prob"])
def test_func_vmap(tkind):
    """Per-example losses with torch.func.vmap over a leading batch of problems."""
    x = torch.randn(3, 4, C, generator=gen(1), dtype=F64)
    t = torch.randint(0, C, (3, 4), generator=gen(2)) if tkind == "index" else \
        torch.softmax(torch.randn(3, 4, C, generator=gen(2), dtype=F64), -1)
    for reduction in ("mean", "none"):
        expected = torch.func.vmap(lambda a, b: F.cross_entropy(a, b, reduction=reduction))(x, t)
        got = torch.func.vmap(lambda a, b: vl.cross_entropy(a, b, reduction=reduction))(x, t)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transform", ["grad", "jvp"])
@pytest.mark.parametrize("linear", [False, True])
def test_func_vmap_of_grad_and_jvp(transform, linear):
    """Per-sample gradients (vmap(grad(...)), the torch.func tutorial) and vmap(jvp(...)), with
    class-index targets (whose range check once wrote into a status tensor in place, which vmap
    refuses); linear_cross_entropy too."""
    x = torch.randn(3, 4, 6, generator=gen(1), dtype=F64)
    W = torch.randn(C, 6, generator=gen(2), dtype=F64)
    t = torch.randint(0, C, (3, 4), generator=gen(3))
    t[0, 1] = -100

    def loss(fn):
        if linear:
            return lambda a, b: fn(a, W, b, label_smoothing=0.1)
        return lambda a, b: fn(a @ W.T, b, label_smoothing=0.1)

    def per_sample(fn):
        f = loss(fn)
        if transform == "grad":
            return torch.func.vmap(torch.func.grad(f))(x, t)
        return torch.func.vmap(lambda a, b: torch.func.jvp(lambda v: f(v, b), (a,), (torch.ones_like(a),))[1])(x, t)

    ours = per_sample(vl.linear_cross_entropy if linear else vl.cross_entropy)
    # The linear head's reference is torch's loss of the full logits (every torch has it).
    reference = (lambda a, W_, b, **kw: F.cross_entropy(a @ W_.T, b, **kw)) if linear else F.cross_entropy
    expected = per_sample(reference)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_func_vmap_of_grad_still_reports_a_bad_target():
    x = torch.randn(3, 4, C, generator=gen(1), dtype=F64)
    t = torch.randint(0, C, (3, 4), generator=gen(2))
    t[2, 1] = C + 3
    with pytest.raises(vl.TargetOutOfRangeError, match=f"Target {C + 3} is out of bounds"):
        torch.func.vmap(torch.func.grad(lambda a, b: vl.cross_entropy(a, b)))(x, t)


@pytest.mark.parametrize("tkind", ["index", "prob"])
def test_forward_mode_jvp(tkind):
    """Forward-mode AD (torch.func.jvp): torch supports it for cross_entropy; a drop-in must
    either give the same tangent or raise -- never a silently wrong (e.g. zero) one."""
    x = logits((4, C)).detach()
    v = torch.randn(4, C, generator=gen(5), dtype=F64)
    t = index_target((4,)) if tkind == "index" else probs((4, C))
    _, expected = torch.func.jvp(lambda a: F.cross_entropy(a, t, label_smoothing=0.1), (x,), (v,))
    assert expected.abs().item() > 1e-6  # the test can tell a zero tangent from the right one
    try:
        _, got = torch.func.jvp(lambda a: vl.cross_entropy(a, t, label_smoothing=0.1), (x,), (v,))
    except (RuntimeError, NotImplementedError):
        pytest.fail("forward-mode AD is not supported (torch supports it)")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
