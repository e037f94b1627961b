"""validated_loss.cross_entropy against torch.nn.functional.cross_entropy: table-driven grids.

Every case checks the loss (dtype, shape, value) and the gradients (to the logits always; to the
target and the weight on the probability path, as torch supports), with a non-unit grad_output.
"""

import inspect
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from torch.utils._python_dispatch import TorchDispatchMode

from conftest import compare_cross_entropy, gen, relayout, require_vl, seed_of, ulp

vl = require_vl()
pytestmark = pytest.mark.usefixtures("single_thread")

C = 5
# family -> (input shape, class-index target shape)
FAMILIES = {
    "1d": ((C,), ()),
    "1d_t1": ((C,), (1,)),
    "2d": ((6, C), (6,)),
    "3d": ((3, C, 4), (3, 4)),
    "4d": ((2, C, 3, 2), (2, 3, 2)),
    "5d": ((2, C, 2, 3, 2), (2, 2, 3, 2)),
}
LAYOUTS = {
    1: ("contig", "sliced", "expanded"),
    2: ("contig", "transposed", "sliced", "sliced_class", "expanded", "random"),
    3: ("contig", "transposed", "class_last", "sliced", "sliced_class", "reversed", "random"),
}
LAYOUTS[4] = LAYOUTS[3] + ("channels_last",)
LAYOUTS[5] = LAYOUTS[3] + ("channels_last",)
TARGET_LAYOUTS = ("contig", "sliced", "reversed", "random")
REDUCTIONS = ("none", "sum", "mean")
DT = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}


def make_logits(shape, dtype, seed, layout="contig"):
    x = (torch.randn(shape, generator=gen(seed), dtype=torch.float64) * 2).to(dtype)
    return relayout(x, layout, seed)


def make_index_target(shape, n_classes, seed, *, dtype=torch.int64, ignore=None, frac=0.3, layout="contig"):
    g = gen(seed + 1)
    t = torch.randint(0, n_classes, shape, generator=g)
    if ignore is not None:
        if t.dim() == 0 or t.numel() == 1:
            t.fill_(ignore)  # the only target is ignored
        else:
            mask = torch.rand(shape, generator=g) < frac
            t[mask] = ignore
    return relayout(t.to(dtype), layout, seed)


def make_prob_target(shape, dtype, seed, kind="prob_soft", layout="contig"):
    g = gen(seed + 2)
    cdim = 1 if len(shape) >= 2 else 0
    if kind == "prob_soft":
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, dim=cdim)
    elif kind == "prob_unnorm":  # rows do not sum to 1
        t = torch.rand(shape, generator=g, dtype=torch.float64) * 2
    elif kind == "prob_signed":  # torch does not validate probabilities: negative entries are accepted
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    else:
        raise ValueError(kind)
    return relayout(t.to(dtype), layout, seed)


def make_weight(n_classes, dtype, seed):
    return (torch.rand(n_classes, generator=gen(seed + 3), dtype=torch.float64) * 2 + 0.1).to(dtype)


def build_case(family, dtype, tkind, weighted, ignore, ls, reduction, layout=None, tlayout=None):
    """Returns (x, target, weight, kwargs) for one grid cell."""
    seed = seed_of(family, dtype, tkind, weighted, ignore, ls, reduction, layout, tlayout)
    in_shape, t_shape = FAMILIES[family]
    nd = len(in_shape)
    if layout is None:  # the main grid cycles through the layouts a family has
        layout = LAYOUTS[nd][seed % len(LAYOUTS[nd])]
    if tlayout is None:
        tlayout = TARGET_LAYOUTS[(seed // 7) % len(TARGET_LAYOUTS)]
    x = make_logits(in_shape, dtype, seed, layout)
    kwargs = {"reduction": reduction}
    if ls is not None:
        kwargs["label_smoothing"] = ls
    if tkind in ("i64", "u8"):
        tdtype = torch.int64 if tkind == "i64" else torch.uint8
        ign_value = {"none": None, "default": -100, "inside": 3 if seed % 2 else 0, "u8": 255}[ignore]
        if ignore in ("inside", "u8"):
            kwargs["ignore_index"] = ign_value
        target = make_index_target(t_shape, C, seed, dtype=tdtype, ignore=ign_value, layout=tlayout)
    else:
        target = make_prob_target(in_shape, dtype, seed, tkind, layout=tlayout)
        if ignore == "negative":
            kwargs["ignore_index"] = -3
    weight = make_weight(C, dtype, seed) if weighted else None
    return x, target, weight, kwargs


def _grid():
    cases = []
    for family, dt, tkind, weighted, ls, reduction in itertools.product(
            FAMILIES, DT, ("i64", "u8", "prob_soft", "prob_unnorm"), (False, True), (0.0, 0.1, 1.0), REDUCTIONS):
        if tkind == "u8" and family not in ("1d", "1d_t1", "2d"):
            continue  # torch takes uint8 targets for 1-D/2-D inputs only
        if tkind.startswith("prob") and family == "1d_t1":
            continue  # a (1,) target is class-index only
        if family == "1d_t1" and ls > 0:
            continue  # torch: "output with shape [] doesn't match the broadcast shape [1]"
        if tkind == "u8" and ls > 0 and weighted and reduction == "mean":
            continue  # torch raises there (gather() wants an int64 index for the weight)
        ignores = {"i64": ("none", "default", "inside"), "u8": ("none", "u8"),
                   "prob_soft": ("none", "negative"), "prob_unnorm": ("none", "negative")}[tkind]
        for ignore in ignores:
            cases.append(pytest.param(family, dt, tkind, weighted, ignore, ls, reduction,
                                      id=f"{family}-{dt}-{tkind}-{'w' if weighted else 'nw'}-ign_{ignore}-ls{ls}-"
                                         f"{reduction}"))
    return cases


@pytest.mark.parametrize("family,dt,tkind,weighted,ignore,ls,reduction", _grid())
def test_grid(family, dt, tkind, weighted, ignore, ls, reduction):
    x, target, weight, kwargs = build_case(family, DT[dt], tkind, weighted, ignore, ls, reduction)
    # torch's forward takes a (C,) input with a (1,) target, but its backward raises (size mismatch)
    compare_cross_entropy(x, target, weight, grad=family != "1d_t1", **kwargs)


# Label smoothing values torch accepts: <= 0 and NaN mean no smoothing; int and 0-dim tensors are taken.
ODD_SMOOTHING = [-0.5, float("nan"), 0, 1, -1e-9, 0.999]


@pytest.mark.parametrize("ls", ODD_SMOOTHING, ids=repr)
@pytest.mark.parametrize("family", ["1d", "2d", "4d"])
@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_odd_label_smoothing(ls, family, dt, tkind, reduction):
    """Half the cases with weight and ignore_index, half without (chosen by the case's hash)."""
    full = seed_of(repr(ls), family, dt, tkind, reduction) % 2 == 0
    ignore = ("inside" if tkind == "i64" else "negative") if full else "none"
    x, target, weight, kwargs = build_case(family, DT[dt], tkind, full, ignore, ls, reduction)
    compare_cross_entropy(x, target, weight, **kwargs)


@pytest.mark.parametrize("ls", [torch.tensor(0.1), torch.tensor(0.0, dtype=torch.float64)], ids=["t0.1", "t0.0"])
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
def test_label_smoothing_as_tensor(ls, tkind):
    x, target, weight, kwargs = build_case("2d", torch.float32, tkind, False, "none", ls, "mean")
    compare_cross_entropy(x, target, weight, **kwargs)


def _layout_grid():
    """Every (logits layout, target layout, target kind, variant) a family has; the dtype and the
    reduction cycle through all values with the case's hash."""
    cases = []
    for family in ("1d", "2d", "3d", "4d", "5d"):
        nd = len(FAMILIES[family][0])
        for layout, tlayout, tkind, variant in itertools.product(
                LAYOUTS[nd], TARGET_LAYOUTS, ("i64", "u8", "prob_soft"), ("plain", "full")):
            if tkind == "u8" and nd > 2:
                continue
            if family == "1d" and tlayout != "contig" and tkind != "prob_soft":
                continue  # a 0-dim target has one layout
            if tlayout in ("reversed", "random") and tkind != "prob_soft" and nd <= 2:
                continue  # the same as "sliced"/"contig" for a 1-D target
            h = seed_of(family, layout, tlayout, tkind, variant)
            dt = list(DT)[h % 4]
            reduction = REDUCTIONS[(h // 4) % 3]
            cases.append(pytest.param(family, layout, tlayout, dt, tkind, reduction, variant,
                                      id=f"{family}-{layout}-t_{tlayout}-{dt}-{tkind}-{reduction}-{variant}"))
    return cases


@pytest.mark.parametrize("family,layout,tlayout,dt,tkind,reduction,variant", _layout_grid())
def test_layouts(family, layout, tlayout, dt, tkind, reduction, variant):
    """Non-contiguous logits (transposed, sliced, channels_last, expanded, permuted) and targets."""
    full = variant == "full"
    ignore = ("inside" if tkind == "i64" else "u8" if tkind == "u8" else "negative") if full else "none"
    ls = 0.1 if full and tkind != "u8" else 0.0  # torch raises for uint8 + weight + smoothing + mean
    x, target, weight, kwargs = build_case(family, DT[dt], tkind, full, ignore, ls,
                                           reduction, layout=layout, tlayout=tlayout)
    compare_cross_entropy(x, target, weight, **kwargs)


def test_transposed_logits_literal():
    """The brief's own example: torch.randn(C, N).t()."""
    x = torch.randn(5, 7).t()
    t = torch.randint(0, 5, (7,))
    assert not x.is_contiguous()
    compare_cross_entropy(x, t, reduction="mean")
    compare_cross_entropy(x[:, ::2], torch.randint(0, 3, (7,)), reduction="none")
    compare_cross_entropy(x[::2], t[::2], reduction="sum")


# --------------------------------------------------------------------------- empty inputs


EMPTY_SHAPES = [((0, C), (0,)), ((0, C, 3), (0, 3)), ((2, C, 0), (2, 0)), ((2, C, 0, 3), (2, 0, 3)),
                ((0, C, 2, 2), (0, 2, 2)), ((2, C, 3, 0, 2), (2, 3, 0, 2))]


@pytest.mark.parametrize("shapes", EMPTY_SHAPES, ids=lambda s: "x".join(map(str, s[0])))
@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("tkind", ["i64", "u8", "prob_soft"])
@pytest.mark.parametrize("weighted,ls", [(False, 0.0), (True, 0.2)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty(shapes, dt, tkind, weighted, ls, reduction):
    """N=0 or a zero spatial size: 'mean' is NaN, 'sum' is 0, 'none' is empty; gradients are empty."""
    in_shape, t_shape = shapes
    if tkind == "u8" and len(in_shape) > 2:
        pytest.skip("uint8 targets are for 1-D/2-D inputs only")
    if tkind == "u8" and weighted and reduction == "mean":
        pytest.skip("torch raises for uint8 + weight + smoothing + mean")
    dtype = DT[dt]
    x = torch.randn(in_shape, dtype=dtype)
    if tkind == "prob_soft":
        target = torch.rand(in_shape, dtype=dtype)
    else:
        target = torch.zeros(t_shape, dtype=torch.int64 if tkind == "i64" else torch.uint8)
    weight = torch.rand(C, dtype=dtype) if weighted else None
    o, t, _, _ = compare_cross_entropy(x, target, weight, reduction=reduction, label_smoothing=ls)
    if reduction == "mean":
        assert torch.isnan(o).item()
    elif reduction == "sum":
        assert o.item() == 0.0


# --------------------------------------------------------------------------- ignore_index corner cases


@pytest.mark.parametrize("family", ["1d", "1d_t1", "2d", "3d", "4d"])
@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ls", [0.0, 0.3])
@pytest.mark.parametrize("ignore_index", [-100, 0, 3])
def test_all_targets_ignored(family, dt, weighted, ls, ignore_index):
    """torch: mean is NaN, sum is 0, 'none' is zeros, and the gradient is all zeros (not NaN)."""
    in_shape, t_shape = FAMILIES[family]
    if family == "1d_t1" and ls > 0:
        pytest.skip("torch raises for a (1,) target with label smoothing")
    dtype = DT[dt]
    x = make_logits(in_shape, dtype, seed_of(family, dt))
    target = torch.full(t_shape, ignore_index, dtype=torch.int64)
    weight = make_weight(C, dtype, 1) if weighted else None
    grad = family != "1d_t1"  # torch cannot backward a (C,) input with a (1,) target
    for reduction in REDUCTIONS:
        o, _, _, _ = compare_cross_entropy(x, target, weight, reduction=reduction, ignore_index=ignore_index,
                                           label_smoothing=ls, grad=grad)
        if reduction == "mean":
            assert torch.isnan(o).item(), "all targets ignored under 'mean' must give NaN, as torch"
        else:
            assert (o == 0).all()
    if not grad:
        return
    xl = x.detach().requires_grad_()
    vl.cross_entropy(xl, target, weight, ignore_index=ignore_index, label_smoothing=ls).backward()
    assert xl.grad is not None and (xl.grad == 0).all(), "gradient of an all-ignored mean must be exactly 0"


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("ls", [0.0, 0.3])
@pytest.mark.parametrize("family", ["2d", "4d"])
def test_zero_total_weight(dt, ls, family):
    """Weights are zero for every class present: mean is NaN and those gradient rows are NaN (torch)."""
    in_shape, t_shape = FAMILIES[family]
    dtype = DT[dt]
    x = make_logits(in_shape, dtype, 5)
    target = torch.randint(0, 2, t_shape)
    weight = torch.tensor([0.0, 0.0, 1.0, 2.0, 0.5], dtype=dtype)
    for reduction in REDUCTIONS:
        compare_cross_entropy(x, target, weight, reduction=reduction, label_smoothing=ls)


@pytest.mark.parametrize("ignore_index,values", [
    (-1, [-1, 2, -1, 0, 4, 1]),        # negative ignore value present in the targets
    (7, [7, 2, 7, 0, 4, 1]),           # ignore value >= C: matching positions skip the range check
    (1000, [3, 2, 1, 0, 4, 1]),        # never matches
    (-(2 ** 63), [3, 2, 1, 0, 4, 1]),  # extreme int64
    (2 ** 63 - 1, [3, 2, 1, 0, 4, 1]),
])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ls", [0.0, 0.25])
def test_ignore_index_values(ignore_index, values, reduction, ls):
    x = make_logits((6, C), torch.float32, 9)
    compare_cross_entropy(x, torch.tensor(values), make_weight(C, torch.float32, 2), reduction=reduction,
                          ignore_index=ignore_index, label_smoothing=ls)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_uint8_full_range(reduction):
    """uint8 targets with ignore_index=255 and C=256 (every byte value is a class except 255)."""
    x = make_logits((40, 256), torch.float32, 3)
    t = torch.randint(0, 256, (40,), generator=gen(4)).to(torch.uint8)
    t[::5] = 255
    compare_cross_entropy(x, t, reduction=reduction, ignore_index=255)
    t2 = t.clone()
    t2[t2 == 255] = 254
    compare_cross_entropy(x, t2, reduction=reduction)  # C=256: 255 would be valid without ignore_index


# --------------------------------------------------------------------------- misc values torch accepts


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_class(dt, reduction):
    """C=1: every target is 0, the loss is 0 and so is the gradient."""
    x = make_logits((4, 1), DT[dt], 1)
    compare_cross_entropy(x, torch.zeros(4, dtype=torch.int64), reduction=reduction)
    compare_cross_entropy(make_logits((2, 1, 3), DT[dt], 2), torch.zeros(2, 3, dtype=torch.int64),
                          reduction=reduction, label_smoothing=0.5)


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("tkind", ["i64", "prob_soft", "prob_signed"])
def test_negative_weights_and_signed_targets(dt, reduction, tkind):
    dtype = DT[dt]
    x = make_logits((6, C), dtype, 11)
    w = torch.tensor([1.0, -0.5, 2.0, 0.0, -1.5], dtype=dtype)
    target = make_index_target((6,), C, 3) if tkind == "i64" else make_prob_target((6, C), dtype, 3, tkind)
    compare_cross_entropy(x, target, w, reduction=reduction, label_smoothing=0.2)


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_large_logits(dt, reduction):
    """Logits far from 0 (overflow if exp is taken without subtracting the max)."""
    dtype = DT[dt]
    big = {torch.float16: 6e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e300}[dtype]
    x = (torch.randn(6, C, generator=gen(1), dtype=torch.float64) * 3).to(dtype)
    x[0, 2] = big
    x[1] = -big / 2
    x[2] += torch.tensor(big / 4, dtype=dtype)
    t = torch.tensor([2, 1, 0, 3, 4, 2])
    compare_cross_entropy(x, t, reduction=reduction)
    compare_cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)


@pytest.mark.parametrize("offset", [100.0, -300.0, 1000.0, 2e4], ids=repr)
@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shifted_logits(offset, dt, tkind, reduction):
    """Softmax is shift invariant and torch computes (x - max) - log(sum): logits far from zero
    (unnormalised scores, low temperatures) lose no accuracy there, so ours must not either."""
    dtype = DT[dt]
    x = (torch.randn(8, C, generator=gen(5), dtype=torch.float64) * 3 + offset)
    x[:, 0] += 6  # confident rows: small losses, where an absolute error shows most
    x = x.to(dtype)
    target = make_index_target((8,), C, 6) if tkind == "i64" else make_prob_target((8, C), dtype, 6)
    compare_cross_entropy(x, target, reduction=reduction)
    compare_cross_entropy(x, target, reduction=reduction, label_smoothing=0.1)


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["neg_inf_other", "neg_inf_target", "nan_logit"])
def test_nonfinite_logits_class_index(dt, reduction, case):
    """torch: -inf on another class is fine, -inf on the target gives inf, a NaN logit gives NaN."""
    x = make_logits((4, C), DT[dt], 2)
    t = torch.tensor([0, 1, 2, 3])
    if case == "neg_inf_other":
        x[0, 3] = float("-inf")
        x[2, 0] = float("-inf")
    elif case == "neg_inf_target":
        x[1, 1] = float("-inf")
    else:
        x[2, 4] = float("nan")
    compare_cross_entropy(x, t, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_neg_inf_logit_zero_probability(reduction):
    """torch uses no xlogy: -inf logit with target probability 0 gives a NaN loss (drop-in keeps it)."""
    x = make_logits((3, C), torch.float32, 2)
    x[0, 1] = float("-inf")
    q = torch.softmax(torch.randn(3, C), 1)
    q[0, 1] = 0.0
    q = q / q.sum(1, keepdim=True)
    compare_cross_entropy(x, q, reduction=reduction)


def test_time_dim_equal_to_classes_quirk():
    """(N, T, C) logits with an (N, T) target and T == C: torch takes dim 1 as classes, silently."""
    x = make_logits((2, 4, 4), torch.float32, 1)
    t = torch.randint(0, 4, (2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ours may warn about this; the value must still be torch's
        compare_cross_entropy(x, t, reduction="none")


# --------------------------------------------------------------------------- probability targets


MIXED = [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float64),
         (torch.float16, torch.bfloat16), (torch.float32, torch.float16), (torch.float64, torch.float32),
         (torch.bfloat16, torch.float64)]


@pytest.mark.parametrize("in_dt,t_dt", MIXED, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("w_dt", [None, "input", torch.float64], ids=["nw", "w_in", "w_f64"])
@pytest.mark.parametrize("family", ["1d", "2d", "4d"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_mixed_dtype_probability_targets(in_dt, t_dt, w_dt, family, reduction, ls):
    """Output dtype is result_type(input, target[, weight]); gradients keep each argument's dtype."""
    in_shape = FAMILIES[family][0]
    x = make_logits(in_shape, in_dt, 1)
    q = make_prob_target(in_shape, t_dt, 2)
    w = None if w_dt is None else make_weight(C, in_dt if w_dt == "input" else w_dt, 3)
    compare_cross_entropy(x, q, w, reduction=reduction, label_smoothing=ls)


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("family", ["2d", "3d"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_without_target_grad(dt, family, reduction):
    """Only the logits require grad (the usual soft-label case)."""
    in_shape = FAMILIES[family][0]
    compare_cross_entropy(make_logits(in_shape, DT[dt], 4), make_prob_target(in_shape, DT[dt], 5),
                          make_weight(C, DT[dt], 6), reduction=reduction, grad_target=False, grad_weight=False)


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("family", ["2d", "4d"])
def test_probability_target_grad_only(dt, family):
    """Gradient to the target (and weight) while the logits do not require grad."""
    in_shape = FAMILIES[family][0]
    compare_cross_entropy(make_logits(in_shape, DT[dt], 4), make_prob_target(in_shape, DT[dt], 5),
                          make_weight(C, DT[dt], 6), reduction="mean", grad=False, grad_target=True,
                          grad_weight=True, label_smoothing=0.2)


# --------------------------------------------------------------------------- weight.requires_grad


@pytest.mark.parametrize("family", ["1d", "2d", "3d", "4d"])
@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weight_requires_grad_class_index_raises(family, ls, reduction):
    """torch raises RuntimeError ('not differentiable with respect to argument weight'); so must ours."""
    in_shape, t_shape = FAMILIES[family]
    x = make_logits(in_shape, torch.float32, 1).requires_grad_()
    t = make_index_target(t_shape, C, 2)
    w = make_weight(C, torch.float32, 3).requires_grad_()
    with pytest.raises(RuntimeError) as theirs:
        F.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls)
    with pytest.raises(type(theirs.value)):
        vl.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls)


# --------------------------------------------------------------------------- legacy arguments


LEGACY = list(itertools.product([None, True, False], [None, True, False]))


def _messages(caught):
    return [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("size_average,reduce", LEGACY)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "avg"])
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
def test_legacy_size_average_reduce(size_average, reduce, reduction, tkind):
    """Legacy args override `reduction` (unvalidated then) and emit torch's UserWarning."""
    if size_average is None and reduce is None and reduction == "avg":
        pytest.skip("invalid reduction without legacy args is an error, not parity")
    x, target, weight, _ = build_case("2d", torch.float32, tkind, True, "none", 0.0, "mean")
    kw = dict(reduction=reduction)
    if size_average is not None:
        kw["size_average"] = size_average
    if reduce is not None:
        kw["reduce"] = reduce
    _, _, ours_w, torch_w = compare_cross_entropy(x, target, weight, **kw)
    legacy = [m for m in _messages(torch_w) if "size_average" in m[1]]
    assert [m for m in _messages(ours_w) if "size_average" in m[1]] == legacy


@pytest.mark.parametrize("size_average,reduce", [(False, None), (None, False), ("yes", 1), (0, True)])
def test_legacy_truthiness(size_average, reduce):
    """Truthiness decides, as in torch._Reduction.legacy_get_string."""
    x, target, weight, _ = build_case("2d", torch.float32, "i64", False, "none", 0.0, "mean")
    _, _, ours_w, torch_w = compare_cross_entropy(x, target, size_average=size_average, reduce=reduce)
    assert _messages(ours_w) == _messages(torch_w)


@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
def test_elementwise_mean_alias(tkind):
    x, target, weight, _ = build_case("3d", torch.float32, tkind, True, "none", 0.1, "mean")
    _, _, ours_w, torch_w = compare_cross_entropy(x, target, weight, reduction="elementwise_mean",
                                                  label_smoothing=0.1)
    msgs = _messages(torch_w)
    assert msgs, "torch warns on 'elementwise_mean'"
    assert _messages(ours_w) == msgs


def test_no_warning_on_plain_call():
    x, target, weight, _ = build_case("2d", torch.float32, "i64", True, "inside", 0.1, "mean")
    _, _, ours_w, torch_w = compare_cross_entropy(x, target, weight, reduction="mean", label_smoothing=0.1)
    assert _messages(torch_w) == []
    assert _messages(ours_w) == []


# --------------------------------------------------------------------------- signature


def assert_signature_extends(ours, theirs):
    """torch's parameters, in order, with the same kinds and defaults; anything extra is keyword-only
    with a default (so every call written for torch means the same)."""
    ours = list(inspect.signature(ours).parameters.values())
    theirs = list(inspect.signature(theirs).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
        [(p.name, p.kind, p.default) for p in theirs]
    for p in ours[len(theirs):]:
        assert p.kind == p.KEYWORD_ONLY and p.default is not p.empty, f"extra parameter {p} breaks torch's calls"


def test_functional_signature_matches_torch():
    assert_signature_extends(vl.cross_entropy, F.cross_entropy)


def test_all_arguments_positionally():
    x = make_logits((6, C), torch.float32, 1)
    t = make_index_target((6,), C, 2, ignore=3)
    w = make_weight(C, torch.float32, 3)
    args = (w, None, 3, None, "sum", 0.1)
    torch.testing.assert_close(vl.cross_entropy(x, t, *args), F.cross_entropy(x, t, *args), rtol=1e-5, atol=1e-6)
    kwargs = dict(input=x, target=t, weight=w, ignore_index=3, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(vl.cross_entropy(**kwargs), F.cross_entropy(**kwargs), rtol=1e-5, atol=1e-6)


def test_no_grad_and_inference_mode():
    x = make_logits((6, C), torch.float32, 1).requires_grad_()
    t = make_index_target((6,), C, 2)
    with torch.no_grad():
        o = vl.cross_entropy(x, t)
    assert not o.requires_grad
    torch.testing.assert_close(o, F.cross_entropy(x, t).detach())
    with torch.inference_mode():
        o = vl.cross_entropy(x.detach(), t, reduction="none")
    torch.testing.assert_close(o, F.cross_entropy(x.detach(), t, reduction="none"))


def test_double_backward_through_loss_graph_twice():
    """retain_graph: calling backward twice accumulates exactly twice the gradient, as torch."""
    x = make_logits((6, C), torch.float32, 1)
    t = make_index_target((6,), C, 2, ignore=0)
    grads = []
    for fn in (vl.cross_entropy, F.cross_entropy):
        xl = x.clone().requires_grad_()
        loss = fn(xl, t, ignore_index=0, label_smoothing=0.2)
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append(xl.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- half-precision accuracy


def _truth(x, t, **kw):
    xd = x.detach().double().requires_grad_()
    loss = F.cross_entropy(xd, t.double() if t.is_floating_point() else t, **kw)
    loss.backward()
    return loss.detach(), xd.grad


@pytest.mark.slow
@pytest.mark.usefixtures("all_threads")
@pytest.mark.parametrize("case", ["2d", "4d", "ls", "ignore", "prob"])
@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_half_mean_over_many_elements(case, dt):
    """fp16 mean over > 65504 counted elements: torch's CPU gives inf/NaN and a zero gradient.
    Ours must be finite and close to the float64 truth, and its gradient must be correct."""
    dtype = DT[dt]
    kw = {}
    if case == "4d":
        x = make_logits((5, 5, 125, 128), dtype, 1)  # N*H*W = 80000
        t = make_index_target((5, 125, 128), 5, 2)
    elif case == "prob":
        x = make_logits((100000, 5), dtype, 1)
        t = make_prob_target((100000, 5), dtype, 2)
    else:
        x = make_logits((70000, 5), dtype, 1)
        t = make_index_target((70000,), 5, 2, ignore=-100 if case == "ignore" else None, frac=0.05)
        if case == "ls":
            kw["label_smoothing"] = 0.1
    truth, truth_grad = _truth(x, t, **kw)
    xl = x.detach().requires_grad_()
    ours = vl.cross_entropy(xl, t.detach(), **kw)
    assert ours.dtype == dtype
    assert torch.isfinite(ours).item(), f"ours is {ours.item()} (float64 truth {truth.item():.6f})"
    err = abs(ours.double().item() - truth.item())
    assert err <= 2 * ulp(truth, dtype).item(), f"ours {ours.item()} vs truth {truth.item():.6f}"
    ours.backward()
    g = xl.grad
    assert g.dtype == dtype and torch.isfinite(g).all()
    assert g.abs().max() > 0, "gradient vanished"
    # elementwise: within 1 ulp (of the value, or of the subnormal spacing) plus 1e-3 of the largest entry
    tol = ulp(truth_grad, dtype) + 1e-3 * truth_grad.abs().max()
    assert ((g.double() - truth_grad).abs() <= tol).all(), (g.double() - truth_grad).abs().max()
    # and through the generic rule as well (grad_output 3.7)
    compare_cross_entropy(x, t, **kw)


@pytest.mark.usefixtures("all_threads")
def test_half_sum_overflow_is_inf_like_truth():
    """'sum' whose true value exceeds fp16's range is inf (the true value rounds to inf), gradient fine."""
    x = make_logits((70000, 5), torch.float16, 3)
    t = make_index_target((70000,), 5, 4)
    o, _, _, _ = compare_cross_entropy(x, t, reduction="sum")
    assert torch.isinf(o).item()


# --------------------------------------------------------------------------- LLM-sized rows


@pytest.mark.slow
@pytest.mark.usefixtures("all_threads")
@pytest.mark.parametrize("shape", [(3, 32000), (2, 128256), (100000, 10)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("variant", ["plain", "ls_ignore_w"])
def test_llm_sized(shape, dt, variant):
    dtype = DT[dt]
    n, c = shape
    x = make_logits(shape, dtype, 1)
    kw = {"reduction": "mean" if n > 3 else "sum"}
    w = None
    ignore = None
    if variant == "ls_ignore_w":
        kw.update(label_smoothing=0.1)
        w = make_weight(c, dtype, 2)
        ignore = -100
    t = make_index_target((n,), c, 3, ignore=ignore, frac=0.2)
    if n <= 3 and ignore is not None:
        t[0] = -100
        t[1:] = torch.tensor([c - 1, 17][: n - 1])
    compare_cross_entropy(x, t, w, **kw)
    if n <= 3:
        compare_cross_entropy(x, t, w, **dict(kw, reduction="none"))


@pytest.mark.usefixtures("all_threads")
@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_llm_sized_probability(dt):
    dtype = DT[dt]
    x = make_logits((2, 32000), dtype, 1)
    compare_cross_entropy(x, make_prob_target((2, 32000), dtype, 2), reduction="mean", label_smoothing=0.1)


# --------------------------------------------------------------------------- other ways torch is called


@pytest.mark.parametrize("layout", ["sliced", "expanded", "storage_offset"])
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_weight(layout, tkind, reduction):
    """Any 1-D weight torch accepts: strided, a broadcast scalar, a view with a storage offset."""
    base = torch.rand(2 * C + 1, generator=gen(1)) + 0.1
    w = {"sliced": base[::2][:C], "expanded": torch.tensor(1.7).expand(C), "storage_offset": base[3:3 + C]}[layout]
    x = make_logits((6, C), torch.float32, 2)
    t = make_index_target((6,), C, 3, ignore=1) if tkind == "i64" else make_prob_target((6, C), torch.float32, 3)
    kw = {"ignore_index": 1} if tkind == "i64" else {}
    compare_cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1, grad_weight=False, **kw)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_autocast(amp_dtype, tkind, reduction):
    """Under CPU autocast torch runs cross_entropy in float32 (fp32 op list): a bf16/f16 logit
    tensor produced inside autocast gives a float32 loss. Ours must give the same dtype and value."""
    lin = torch.nn.Linear(8, C)
    h = torch.randn(6, 8, generator=gen(1))
    t = make_index_target((6,), C, 2) if tkind == "i64" else make_prob_target((6, C), torch.float32, 2)
    results = []
    for fn in (vl.cross_entropy, F.cross_entropy):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=amp_dtype):
            logits = lin(h)
            assert logits.dtype == amp_dtype
            loss = fn(logits, t, reduction=reduction, label_smoothing=0.1)
        loss.sum().backward()
        results.append((loss.detach(), lin.weight.grad.clone()))
    (ours, ours_g), (theirs, theirs_g) = results
    assert ours.dtype == theirs.dtype, f"autocast: ours {ours.dtype}, torch {theirs.dtype}"
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_g, theirs_g, rtol=1e-2, atol=1e-3)  # the linear's own bf16/f16 grad


def _under_autocast(fn, amp_dtype):
    """fn called inside torch.autocast("cpu", amp_dtype); its backward runs outside, as in training."""
    def call(*args, **kwargs):
        with torch.autocast("cpu", dtype=amp_dtype):
            return fn(*args, **kwargs)
    return call


AUTOCAST_CASES = {  # name -> (family, target kind, weight dtype or None, kwargs)
    "plain": ("2d", "i64", None, {}),
    "weight_f32": ("2d", "i64", torch.float32, {}),
    "weight_amp": ("2d", "i64", "amp", {}),
    "smoothing": ("2d", "i64", None, {"label_smoothing": 0.1}),
    "ignore": ("2d", "i64", None, {"ignore_index": 2}),
    "all_3d": ("3d", "i64", torch.float32, {"label_smoothing": 0.2, "ignore_index": 1}),
    "prob_amp": ("2d", "prob_amp", None, {"label_smoothing": 0.1}),
    "prob_weight": ("3d", "prob_amp", torch.float32, {}),
    "prob_f32": ("2d", "prob_f32", None, {}),  # mixed dtypes: promoted (cast), as torch
}


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", list(AUTOCAST_CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_autocast_parity(amp_dtype, case, reduction):
    """Both under the same autocast, half/bfloat16 logits: a float32 loss (reduced or per row)
    within float32 tolerance of torch, and a gradient in the logits' dtype at least as close to
    the float64 truth as torch's (compare_cross_entropy's low-precision rule)."""
    family, tkind, wdtype, kwargs = AUTOCAST_CASES[case]
    in_shape, t_shape = FAMILIES[family]
    seed = seed_of("autocast", amp_dtype, case, reduction)
    x = make_logits(in_shape, amp_dtype, seed)
    if tkind == "i64":
        t = make_index_target(t_shape, C, seed, ignore=kwargs.get("ignore_index"))
    else:
        t = make_prob_target(in_shape, amp_dtype if tkind == "prob_amp" else torch.float32, seed)
    w = None if wdtype is None else make_weight(C, amp_dtype if wdtype == "amp" else wdtype, seed)
    ours, theirs, _, _ = compare_cross_entropy(
        x, t, w, ours=_under_autocast(vl.cross_entropy, amp_dtype),
        reference=_under_autocast(F.cross_entropy, amp_dtype), reduction=reduction, **kwargs)
    assert ours.dtype == theirs.dtype == torch.float32


class _CopySpy(TorchDispatchMode):
    """Records the dtype conversions (and the validated_loss calls) that run while active."""

    def __init__(self):
        super().__init__()
        self.copies, self.op_inputs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default) or \
                func.overloadpacket is torch.ops.aten.to:
            self.copies.append((str(func), [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
        if func.namespace == "validated_loss":
            self.op_inputs.append((func._schema.name, args[0].dtype if func._schema.name.endswith("_fwd") else None))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("tkind", ["i64", "prob_amp"])
def test_autocast_makes_no_float32_copy_of_the_logits(amp_dtype, tkind):
    """The logits reach the kernel as they are: no conversion of a logits-sized tensor runs in the
    forward or the backward (a float32 copy would show as aten._to_copy of shape (N, C))."""
    x = make_logits((64, 300), amp_dtype, 1).requires_grad_()
    t = make_index_target((64,), 300, 2) if tkind == "i64" else make_prob_target((64, 300), amp_dtype, 2)
    w = make_weight(300, torch.float32, 3)
    spy = _CopySpy()
    with spy:
        with torch.autocast("cpu", dtype=amp_dtype):
            loss = vl.cross_entropy(x, t, w if tkind == "i64" else None, label_smoothing=0.1)
        loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == amp_dtype
    big = [c for c in spy.copies if any(s in ((64, 300), (300, 64)) for s in c[1])]
    assert not big, f"logits-sized conversions under autocast: {big}"
    forwards = [dtype for name, dtype in spy.op_inputs if dtype is not None]
    assert forwards == [amp_dtype], f"forward ops saw logits of dtype {forwards}"


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_autocast_weight_dtype_rules(amp_dtype):
    """Under autocast torch compares the weight's and the logits' dtypes after its fp32 cast: a
    float32 (or half) weight is fine with half logits, a float64 one is not (for both)."""
    x = make_logits((4, C), amp_dtype, 1)
    t = make_index_target((4,), C, 2)
    for fn in (vl.cross_entropy, F.cross_entropy):
        with torch.autocast("cpu", dtype=amp_dtype):
            assert fn(x, t, make_weight(C, torch.float32, 3)).dtype == torch.float32
            assert fn(x.float(), t, make_weight(C, amp_dtype, 3)).dtype == torch.float32
            with pytest.raises(RuntimeError, match="expected scalar type Float but found Double"):
                fn(x, t, make_weight(C, torch.float64, 3))


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_autocast_double_backward(amp_dtype):
    """Second order under autocast differentiates the same float32 graph as torch's."""
    x = make_logits((4, C), amp_dtype, 1)
    t = make_index_target((4,), C, 2)
    results = []
    for fn in (vl.cross_entropy, F.cross_entropy):
        xl = x.detach().requires_grad_()
        with torch.autocast("cpu", dtype=amp_dtype):
            loss = fn(xl, t, label_smoothing=0.1)
        (g,) = torch.autograd.grad(loss, xl, create_graph=True)
        (gg,) = torch.autograd.grad((g.float() ** 2).sum(), xl)
        results.append((g.detach(), gg))
    (g_ours, gg_ours), (g_torch, gg_torch) = results
    assert g_ours.dtype == g_torch.dtype == gg_ours.dtype == gg_torch.dtype == amp_dtype
    torch.testing.assert_close(g_ours, g_torch, rtol=0, atol=0)
    torch.testing.assert_close(gg_ours, gg_torch)


@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
@pytest.mark.parametrize("family", ["1d", "2d", "4d"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_meta_tensors(tkind, family, reduction):
    """torch computes shapes and dtypes on the meta device; so must ours (no data access)."""
    in_shape, t_shape = FAMILIES[family]
    x = torch.empty(in_shape, device="meta", requires_grad=True)
    t = torch.empty(in_shape if tkind == "prob_soft" else t_shape, device="meta",
                    dtype=torch.float32 if tkind == "prob_soft" else torch.int64)
    w = torch.empty(C, device="meta")
    theirs = F.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1)
    ours = vl.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1)
    assert (ours.shape, ours.dtype, ours.device) == (theirs.shape, theirs.dtype, theirs.device)
    (g,) = torch.autograd.grad(ours.sum(), x)
    assert (g.shape, g.dtype, g.device) == (x.shape, x.dtype, x.device)


@pytest.mark.parametrize("validate", ["sync", "deferred", "off"])
@pytest.mark.parametrize("check_finite", [False, True])
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
def test_extra_options_do_not_change_values(validate, check_finite, tkind):
    """ours' keyword-only extras (validate=, check_finite=) leave valid results exactly torch's."""
    x, target, weight, kwargs = build_case("4d", torch.float32, tkind, True,
                                           "inside" if tkind == "i64" else "none", 0.1, "mean")
    extra = dict(validate=validate, check_finite=check_finite)
    compare_cross_entropy(x, target, weight, ours=lambda *a, **k: vl.cross_entropy(*a, **k, **extra), **kwargs)


@pytest.mark.usefixtures("all_threads")
@pytest.mark.parametrize("dt", ["f32", "bf16"])
@pytest.mark.parametrize("tkind", ["i64", "prob_soft"])
def test_run_to_run_deterministic(dt, tkind):
    """torch's CPU cross entropy is deterministic; a large multi-threaded call of ours must give
    bitwise the same loss and gradient twice."""
    dtype = DT[dt]
    x = make_logits((50000, 12), dtype, 1)
    t = make_index_target((50000,), 12, 2, ignore=-100) if tkind == "i64" else make_prob_target((50000, 12), dtype, 2)
    out = []
    for _ in range(2):
        xl = x.detach().requires_grad_()
        loss = vl.cross_entropy(xl, t, label_smoothing=0.1)
        loss.backward()
        out.append((loss.detach(), xl.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
