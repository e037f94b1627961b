"""Shared helpers for the parity tests: seeding, the tolerance rule, and one comparison routine.

Every comparison runs the same call three times on the same tensors:
  * torch   -- torch.nn.functional.cross_entropy on the tensors as given (the reference);
  * ours    -- validated_loss on the very same tensors (same storage, same strides);
  * truth   -- torch in float64 on the same values (only for bf16/fp16 inputs).
"""

import sys
import warnings
import zlib

import pytest

import torch

from torch_versions import torch_cross_entropy

try:
    import validated_loss as vl
except ImportError as error:  # other test files (pure-Python parts) can still run; ours fail loudly
    vl = None
    _IMPORT_ERROR = error


def require_vl():
    """The package under test; re-raises its ImportError (a collection error, never a skip)."""
    if vl is None:
        raise _IMPORT_ERROR
    return vl


FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LOW_PRECISION = (torch.bfloat16, torch.float16)

# Direct comparison with torch when every floating input is fp32/fp64.
DIRECT_TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
ABS_FLOOR = 1e-6  # times the largest |truth| of the tensor, for the low-precision rule


def seed_of(*parts) -> int:
    """A stable seed from any printable description of a case."""
    return zlib.crc32(repr(parts).encode())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0x7FFFFFFF)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def single_thread():
    """Small cases run single-threaded: ATen would not split them anyway, and an idle second
    OpenMP thread costs milliseconds per op on a busy machine. Large cases add `all_threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield before
    torch.set_num_threads(before)


@pytest.fixture
def all_threads(single_thread):
    torch.set_num_threads(single_thread)
    yield


def lowest_precision(*tensors):
    """The least precise floating dtype among the given tensors (None entries skipped)."""
    order = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
    fl = [t.dtype for t in tensors if t is not None and t.is_floating_point()]
    return max(fl, key=order.__getitem__)


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An upper bound on the spacing of `dtype` numbers near |values| (float64 result)."""
    fi = torch.finfo(dtype)
    return torch.clamp(values.abs() * fi.eps, min=fi.smallest_normal * fi.eps)


def assert_close_to_torch(ours, theirs, truth=None, *, precision, what="loss", scale=0.0, against_truth=False):
    """ours/theirs: results of validated_loss and torch on the same inputs.

    precision: the least precise floating dtype that went into the computation.
      fp32/fp64: ours must equal torch within DIRECT_TOL.
      bf16/fp16: `truth` is torch in float64 on the same values; ours must be at least as close to
        it as torch is, elementwise: |ours - truth| <= max(1.5 |torch - truth|, 1 ulp + 1e-6 * scale),
        where truth rounds to a non-finite value ours must have that same value, and where it rounds
        to a finite value ours must be finite (whatever torch did).
    scale: the natural magnitude of the values (the absolute tolerances are relative to the larger of
      it and the largest |value|), so that results that cancel to ~0 are compared on a sensible scale.
    against_truth: apply the bf16/fp16 rule (at least as close to `truth` as torch) at any precision.
    """
    assert isinstance(ours, torch.Tensor), f"{what}: expected a Tensor, got {type(ours)}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != torch's {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
    assert ours.device == theirs.device, f"{what}: device {ours.device} != torch's {theirs.device}"
    if precision in DIRECT_TOL and not against_truth:
        tol = DIRECT_TOL[precision]
        scale = max(scale, _finite_absmax(theirs.double()))
        torch.testing.assert_close(
            ours, theirs, rtol=tol["rtol"], atol=tol["atol"] * (scale if scale > 0 else 1.0),
            equal_nan=True, msg=lambda m: f"{what} differs from torch ({precision}):\n{m}")
        return
    assert truth is not None, "low-precision comparison needs the float64 truth"
    o, t, tr = ours.detach().double(), theirs.detach().double(), truth.detach().double()
    assert tr.shape == o.shape, f"{what}: truth shape {tuple(tr.shape)} vs {tuple(o.shape)}"
    rounded = tr.to(ours.dtype).double()
    special = ~torch.isfinite(rounded)
    if special.any():
        same = (torch.isnan(o) & torch.isnan(rounded)) | (o == rounded)
        bad = special & ~same
        assert not bad.any(), (
            f"{what}: where the float64 truth is non-finite ours differs at {bad.nonzero()[:5].tolist()}: "
            f"ours {o[bad][:5].tolist()} truth {rounded[bad][:5].tolist()}")
    fin = ~special
    o, t, tr = o[fin], t[fin], tr[fin]
    not_fin = ~torch.isfinite(o)
    assert not not_fin.any(), (
        f"{what}: ours is non-finite ({o[not_fin][:5].tolist()}) where the float64 truth is finite "
        f"({tr[not_fin][:5].tolist()}); torch gave {t[not_fin][:5].tolist()}")
    scale = max(scale, _finite_absmax(tr))
    floor = ulp(tr, ours.dtype) + ABS_FLOOR * scale
    err_t = (t - tr).abs()
    err_t = torch.where(torch.isfinite(err_t), err_t, 4 * floor)  # torch itself broke: ours must be good
    bound = torch.maximum(1.5 * err_t, floor)
    err_o = (o - tr).abs()
    bad = err_o > bound
    if bad.any():
        i = torch.argmax((err_o - bound) / bound)
        raise AssertionError(
            f"{what} ({ours.dtype}): {int(bad.sum())}/{bad.numel()} elements farther from the float64 truth "
            f"than allowed; worst: ours {o[i].item():.9g}, torch {t[i].item():.9g}, truth {tr[i].item():.9g}, "
            f"|ours-truth| {err_o[i].item():.3g} > bound {bound[i].item():.3g}")


def _finite_absmax(t: torch.Tensor) -> float:
    t = t.detach()
    t = t[torch.isfinite(t)]
    return t.abs().max().item() if t.numel() else 0.0


def _call(fn, x, target, weight, kwargs, req, cast=None, grad_output=None):
    """Run fn on detached leaves of (x, target, weight); return (loss, grads, warnings)."""
    def leaf(t, r):
        if t is None:
            return None
        t = t.detach()
        if cast is not None and t.is_floating_point():
            t = t.to(cast)
        return t.requires_grad_(r)

    leaves = [leaf(x, req[0]), leaf(target, req[1]), leaf(weight, req[2])]
    kw = dict(kwargs)
    if weight is not None:
        kw["weight"] = leaves[2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = fn(leaves[0], leaves[1], **kw)
    wants = [leaf for leaf, r in zip(leaves, req) if r]
    grads = go = None
    if wants:
        assert isinstance(loss, torch.Tensor) and loss.requires_grad, (
            f"loss from {fn} does not require grad although inputs do")
        go = grad_output(loss) if callable(grad_output) else grad_output
        grads = torch.autograd.grad(loss, wants, go.to(cast) if cast is not None else go)
        grads = iter(grads)
        grads = [next(grads) if r else None for r in req]
    return loss, grads, caught, go


def _magnitudes(x, target, weight, kwargs, go):
    """The sizes rounding errors scale with, for the loss and for the gradients (float64).

    Loss: the sum of |terms| the reduction adds, over |denominator| (times its own cancellation
    Σ|w[y]| / |Σ w[y]| for a class-index mean): far above |result| when signed weights or targets
    cancel. Gradients: |grad_output| * |weight| (Σ|w| * Σ|q| when signed) over the same denominator,
    so that entries which cancel to ~0 (e.g. equal logits under smoothing) are judged on that scale.
    """
    reduction = _resolved_reduction(kwargs)
    prob = target.is_floating_point()
    c = x.shape[1 if x.dim() > 1 else 0]
    rows = max(1, x.numel() // max(1, c))
    w = torch.ones(c, dtype=torch.float64) if weight is None else weight.detach().double()
    q = target.detach().double() if prob else target
    signed = bool((w < 0).any()) or (prob and bool((q < 0).any()))
    kw = {k: v for k, v in kwargs.items() if k in ("ignore_index", "label_smoothing")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        terms = torch_cross_entropy(x.detach().double(), q.abs() if prob else q, w.abs(), reduction="none", **kw)
    terms = terms[torch.isfinite(terms)].abs()
    loss_scale = terms.max().item() if reduction == "none" and terms.numel() else terms.sum().item()
    grad_scale = 0.0
    if go is not None:
        grad_scale = _finite_absmax(go.double()) * (w.abs().sum().item() if signed else max(1.0, w.abs().max().item()))
        if signed and prob and q.numel():
            grad_scale *= q.abs().sum(1 if q.dim() > 1 else 0).max().item()
    if reduction == "mean":
        if prob:
            den, cond = rows, 1.0
        else:
            flat = target.reshape(-1).long()
            wy = w[flat[flat != kwargs.get("ignore_index", -100)].clamp(0, c - 1)] if c else w[:0]
            den = abs(wy.sum().item())
            cond = wy.abs().sum().item() / den if den else 1.0
        if den:
            loss_scale *= cond / den
            grad_scale *= cond / den
    return loss_scale, grad_scale


def _resolved_reduction(kwargs):
    from torch.nn import _reduction
    r = kwargs.get("reduction", "mean")
    if kwargs.get("size_average") is not None or kwargs.get("reduce") is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = _reduction.legacy_get_string(kwargs.get("size_average"), kwargs.get("reduce"))
    return "mean" if r == "elementwise_mean" else r


def make_grad_output(loss, seed=1234):
    """3.7 for a scalar loss, a seeded random tensor (in the loss dtype) otherwise."""
    if loss.dim() == 0:
        return torch.full_like(loss, 3.7).detach()
    g = torch.randn(loss.shape, generator=gen(seed), dtype=torch.float64) * 2 + 0.5
    return g.to(loss.dtype)


def compare_cross_entropy(x, target, weight=None, *, ours=None, reference=None, grad=True,
                          grad_target=None, grad_weight=None, grad_output=None, **kwargs):
    """Run torch and ours on the same tensors and compare loss and gradients (and inputs unchanged).

    grad_target/grad_weight default to True on the probability path (torch supports both there).
    Returns (our_loss, torch_loss, our_warnings, torch_warnings).
    """
    ours = ours or vl.cross_entropy
    reference = reference or torch_cross_entropy
    prob = target.is_floating_point()
    if grad_target is None:
        grad_target = prob
    if grad_weight is None:
        grad_weight = prob and weight is not None
    req = (bool(grad), bool(grad_target), bool(grad_weight))
    snapshot = [None if t is None else t.detach().clone() for t in (x, target, weight)]

    t_loss, t_grads, t_warn, go = _call(reference, x, target, weight, kwargs, req, grad_output=make_grad_output)
    o_loss, o_grads, o_warn, _ = _call(ours, x, target, weight, kwargs, req, grad_output=go)

    for name, before, now in zip(("input", "target", "weight"), snapshot, (x, target, weight)):
        if before is not None:
            torch.testing.assert_close(now, before, rtol=0, atol=0, equal_nan=True,
                                       msg=f"ours modified its {name} argument")

    precision = lowest_precision(x, target, weight)
    truth_loss = truth_grads = None
    if precision in LOW_PRECISION:
        truth_loss, truth_grads, _, _ = _call(reference, x, target, weight, kwargs, req,
                                           cast=torch.float64, grad_output=go)
    loss_scale, grad_scale = _magnitudes(x, target, weight, kwargs, go)
    assert_close_to_torch(o_loss, t_loss, truth_loss, precision=precision, what="loss", scale=loss_scale)
    for i, name in enumerate(("input", "target", "weight")):
        if req[i]:
            assert_close_to_torch(o_grads[i], t_grads[i], None if truth_grads is None else truth_grads[i],
                                  precision=precision, what=f"grad wrt {name}", scale=grad_scale)
    return o_loss, t_loss, o_warn, t_warn


# --------------------------------------------------------------------------- tensor layouts


def _junk(v):
    """Fill for storage a view must not read: NaN, or an out-of-range class index."""
    return float("nan") if v.is_floating_point() else 100


def relayout(values: torch.Tensor, layout: str, seed: int = 0) -> torch.Tensor:
    """A tensor equal to `values` (or, for 'expanded', to values[:1] broadcast) with another memory layout."""
    v = values
    nd = v.dim()
    if layout == "contig" or nd == 0:
        return v.contiguous()
    if layout == "transposed" and nd >= 2:  # e.g. torch.randn(C, N).t()
        return v.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "reversed":  # all dims reversed in memory
        dims = list(range(nd))[::-1]
        return v.permute(dims).contiguous().permute(dims)
    if layout == "class_last" and nd >= 3:  # (N, d.., C) storage viewed as (N, C, d..)
        return v.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "sliced":  # every dim strided by 2, with a storage offset
        big = torch.full([2 * s + 1 for s in v.shape], _junk(v), dtype=v.dtype)
        view = big[tuple(slice(1, 1 + 2 * s, 2) for s in v.shape)]
        view.copy_(v)
        return view
    if layout == "sliced_class":  # only the class / last dim strided: x[:, ::2]
        d = 1 if nd >= 2 else 0
        shape = list(v.shape)
        shape[d] = 2 * shape[d]
        big = torch.full(shape, _junk(v), dtype=v.dtype)
        view = big[(slice(None),) * d + (slice(None, None, 2),)]
        view.copy_(v)
        return view
    if layout == "channels_last" and nd in (4, 5):
        fmt = torch.channels_last if nd == 4 else torch.channels_last_3d
        return v.contiguous(memory_format=fmt)
    if layout == "expanded" and v.shape[0] > 0:
        return v[:1].expand(v.shape)
    if layout == "random":
        g = gen(seed)
        perm = torch.randperm(nd, generator=g).tolist()
        steps = torch.randint(1, 3, (nd,), generator=g).tolist()
        offsets = torch.randint(0, 2, (nd,), generator=g).tolist()
        return place(v, perm, steps, offsets)
    return v.contiguous()


def place(values, perm, steps, offsets):
    """`values` copied into a slice of a bigger tensor whose dims are laid out in memory in the order
    `perm` (outermost first), dim d taking every steps[d]-th element from offsets[d]."""
    nd = values.dim()
    phys = [values.shape[d] * steps[d] + offsets[d] for d in perm]
    big = torch.full(phys, _junk(values), dtype=values.dtype)
    logical = big.permute(sorted(range(nd), key=perm.__getitem__))
    view = logical[tuple(slice(o, o + n * s, s) for o, n, s in zip(offsets, values.shape, steps))]
    view.copy_(values)
    return view


def pytest_terminal_summary(terminalreporter):
    """Under the emulated CUDA build (make test-cuda-emu): which kernels ran, how often. (Only when
    the package was imported: a run in a tree that was never built must not fail here.)"""
    _library = sys.modules.get("validated_loss._library")
    if _library is not None and _library.EMULATED_CUDA:
        terminalreporter.write_line(f"emulated CUDA kernel launches: {torch.ops.validated_loss_emu.launch_counts()}")
