"""Each CPU kernel path at its edges, against torch.

The kernels pick a path by layout and class count (csrc/cpu/kernels.h): packed short rows
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
