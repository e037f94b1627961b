"""check_finite on every CPU row path: the first non-finite logit's row and class and the count of
rows holding one, against a plain-torch statement of the rule, wherever the bad logit sits.

The kernels find a non-finite logit from a flag folded into the max's vector loop and only then
look for its position (csrc/cpu/chunk_ops.h's finite_flag): these cases put NaN, +inf and -inf at
the places such a flag could miss (a chunk's first, middle and last element, the masked last
vector, the scalar tail of the half-type widening, each SIMD lane, a lane group of the packed
path) in every dtype, and check that nothing is reported for finite logits whose sum overflows.
The rule: a row counts when its target is a valid class (ignored rows are not checked); the
error names the first such row, its first non-finite class, and how many rows hold one.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}
BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
IGNORE = -100


def expected(x, target):
    """(row, class, count) of the rule, or None: x (N, C, d...) and target (N, d...)."""
    C = x.shape[1]
    rows = x.movedim(1, -1).reshape(-1, C)
    valid = (target.reshape(-1) != IGNORE)
    bad = ~torch.isfinite(rows.double()) & valid[:, None]
    hit = bad.any(dim=1)
    count = int(hit.sum())
    if count == 0:
        return None
    row = int(hit.nonzero()[0, 0])
    return row, int(bad[row].nonzero()[0, 0]), count


def check(x, target, **kwargs):
    want = expected(x, target)
    if want is None:
        loss = vl.cross_entropy(x, target, check_finite=True, **kwargs)
        torch.testing.assert_close(loss, vl.cross_entropy(x, target, **kwargs), equal_nan=True, rtol=0, atol=0)
        return
    with pytest.raises(vl.NonFiniteLogitsError) as info:
        vl.cross_entropy(x, target, check_finite=True, **kwargs)
    e = info.value
    assert (e.row, e.column, e.count) == want, str(e)
    assert f"class {want[1]}" in str(e) and f"{want[2]} of" in str(e)


def logits(n, c, dtype, seed, d=None):
    shape = (n, c) if d is None else (n, c, d)
    return torch.randn(shape, generator=gen(seed), dtype=torch.float64).mul(3).to(dtype)


def targets(n, c, seed, d=None, ignore=()):
    t = torch.randint(0, c, (n,) if d is None else (n, d), generator=gen(seed + 7))
    for r in ignore:
        t.view(-1)[r] = IGNORE
    return t


# --- chunked rows (C > 64): chunks of 2048 classes ----------------------------------------------

# 4131 classes: two full chunks and a last one of 35 (a vector group of 32 or none, then a masked
# partial vector; in bfloat16/float16 a scalar tail of the widening loop).
C_CHUNKED = 4131
CHUNK_CLASSES = (0, 1, 1000, 2047, 2048, 2049, 3071, 4095, 4096, 4127, 4128, 4129, 4130)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("cls", CHUNK_CLASSES)
def test_chunked_every_place_in_a_chunk(dt, bad, cls):
    x = logits(5, C_CHUNKED, DTYPES[dt], seed=cls)
    x[3, cls] = BAD[bad]
    check(x, targets(5, C_CHUNKED, seed=cls))


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("c", (65, 100, 1000, 2048, 2049, 2055))
def test_chunked_class_counts_first_of_several(dt, c):
    """Several bad logits over several rows: the first row's first class, the right count (an
    ignored row's bad logit is not counted), for lengths around the vector and chunk sizes."""
    x = logits(9, c, DTYPES[dt], seed=c)
    x[2, c - 1] = math.inf
    x[2, c // 2] = -math.inf  # the first in row 2
    x[4, 0] = math.nan  # ignored row
    x[6, c - 1] = math.nan
    x[7, (3 * c) // 4] = -math.inf
    x[7, c - 2] = math.inf
    check(x, targets(9, c, seed=c, ignore=(4,)))


@pytest.mark.parametrize("dt", ("f32", "bf16"))
def test_chunked_strided_classes_and_many_rows(dt):
    """A strided class dimension ((N, C, d): chunks gathered into a buffer) and many rows, in parallel."""
    x = logits(6, 300, DTYPES[dt], seed=1, d=5)
    x[1, 299, 4] = math.nan  # row 1 * 5 + 4 = 9
    x[1, 7, 2] = -math.inf  # row 7: the first
    x[5, 0, 0] = math.inf  # row 25
    check(x, targets(6, 300, seed=1, d=5))
    big = logits(600, 1000, DTYPES[dt], seed=2)
    for r, c in ((599, 999), (301, 5), (300, 998), (450, 0)):
        big[r, c] = -math.inf
    check(big, targets(600, 1000, seed=2))


def test_chunked_row_all_minus_inf_and_finite_extremes():
    x = logits(3, 3000, torch.float32, seed=3)
    x[1] = -math.inf
    check(x, targets(3, 3000, seed=3))  # row 1, class 0
    huge = torch.full((3, 3000), 3.0e38)
    huge[:, ::2] = -3.0e38
    check(huge, targets(3, 3000, seed=4))  # finite: nothing to report


# --- short rows (C <= 64): rows in SIMD lanes, packed rows and their lane groups ------------------

@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("c", (1, 2, 7, 8, 9, 16, 17, 33, 64))
def test_packed_rows_every_lane(dt, bad, c):
    """Contiguous (N, C): lane groups (small_rows.h) with one bad row at each lane position, the
    groups around them all finite, and a short last group."""
    n = 16 * 4 + 3
    x = logits(n, c, DTYPES[dt], seed=c)
    t = targets(n, c, seed=c)
    for lane in range(16):
        r = 16 + lane
        cls = (lane * 5) % c
        x[r, cls] = BAD[bad]
        if lane % 3 == 0 and c > 1:
            x[r, c - 1] = -math.inf  # a second one, last in its row: the first stays (lane * 5) % c
    x[n - 1, c - 1] = BAD[bad]  # the short last group
    check(x, t)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("c", (3, 10, 64))
def test_packed_rows_per_row_code(dt, c):
    """Options that keep the packed path off lane groups (weights, smoothing): the per-row code."""
    n = 16 * 3 + 5
    x = logits(n, c, DTYPES[dt], seed=c + 1)
    x[20, c - 1] = math.nan
    x[37, 0] = -math.inf
    x[n - 1, c // 2] = math.inf
    t = targets(n, c, seed=c, ignore=(5,))
    x[5, 0] = math.inf  # ignored: not counted
    weight = torch.rand(c, generator=gen(c)).to(DTYPES[dt]) + 0.5
    check(x, t, weight=weight)
    check(x, t, label_smoothing=0.1)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("c", (2, 10, 64))
def test_lane_rows_every_lane(dt, bad, c):
    """Rows not back to back ((N, C, d): class stride d, rows in SIMD lanes)."""
    n, d = 5, 7  # 35 rows: two full groups of 16 and a short one (8 of float32's AVX2 lanes: more)
    x = logits(n, c, DTYPES[dt], seed=c, d=d)
    for r in range(0, n * d, 3):  # flat row r is (r // d, :, r % d)
        x[r // d, (r * 7) % c, r % d] = BAD[bad]
    check(x, targets(n, c, seed=c, d=d, ignore=(0, 9)))


def test_lane_groups_finite_sum_overflow_reports_nothing():
    """Finite logits whose sum overflows leave the group for the per-row code, which finds nothing."""
    x = torch.full((40, 10), 3.0e38)
    x[:, 1::2] = 2.9e38
    t = targets(40, 10, seed=5)
    check(x, t)
    torch.testing.assert_close(vl.cross_entropy(x, t, check_finite=True), F.cross_entropy(x, t))


# --- probability targets (chunked, prob_rows.h) -------------------------------------------------

@pytest.mark.parametrize("c", (10, 2049))
def test_probability_targets(c):
    x = logits(6, c, torch.float32, seed=c)
    x[2, c - 1] = -math.inf
    x[4, 0] = math.nan
    q = torch.softmax(torch.randn(6, c, generator=gen(c)), dim=1)
    with pytest.raises(vl.NonFiniteLogitsError) as info:
        vl.cross_entropy(x, q, check_finite=True)
    assert (info.value.row, info.value.column, info.value.count) == (2, c - 1, 2)
