// The rows-in-lanes path (0 < C <= kLaneRowsMaxClasses, rows not packed back to back, e.g. the
// (N, C, d) layouts where adjacent rows are adjacent in memory): L = Vectorized<acc_t>::size()
// rows at a time, one per SIMD lane, gathered class-major into an L1 buffer.
#pragma once

#include "row_common.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// Up to this many classes a row is too short to fill vectors along the classes: the small-class
// kernels put one row in each SIMD lane instead (and read strided class dimensions that way too).
constexpr int64_t kLaneRowsMaxClasses = 64;

inline bool use_lane_rows(const RowGeometry& g) {
  return g.num_classes > 0 && g.num_classes <= kLaneRowsMaxClasses;
}

// Gathers the rows at `offsets` (one per lane) into buf[c * L + lane], widened to acc_t.
template <typename scalar_t, typename acc_t>
void gather_lane_rows(const scalar_t* x, const int64_t* offsets, int64_t num_classes, int64_t class_stride,
                      acc_t* buf) {
  constexpr int L = Vectorized<acc_t>::size();
  for (int l = 0; l < L; ++l) {
    const scalar_t* row = x + offsets[l];
    for (int64_t c = 0; c < num_classes; ++c) buf[c * L + l] = static_cast<acc_t>(row[c * class_stride]);
  }
}

// Offsets of rows first..first+L-1 (the last real row repeated to fill a short group).
template <typename acc_t>
int lane_offsets(const RowGeometry& g, int64_t first, int64_t end, int64_t* offsets) {
  constexpr int L = Vectorized<acc_t>::size();
  const int n = static_cast<int>(std::min<int64_t>(L, end - first));
  for (int l = 0; l < L; ++l) offsets[l] = row_offset(g, first + std::min(l, n - 1));
  return n;
}

// Per-lane RowLse of the L rows in buf: max, then log of the sum of exp over the classes. With
// `flag_out` (check_finite), each lane's finite_flag from the max's loop: 0 when its row is all
// finite, NaN otherwise.
template <typename acc_t>
void lane_lse(const acc_t* buf, int64_t num_classes, acc_t* max_out, acc_t* log_sum_out, acc_t* flag_out = nullptr) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  Vec m = Vec::loadu(buf);
  if (flag_out) {
    Vec flag = finite_flag(Vec(acc_t(0)), m);
    for (int64_t c = 1; c < num_classes; ++c) {
      const Vec v = Vec::loadu(buf + c * L);
      m = at::vec::maximum(m, v);
      flag = finite_flag(flag, v);
    }
    flag.store(flag_out);
  } else {
    for (int64_t c = 1; c < num_classes; ++c) m = at::vec::maximum(m, Vec::loadu(buf + c * L));
  }
  Vec s(acc_t(0));
  for (int64_t c = 0; c < num_classes; ++c) s = s + vexp(Vec::loadu(buf + c * L) - m);
  m.store(max_out);
  s.log().store(log_sum_out);
}

// The forward of rows first..min(first + L, end) - 1, one per lane.
template <typename scalar_t, typename acc_t>
VL_ROW_INLINE void index_forward_lane_group(const IndexRows<scalar_t, acc_t> a, const ForwardOutputs& out,
                                            int64_t first, int64_t end, ForwardTotals& part) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  const RowGeometry& g = a.g;
  const int64_t C = g.num_classes;
  const LossConstants<acc_t> k = a.k;
  alignas(64) acc_t buf[kLaneRowsMaxClasses * L];
  int64_t offsets[L];
  const int n = lane_offsets<acc_t>(g, first, end, offsets);
  gather_lane_rows(a.x, offsets, C, g.class_stride, buf);
  if (has_softcap(k)) chunk_softcap(buf, buf, C * L, k.softcap);
  alignas(64) acc_t max[L], log_sum[L], ref[L], swd[L], flag[L];
  lane_lse(buf, C, max, log_sum, out.check_finite ? flag : nullptr);
  for (int l = 0; l < L; ++l) ref[l] = row_reference(buf[l]);
  if (has_smoothing(k)) {
    const Vec vref = Vec::loadu(ref);
    Vec acc(acc_t(0));
    for (int64_t c = 0; c < C; ++c) acc = acc + Vec(a.w ? a.w[c] : acc_t(1)) * (Vec::loadu(buf + c * L) - vref);
    acc.store(swd);
  }
  for (int l = 0; l < n; ++l) {
    const RowTarget tg = row_target(a.t, first + l, C);
    RowForward<acc_t> f{};
    if (tg.kind == kTargetValid) {
      if (out.check_finite && !is_finite(flag[l])) {  // the rare row with a bad logit: where is the first
        for (int64_t c = 0; c < C && f.nonfinite_class < 0; ++c) f.nonfinite_class = is_finite(buf[c * L + l]) ? -1 : c;
      }
      f.lse = RowLse<acc_t>{max[l], log_sum[l]};
      f.ref = ref[l];
      f.x_y = buf[tg.y * L + l];
      f.sums = RowSums<acc_t>{has_smoothing(k) ? swd[l] : acc_t(0), 0, 0};
    }
    record_index_row<scalar_t>(k, a.w, out, first + l, tg, f, part);
  }
}

// The forward over rows [r0, r1) of a reduction block.
template <typename scalar_t, typename acc_t>
void index_forward_lanes(const IndexRows<scalar_t, acc_t> a, const ForwardOutputs& out, int64_t r0, int64_t r1,
                         ForwardTotals& part) {
  constexpr int L = Vectorized<acc_t>::size();
  for (int64_t first = r0; first < r1; first += L) index_forward_lane_group(a, out, first, r1, part);
}

// Small-class backward: one row per SIMD lane (see use_lane_rows). Every group of L rows is
// gathered (and its target logits kept) before any of its gradients is written, so `gout` may
// be the logits themselves.
template <typename scalar_t, typename acc_t>
void index_backward_lanes(const IndexRows<scalar_t, acc_t>& a, const acc_t* lse, const GradScale& gs,
                          const GradOutput& gout) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  const RowGeometry& g = a.g;
  const int64_t C = g.num_classes;
  const scalar_t* x = a.x;
  const IndexTargets& t = a.t;
  const LossConstants<acc_t>& k = a.k;
  const acc_t* w = a.w;
  auto* grad = static_cast<scalar_t*>(gout.data);
  at::parallel_for(0, (g.num_rows + L - 1) / L, std::max<int64_t>(1, 2048 / C), [&](int64_t b0, int64_t b1) {
    alignas(64) acc_t buf[kLaneRowsMaxClasses * L];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * L;
      int64_t offsets[L];
      const int n = lane_offsets<acc_t>(g, first, g.num_rows, offsets);
      gather_lane_rows(x, offsets, C, g.class_stride, buf);
      if (has_softcap(k)) chunk_softcap(buf, buf, C * L, k.softcap);
      alignas(64) acc_t scale[L], mass[L], max[L], log_sum[L], ks[L], ke[L], extra[L], x_y[L];
      int64_t y[L];
      bool valid[L];
      for (int l = 0; l < L; ++l) {
        const int64_t r = first + std::min(l, n - 1);
        y[l] = read_target(t, r);
        valid[l] = l < n && classify_target(y[l], C, t.ignore_index) == kTargetValid;
        scale[l] = valid[l] ? row_grad_scale<acc_t>(gs, r) : acc_t(0);
        mass[l] = valid[l] ? index_row_mass(k, w ? w[y[l]] : acc_t(1)) : acc_t(0);
        const RowLse<acc_t> row = valid[l] ? load_row_lse(lse, r) : RowLse<acc_t>{0, 0};
        max[l] = row.max;
        log_sum[l] = row.log_sum;
        extra[l] = valid[l] ? softmax_extra(k, scale[l], row, row_lse_grad<acc_t>(gs, r)) : acc_t(0);
        ks[l] = scale[l] * mass[l] + extra[l];
        ke[l] = scale[l] * smoothing_per_class(k);
        x_y[l] = valid[l] ? buf[y[l] * L + l] : acc_t(0);
      }
      const Vec vks = Vec::loadu(ks), vke = Vec::loadu(ke), vmax = Vec::loadu(max), vlog_sum = Vec::loadu(log_sum);
      const Vec vcap(k.softcap), one(acc_t(1));
      for (int64_t c = 0; c < C; ++c) {
        const Vec xc = Vec::loadu(buf + c * L);
        const acc_t* ws = smoothing_weights(k, w);
        Vec gc = vks * vexp((xc - vmax) - vlog_sum) - vke * Vec(ws ? ws[c] : acc_t(1));
        if (has_softcap(k)) {
          const Vec tc = xc / vcap;
          gc = gc * (one - tc * tc);
        }
        gc.store(buf + c * L);
      }
      for (int l = 0; l < n; ++l) {
        scalar_t* grow = grad + row_offset(gout.geo, first + l);
        const int64_t gstride = gout.geo.class_stride;
        if (!valid[l]) {
          zero_row(grow, gstride, C);
          continue;
        }
        for (int64_t c = 0; c < C; ++c) grow[c * gstride] = static_cast<scalar_t>(buf[c * L + l]);
        // The target element, recomputed whole in acc_t from the (capped) logit kept above.
        const acc_t w_y = w ? w[y[l]] : acc_t(1);
        acc_t g_y = grad_element(scale[l], mass[l], x_y[l], RowLse<acc_t>{max[l], log_sum[l]},
                                 index_target_mass(k, w_y, true, w_y), extra[l]);
        if (has_softcap(k)) g_y *= softcap_slope(x_y[l], k.softcap);
        grow[y[l] * gstride] = static_cast<scalar_t>(g_y);
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
