// One lane's share of a row's forward scan, and how lanes' shares combine: torch-free,
// __host__ __device__ (tests/cuda_plan_test.cpp runs it on the host for every lane of a team and
// compares the combined result with a direct computation).
//
// The lane reads what launch_plan.h's for_each_unit gives it. A scalar element enters the running
// log-sum-exp with lse_add; a 16-byte vector enters as one state (its max and sum of exp, as the
// CPU kernels do per chunk) through lse_combine. Row sums and the first non-finite class are
// accumulated per element. All of the math is xent_row.h's.
#pragma once

#include <cstdint>

#include "../xent_row.h"
#include "launch_plan.h"

namespace validated_loss::cuda {

constexpr int64_t kNoClass = INT64_MAX;  // "no non-finite class seen"

template <typename acc_t>
struct LaneState {
  LseState<acc_t> lse;
  RowSums<acc_t> sums;
  int64_t bad_class;  // smallest class holding a NaN/inf logit (check_finite), else kNoClass
};

template <typename acc_t>
XENT_HD LaneState<acc_t> lane_empty() {
  return {lse_empty<acc_t>(), row_sums_zero<acc_t>(), kNoClass};
}

template <typename acc_t>
XENT_HD LaneState<acc_t> lane_combine(const LaneState<acc_t>& a, const LaneState<acc_t>& b) {
  return {lse_combine(a.lse, b.lse), row_sums_add(a.sums, b.sums),
          a.bad_class < b.bad_class ? a.bad_class : b.bad_class};
}

struct ScanOptions {
  bool need_sums;     // form RowSums at all (smoothing, or probability targets)
  bool with_swd;      // include sum_c w_c (x_c - r) (label smoothing)
  bool check_finite;  // look for NaN/inf logits
};

// NaN-propagating max (as at::vec::maximum and the CPU kernels' chunk max).
template <typename acc_t>
XENT_HD acc_t nan_max(acc_t a, acc_t b) {
  return (a != a || a > b) ? a : b;
}

template <typename acc_t>
XENT_HD void lane_element_sums(LaneState<acc_t>& st, int64_t c, acc_t x, acc_t w, acc_t q, acc_t ref,
                               const ScanOptions& o) {
  if (o.need_sums) {
    RowSums<acc_t> e = row_sums_element<acc_t>(x, w, q, ref);
    if (!o.with_swd) e.swd = acc_t(0);
    st.sums = row_sums_add(st.sums, e);
  }
  if (o.check_finite && !(x - x == acc_t(0)) && c < st.bad_class) st.bad_class = c;
}

// The lane's partial state over its units of the row.
//   load.scalar(c, x, q)      sets logit x and target probability q of class c (q: 0 for index rows)
//   load.vector(c0, xs, qs)   the same for classes c0 .. c0 + V - 1
//   w                         class weights as `w ? w[c] : 1` reads them (row_ops.h's W)
VL_EXEC_CHECK_DISABLE
template <typename acc_t, int V, typename Loader, typename W>
XENT_HD LaneState<acc_t> scan_lane(const RowSpan& span, int lane, int team, const Loader& load, W w, acc_t ref,
                                   const ScanOptions& o) {
  LaneState<acc_t> st = lane_empty<acc_t>();
  for_each_unit(
      span, lane, team,
      [&](int64_t c) {
        acc_t x, q;
        load.scalar(c, x, q);
        st.lse = lse_add(st.lse, x);
        lane_element_sums(st, c, x, (o.need_sums && w) ? w[c] : acc_t(1), q, ref, o);
      },
      [&](int64_t c0) {
        acc_t xs[V], qs[V];
        load.vector(c0, xs, qs);
        acc_t m = xs[0];
        VL_UNROLL
        for (int j = 1; j < V; ++j) m = nan_max(m, xs[j]);
        if (m != -INFINITY) {  // a vector of -inf adds nothing (and exp(-inf - -inf) is NaN)
          acc_t s = acc_t(0);
          VL_UNROLL
          for (int j = 0; j < V; ++j) s += std::exp(xs[j] - m);
          st.lse = lse_combine(st.lse, LseState<acc_t>{m, s});
        }
        if (o.need_sums || o.check_finite) {
          VL_UNROLL
          for (int j = 0; j < V; ++j) {
            lane_element_sums(st, c0 + j, xs[j], (o.need_sums && w) ? w[c0 + j] : acc_t(1), qs[j], ref, o);
          }
        }
      });
  return st;
}

// A block's totals over the rows its lanes finished, merged in a fixed order (CUB's tree, then
// the finalize kernel's), so the reduced loss is the same on every run.
struct BlockTotals {
  double loss_sum;
  double total_weight;
  InvalidTarget invalid;
  int64_t nonfinite_row;  // smallest row with a non-finite logit, -1 if none
  int64_t nonfinite_class;
  int64_t nonfinite_count;
};

XENT_HD BlockTotals totals_empty() {
  return {0.0, 0.0, invalid_none(), -1, -1, 0};
}

XENT_HD BlockTotals totals_merge(const BlockTotals& a, const BlockTotals& b) {
  BlockTotals t;
  t.loss_sum = a.loss_sum + b.loss_sum;
  t.total_weight = a.total_weight + b.total_weight;
  t.invalid = invalid_merge(a.invalid, b.invalid);
  const bool take_b = a.nonfinite_row < 0 || (b.nonfinite_row >= 0 && b.nonfinite_row < a.nonfinite_row);
  t.nonfinite_row = take_b ? b.nonfinite_row : a.nonfinite_row;
  t.nonfinite_class = take_b ? b.nonfinite_class : a.nonfinite_class;
  t.nonfinite_count = a.nonfinite_count + b.nonfinite_count;
  return t;
}

XENT_HD void totals_note_nonfinite(BlockTotals& t, int64_t row, int64_t bad_class) {
  if (bad_class == kNoClass) return;
  if (t.nonfinite_row < 0 || row < t.nonfinite_row) {
    t.nonfinite_row = row;
    t.nonfinite_class = bad_class;
  }
  t.nonfinite_count += 1;
}

}  // namespace validated_loss::cuda
