"""Each CPU kernel path at its edges, against torch.

The kernels pick a path by layout and class count (csrc/cpu/row_path.h): packed short rows
(contiguous (N, C), C <= 64), rows in SIMD lanes (C <= 64 with a strided class dimension), and
chunked rows (C > 64, chunks of 2048 classes). These cases sit on the boundaries between them and
on the packed path's block edges (blocks of 2048 // C rows), where an off-by-one would show.
"""

import pytest
import torch

from conftest import compare_cross_entropy, gen, require_vl

vl = require_vl()
pytestmark = pytest.mark.usefixtures("all_threads")

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}
# Class counts around the vector widths (8, 16 floats) and the small-class limit (64).
CLASSES = (1, 2, 7, 8, 15, 16, 17, 33, 63, 64, 65)


def _case(n, c, dtype, seed, *, layout="contig", ignore_frac=0.2):
    g = gen(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).to(dtype)
    if layout == "class_strided":  # (N, C) values with a class stride of N: rows in lanes
        x = x.t().contiguous().t()
    elif layout == "row_gap":  # rows 2C apart: contiguous classes, rows not back to back
        x = torch.cat([x, x], dim=1)[:, :c]
    target = torch.randint(0, c, (n,), generator=g)
    target[torch.rand(n, generator=g) < ignore_frac] = -100
    return x, target


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("dt", list(DTYPES))
def test_packed_rows_across_blocks(c, dt):
    """N spans several packed blocks and ends mid-block; weights, smoothing and ignored rows."""
    n = 3 * (2048 // c) + 5 if c <= 64 else 70
    x, target = _case(n, c, DTYPES[dt], seed=c)
    weight = torch.rand(c, generator=gen(c + 1)).to(DTYPES[dt]) + 0.5
    compare_cross_entropy(x, target, weight, reduction="mean", label_smoothing=0.1)
    compare_cross_entropy(x, target, reduction="none")


@pytest.mark.parametrize("layout", ["class_strided", "row_gap"])
@pytest.mark.parametrize("c", (3, 16, 64, 65))
def test_strided_layouts_take_the_other_paths(layout, c):
    x, target = _case(300, c, torch.float32, seed=7 * c, layout=layout)
    compare_cross_entropy(x, target, reduction="sum")


@pytest.mark.parametrize("c", (10, 64))
def test_packed_rows_llm_options(c):
    """softcap, z-loss and the lse gradient through the packed backward."""
    x, target = _case(2048 // c * 2 + 3, c, torch.float32, seed=c)
    x = x.requires_grad_()
    loss, lse = vl.cross_entropy(x, target, softcap=4.0, lse_square_scale=1e-2, return_lse=True)
    (loss + lse.sum() * 0.5).backward()
    from validated_loss import _reference

    x2 = x.detach().clone().requires_grad_()
    ref_loss, ref_lse = _reference.cross_entropy(x2, target, None, "mean", -100, 0.0, 1e-2, 4.0)
    (ref_loss + ref_lse.sum() * 0.5).backward()
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(x.grad, x2.grad, rtol=2e-5, atol=1e-7)


# --------------------------------------------------------------------------- packed rows, L at a time
# Contiguous (N, C <= 64) logits without options take csrc/cpu/small_rows.h: groups of L rows
# (L = 4, 8 or 16 by dtype and CPU) done in vectors when all L targets are valid and all logits
# finite, the per-row code otherwise. Rows are placed so that every lane position of a group and
# both kinds of group meet, and N leaves a partial group and a partial block.

LANE_CLASSES = (1, 2, 7, 8, 9, 10, 16, 17, 63, 64)


def _lane_case(c, dtype, seed):
    # Two forward blocks (rows_per_block in kernels.h) and many backward ones (2048 // c rows),
    # then a partial group of 3 rows.
    n = 2 * ((32768 // c + 63) // 64 * 64) + 16 * 5 + 3
    g = gen(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).to(dtype)
    target = torch.randint(0, c, (n,), generator=g)
    # One ignored row at each lane position 0..15 of successive 16-row spans (so at every position
    # of 4-, 8- and 16-lane groups), the rest of the first half all valid: whole valid groups too.
    for i in range(16):
        target[32 * i + i] = -100
    return x, target


@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
@pytest.mark.parametrize("c", LANE_CLASSES)
@pytest.mark.parametrize("dt", ("f32", "f64", "bf16"))
def test_lane_groups_mixed_targets(dt, c, reduction):
    x, target = _lane_case(c, DTYPES[dt], seed=100 + c)
    compare_cross_entropy(x, target, reduction=reduction)
    # All valid (every full group on the vector path), grad_output other than 1.
    target = target.clamp(min=0)
    compare_cross_entropy(x, target, reduction=reduction)


@pytest.mark.parametrize("c", (2, 10, 64))
@pytest.mark.parametrize("lane", (0, 3, 7, 9, 15))
def test_lane_groups_first_invalid_target(c, lane):
    """The first out-of-range target is reported (row, value, count) wherever it sits in a group,
    with an all-valid group before it and another invalid target after it."""
    n = 16 * 20 + 5
    x = torch.randn(n, c, generator=gen(c))
    target = torch.randint(0, c, (n,), generator=gen(c + 1))
    first = 16 * 4 + lane
    target[first] = c + 3
    target[first + 21] = -7
    with pytest.raises(vl.TargetOutOfRangeError) as info:
        vl.cross_entropy(x, target)
    assert (info.value.position, info.value.value, info.value.count) == ((first,), c + 3, 2)


@pytest.mark.parametrize("c", (3, 10, 17))
@pytest.mark.parametrize("bad", ("nan", "inf", "-inf"))
def test_lane_groups_nonfinite_logit(c, bad):
    """A non-finite logit in one lane sends its group to the per-row code: that row's loss and
    gradient are torch's (NaN, or finite for a -inf non-target logit), its neighbours' too."""
    n = 16 * 6 + 1
    x = torch.randn(n, c, generator=gen(c), dtype=torch.float64).float()
    target = torch.randint(0, c, (n,), generator=gen(c + 1))
    x[16 + 5, (target[16 + 5] + 1) % c] = float(bad)
    compare_cross_entropy(x, target, reduction="none")
    compare_cross_entropy(x, target, reduction="sum")


@pytest.mark.parametrize("c", (2, 9, 10, 64))
@pytest.mark.parametrize("dt", ("f32", "f64", "bf16"))
def test_lane_groups_inplace_backward(dt, c):
    """inplace_backward: the gradient overwrites the logits it is computed from."""
    x, target = _lane_case(c, DTYPES[dt], seed=c)
    grads = []
    for inplace in (False, True):
        leaf = x.detach().requires_grad_()
        logits = leaf * 1.0
        vl.cross_entropy(logits, target, reduction="sum", inplace_backward=inplace).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    leaf = x.detach().requires_grad_()
    torch.nn.functional.cross_entropy(leaf, target, reduction="sum").backward()
    torch.testing.assert_close(grads[1].double(), leaf.grad.double(), rtol=1e-2 if dt == "bf16" else 1e-5,
                               atol=1e-2 if dt == "bf16" else 1e-6)
