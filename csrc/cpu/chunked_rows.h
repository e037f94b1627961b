// The chunked row path (C > kLaneRowsMaxClasses, and every probability row): each row walked in
// chunks of kChunkElems classes. A chunk is read from memory once, widened to the accumulate type
// in an L1 buffer when needed (half types, strided rows), and every per-chunk quantity is computed
// from that buffer (chunk_ops.h); the next chunk, or the next row's first, is prefetched meanwhile.
#pragma once

#include "row_common.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// ---------------------------------------------------------------------------------------------
// One row's forward scan: its lse, its shifted sums, and (check_finite) its first bad class.

template <typename acc_t>
struct RowScan {
  LseState<acc_t> lse;
  RowSums<acc_t> sums;
  acc_t ref;
  int64_t nonfinite_class;  // -1 when none found or not asked
};

// cap > 0: the logits are softcapped first (the reference too, so it stays near the capped values).
// check_finite then sees capped values: an infinite logit caps to +-cap, only NaN remains.
template <typename scalar_t, typename acc_t>
RowScan<acc_t> scan_row(const scalar_t* x_row, int64_t x_stride, const scalar_t* q_row, int64_t q_stride,
                        int64_t num_classes, const acc_t* weight, bool with_swd, bool check_finite, acc_t* xbuf,
                        acc_t* qbuf, acc_t cap = acc_t(0), const scalar_t* next_row = nullptr) {
  RowScan<acc_t> scan{lse_empty<acc_t>(), row_sums_zero<acc_t>(), acc_t(0), -1};
  if (num_classes == 0) return scan;
  const acc_t first = static_cast<acc_t>(x_row[0]);
  scan.ref = row_reference(cap > acc_t(0) ? softcap_logit(first, cap) : first);
  const bool need_sums = with_swd || q_row != nullptr;
  for (int64_t c0 = 0; c0 < num_classes; c0 += kChunkElems) {
    const int64_t n = std::min(kChunkElems, num_classes - c0);
    acc_t m;
    // check_finite's flag comes from the max's own loop; only a chunk it marks is scanned again,
    // for the position (and none after the row's first bad class).
    bool finite = true;
    const acc_t* xs = check_finite && scan.nonfinite_class < 0
                          ? load_logits_with_max<true>(x_row, x_stride, c0, n, xbuf, cap, m, &finite)
                          : load_logits_with_max(x_row, x_stride, c0, n, xbuf, cap, m);
    SpreadPrefetch pf = spread_prefetch_next(x_row, next_row, x_stride, c0, num_classes,
                                             n / (kAccumulators * Vectorized<acc_t>::size()));
    if (m != -INFINITY) scan.lse = lse_combine(scan.lse, LseState<acc_t>{m, chunk_sum_exp(xs, n, m, &pf)});
    pf.finish();
    if (!finite) {
      const int64_t c = first_nonfinite(xs, n);
      if (c >= 0) scan.nonfinite_class = c0 + c;
    }
    if (need_sums) {
      const acc_t* qs = q_row ? load_chunk(q_row, q_stride, c0, n, qbuf) : nullptr;
      scan.sums =
          row_sums_add(scan.sums, chunk_row_sums(xs, weight ? weight + c0 : nullptr, qs, n, scan.ref, with_swd));
    }
  }
  return scan;
}

// One valid row's gradient, chunk by chunk: scale * d loss / d x + lse_grad * d lse / d x, through
// the softcap when there is one. x_y is the row's target logit as the loss saw it (capped), read
// by the caller before anything is written: `grow` may be the row's own logits (the fused op), so
// every chunk is read whole before its gradient is stored, and the target element is computed
// from x_y, never from memory.
template <typename scalar_t, typename acc_t>
void index_grad_row(const scalar_t* row, int64_t x_stride, scalar_t* grow, int64_t g_stride,
                    const LossConstants<acc_t>& k, const acc_t* w, int64_t y, acc_t x_y, RowLse<acc_t> lse, acc_t scale,
                    acc_t lse_grad, acc_t* xbuf, acc_t* gbuf, const scalar_t* next_row = nullptr) {
  const int64_t C = k.num_classes;
  const acc_t w_y = w ? w[y] : acc_t(1);
  const acc_t mass = index_row_mass(k, w_y);
  const acc_t extra = softmax_extra(k, scale, lse, lse_grad);
  for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
    const int64_t n = std::min(kChunkElems, C - c0);
    const acc_t* xs = load_logits(row, x_stride, c0, n, xbuf, k.softcap);
    SpreadPrefetch pf = spread_prefetch_next(row, next_row, x_stride, c0, C, n / Vectorized<acc_t>::size());
    acc_t* out = chunk_target(grow, g_stride, c0, gbuf);
    const acc_t* ws = smoothing_weights(k, w);
    chunk_grad<acc_t>(out, xs, ws ? ws + c0 : nullptr, nullptr, n, lse, scale, mass, acc_t(0), smoothing_per_class(k),
                      extra, &pf);
    pf.finish();
    if (has_softcap(k)) chunk_softcap_grad(out, xs, n, k.softcap);
    store_chunk(grow, g_stride, c0, n, out);
  }
  // The target element, recomputed whole in acc_t (not patched into a rounded value).
  acc_t g_y = grad_element(scale, mass, x_y, lse, index_target_mass(k, w_y, true, w_y), extra);
  if (has_softcap(k)) g_y *= softcap_slope(x_y, k.softcap);
  grow[y * g_stride] = static_cast<scalar_t>(g_y);
}

// The forward over rows [r0, r1) of a reduction block; `fused`: each row's gradient right after
// its scan, while the row is still in cache.
template <typename scalar_t, typename acc_t>
void index_forward_chunked(const IndexRows<scalar_t, acc_t> a, const ForwardOutputs& out, const FusedGrad* fused,
                           int64_t r0, int64_t r1, ForwardTotals& part) {
  const RowGeometry& g = a.g;
  const int64_t C = g.num_classes;
  alignas(64) acc_t xbuf[kChunkElems];
  alignas(64) acc_t gbuf[kChunkElems];
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = a.x + row_offset(g, r);
    const scalar_t* next_row = r + 1 < r1 ? a.x + row_offset(g, r + 1) : nullptr;  // prefetched during this one
    const RowTarget tg = row_target(a.t, r, C);
    RowForward<acc_t> f{};
    if (tg.kind == kTargetValid) {
      const RowScan<acc_t> scan = scan_row<scalar_t, acc_t>(row, g.class_stride, nullptr, 0, C, a.w, has_smoothing(a.k),
                                                            out.check_finite, xbuf, nullptr, a.k.softcap, next_row);
      const acc_t x_y = loss_logit(a.k, static_cast<acc_t>(row[tg.y * g.class_stride]));
      f = RowForward<acc_t>{row_lse(scan.lse), scan.ref, x_y, scan.sums, scan.nonfinite_class};
    }
    const RowResult<acc_t> res = record_index_row<scalar_t>(a.k, a.w, out, r, tg, f, part);
    if (!fused) continue;
    scalar_t* grow = static_cast<scalar_t*>(fused->grad.data) + row_offset(fused->grad.geo, r);
    if (res.kind == kTargetValid) {
      index_grad_row(row, g.class_stride, grow, fused->grad.geo.class_stride, a.k, a.w, res.y, res.x_y, res.lse,
                     row_grad_scale<acc_t>(fused->scale, r), row_lse_grad<acc_t>(fused->scale, r), xbuf, gbuf);
    } else {
      zero_row(grow, fused->grad.geo.class_stride, C);
    }
  }
}

template <typename scalar_t, typename acc_t>
void index_backward_chunked(const IndexRows<scalar_t, acc_t>& a, const acc_t* lse, const GradScale& gs,
                            const GradOutput& gout) {
  const RowGeometry& g = a.g;
  const int64_t C = g.num_classes;
  auto* grad = static_cast<scalar_t*>(gout.data);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, g.num_rows, grain, [&](int64_t r0, int64_t r1) {
    alignas(64) acc_t xbuf[kChunkElems];
    alignas(64) acc_t gbuf[kChunkElems];
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* grow = grad + row_offset(gout.geo, r);
      const scalar_t* next_row = r + 1 < r1 ? a.x + row_offset(g, r + 1) : nullptr;  // prefetched during this one
      const int64_t y = read_target(a.t, r);
      if (classify_target(y, C, a.t.ignore_index) != kTargetValid) {
        zero_row(grow, gout.geo.class_stride, C);
        continue;
      }
      const scalar_t* row = a.x + row_offset(g, r);
      const acc_t x_y = loss_logit(a.k, static_cast<acc_t>(row[y * g.class_stride]));
      index_grad_row(row, g.class_stride, grow, gout.geo.class_stride, a.k, a.w, y, x_y, load_row_lse(lse, r),
                     row_grad_scale<acc_t>(gs, r), row_lse_grad<acc_t>(gs, r), xbuf, gbuf, next_row);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
