"""Logits with more row dimensions than the kernels address whose strides do not merge (issue
15, item 9): torch computes them, so must we (through a copy). Compared with F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

pytestmark = pytest.mark.usefixtures("single_thread")

DIMS = 19  # (N, C, d1..d17): 18 row dimensions


def reversed_layout(t):
    """The same values with every dimension's stride reversed: no two row dimensions merge."""
    order = tuple(reversed(range(t.dim())))
    return t.permute(order).contiguous().permute(order)


@pytest.mark.parametrize("target_kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_logits_with_18_unmergeable_row_dims(target_kind, reduction):
    x = reversed_layout(torch.randn((2,) * DIMS, generator=gen(1), dtype=torch.float64))
    assert not x.is_contiguous()
    if target_kind == "index":
        t = torch.randint(0, 2, (2,) * (DIMS - 1), generator=gen(2))
    else:
        t = reversed_layout(torch.softmax(torch.randn((2,) * DIMS, generator=gen(2), dtype=torch.float64), 1))
    results = []
    for fn in (vl.cross_entropy, F.cross_entropy):
        leaf = x.detach().clone().requires_grad_()
        loss = fn(leaf, t, reduction=reduction, label_smoothing=0.1)
        results.append((loss.detach(), torch.autograd.grad(loss.sum(), leaf)[0]))
    (ours, g_ours), (ref, g_ref) = results
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
