"""Non-finite corner cases where validated_loss once differed from torch (issue 15, item 16):
class weights summing to zero, a +inf target probability, a -inf logit under a zero target
probability with smoothing, and C = 0 with probability targets. Compared with F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

pytestmark = pytest.mark.usefixtures("single_thread")
INF = float("inf")


def same(ours, ref):
    torch.testing.assert_close(ours, ref, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_summing_to_zero_give_torchs_infinity(dtype):
    x = torch.randn(2, 4, generator=gen(1), dtype=dtype)
    w = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=dtype)
    t = torch.tensor([0, 1])  # total weight 1 - 1 = 0, loss sum nonzero
    ref = F.cross_entropy(x, t, w)
    assert ref.isinf()
    same(vl.cross_entropy(x, t, w), ref)


def test_zero_weighted_targets_with_smoothing_stay_nan_as_torch():
    x = torch.randn(2, 4, generator=gen(2))
    w = torch.tensor([0.0, 1.0, 1.0, 1.0])
    t = torch.tensor([0, 0])
    for smoothing in (0.0, 0.1):
        same(vl.cross_entropy(x, t, w, label_smoothing=smoothing), F.cross_entropy(x, t, w, label_smoothing=smoothing))


@pytest.mark.parametrize("C", [4, 40, 1000])
@pytest.mark.parametrize("where", ["first", "second", "last"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_infinite_target_probability_gives_torchs_inf(C, where, smoothing):
    x = torch.randn(3, C, generator=gen(C))
    q = torch.softmax(torch.randn(3, C, generator=gen(C + 1)), 1)
    q[1, {"first": 0, "second": 1, "last": C - 1}[where]] = INF
    for reduction in ("none", "mean", "sum"):
        ref = F.cross_entropy(x, q, reduction=reduction, label_smoothing=smoothing)
        same(vl.cross_entropy(x, q, reduction=reduction, label_smoothing=smoothing), ref)


@pytest.mark.parametrize("C", [4, 40, 1000])
@pytest.mark.parametrize("weighted", [False, True])
def test_minus_inf_logit_under_zero_target_with_smoothing_gives_inf(C, weighted):
    x = torch.randn(3, C, generator=gen(C))
    x[1, 2] = -INF
    q = torch.softmax(torch.randn(3, C, generator=gen(C + 1)), 1)
    q[1, 2] = 0.0  # torch: -(log p * q') with q' = eps / C > 0 at that class: +inf
    w = torch.rand(C, generator=gen(C + 2)) + 0.5 if weighted else None
    for reduction in ("none", "mean"):
        ref = F.cross_entropy(x, q, w, reduction=reduction, label_smoothing=0.1)
        assert ref.isinf().any()
        same(vl.cross_entropy(x, q, w, reduction=reduction, label_smoothing=0.1), ref)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_no_classes_with_probability_targets(reduction):
    x = torch.randn(3, 0)
    ref = F.cross_entropy(x, x.clone(), reduction=reduction)
    same(vl.cross_entropy(x, x.clone(), reduction=reduction), ref)
