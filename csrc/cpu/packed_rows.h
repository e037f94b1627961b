// The packed small-row path: 0 < C <= kLaneRowsMaxClasses with rows back to back (a contiguous
// (N, C) tensor), in the logits and, for a backward, in the gradient.
#pragma once

#include "lane_rows.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// Packed short rows (C <= kLaneRowsMaxClasses; rows back to back, row i at i * C, in both the
// logits and the gradient: a contiguous (N, C) tensor). A block of whole rows, at most
// kChunkElems elements, is one contiguous span: it is read into an L1 buffer and written back
// with full-width vector copies. Inside the buffer each row is worked on in whole vectors that
// run past its end into the next row's elements (computed, then overwritten when that row is
// done: rows go in order); the target element is taken from the probabilities already computed
// (no scalar exp). Strided layouts keep the rows-in-lanes kernel, where adjacent rows are
// adjacent in memory.
inline bool is_packed(const RowGeometry& g) {
  return g.class_stride == 1 && g.ndim == 1 && (g.strides[0] == g.num_classes || g.sizes[0] == 1);
}

// Stores n acc_t values to contiguous memory, narrowing them when the memory is narrower.
template <typename scalar_t, typename acc_t>
void store_span(scalar_t* p, int64_t n, const acc_t* values) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(p, values, n * sizeof(acc_t));
  } else {
    store_chunk(p, 1, 0, n, values);
  }
}

// Makes `buf` hold a block of n packed-row values, then `padded` zeros: whole-vector reads of the
// block's last row run past its end. `xs` is load_chunk's result for the block (`buf` itself when
// it widened them, else the tensor).
template <typename acc_t>
void fill_padded_block(const acc_t* xs, int64_t n, int64_t padded, acc_t* buf) {
  if (xs != buf) std::memcpy(buf, xs, n * sizeof(acc_t));
  std::fill(buf + n, buf + n + padded, acc_t(0));
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
#include "small_rows.h"  // the common case of packed short rows, L rows at a time
namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// The forward over rows [r0, r1) of a reduction block: groups of L rows through small_rows.h's
// vector path when `lane_groups` (the options allow it) and the group is the common case, else
// one row per lane as lane_rows.h does.
template <typename scalar_t, typename acc_t>
void index_forward_packed(const IndexRows<scalar_t, acc_t> a, const ForwardOutputs& out, bool lane_groups, int64_t r0,
                          int64_t r1, ForwardTotals& part) {
  constexpr int L = Vectorized<acc_t>::size();
  LaneGroupForward<scalar_t> groups(a.x, a.g.num_rows, a.g.num_classes, a.t, out, r1);
  for (int64_t first = r0; first < r1; first += L) {
    if (lane_groups && groups.group(first)) continue;
    index_forward_lane_group(a, out, first, r1, part);
  }
  groups.finish(part);
}

// Every block is read whole before its gradient is stored, so `gout` may be the logits themselves.
// `lane_groups`: groups of L rows are tried on small_rows.h's vector path first.
template <typename scalar_t, typename acc_t>
void index_backward_packed(const IndexRows<scalar_t, acc_t>& a, const acc_t* lse, const GradScale& gs,
                           const GradOutput& gout, bool lane_groups) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const RowGeometry& g = a.g;
  const IndexTargets& t = a.t;
  const LossConstants<acc_t>& k = a.k;
  const acc_t* w = a.w;
  const int64_t C = g.num_classes;
  const int64_t padded = (C + L - 1) / L * L;
  const int64_t block_rows = kChunkElems / C;
  const scalar_t* x = a.x;
  auto* grad = static_cast<scalar_t*>(gout.data);
  const acc_t eps = smoothing_per_class(k);
  // Weights padded to whole vectors, once (the padding lanes' gradients are dropped).
  alignas(64) acc_t wpad[kLaneRowsMaxClasses];
  const acc_t* ws = smoothing_weights(k, w);
  for (int64_t c = 0; c < padded; ++c) wpad[c] = c < C && ws ? ws[c] : acc_t(1);
  const int64_t N = g.num_rows;
  const bool overlapping = reinterpret_cast<const char*>(grad) < reinterpret_cast<const char*>(x + N * C) &&
                           reinterpret_cast<const char*>(x) < reinterpret_cast<const char*>(grad + N * C);
  // Vector-path groups store an acc_t gradient straight into the tensor (no second copy) when it
  // is not the logits; the per-row code's rows go through gbuf, copied out before the next group.
  const bool write_in_place = std::is_same_v<scalar_t, acc_t> && !overlapping;
  const int64_t num_blocks = (g.num_rows + block_rows - 1) / block_rows;
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    // + kLaneRowsMaxClasses: the last row's whole vectors run past the block's end.
    alignas(64) acc_t xbuf[kChunkElems + kLaneRowsMaxClasses], gbuf[kChunkElems + kLaneRowsMaxClasses];
    alignas(64) acc_t pbuf[kLaneRowsMaxClasses];
    const Vec one(acc_t(1)), vcap(k.softcap), veps(eps);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block_rows, rows = std::min(block_rows, g.num_rows - r0), n = rows * C;
      const acc_t* xs = load_chunk(x + r0 * C, 1, 0, n, xbuf);
      // acc_t logits are read where they are (no copy) unless they must be capped, the vectors
      // past the block's end would leave the tensor, or the gradient overlaps them.
      const bool read_in_place = xs != xbuf && !has_softcap(k) && !overlapping && (r0 + rows) * C + padded <= N * C;
      if (!read_in_place) {
        fill_padded_block(xs, n, padded, xbuf);
        if (has_softcap(k)) chunk_softcap(xbuf, xbuf, n + padded, k.softcap);
        xs = xbuf;
      }
      int64_t pending = 0;  // the first row in gbuf not yet stored
      for (int64_t i = 0; i < rows; ++i) {
        acc_t* gdst = write_in_place ? reinterpret_cast<acc_t*>(grad) + (r0 + i) * C : gbuf + i * C;
        if (lane_groups && i % L == 0 && i + L <= rows &&
            lane_group_backward(xs + i * C, gdst, r0 + i, t, k, lse, gs)) {
          if (write_in_place) {
            store_span(grad + (r0 + pending) * C, (i - pending) * C, gbuf + pending * C);
            pending = i + L;
          }
          i += L - 1;
          continue;
        }
        const int64_t r = r0 + i;
        const acc_t* xrow = xs + i * C;
        acc_t* grow = gbuf + i * C;
        const int64_t y = read_target(t, r);
        if (classify_target(y, C, t.ignore_index) != kTargetValid) {
          std::fill(grow, grow + C, acc_t(0));
          continue;
        }
        const RowLse<acc_t> row = load_row_lse(lse, r);
        const acc_t scale = row_grad_scale<acc_t>(gs, r);
        const acc_t w_y = w ? w[y] : acc_t(1);
        const acc_t mass = index_row_mass(k, w_y);
        const acc_t extra = softmax_extra(k, scale, row, row_lse_grad<acc_t>(gs, r));
        const Vec vmax(row.max), vlog_sum(row.log_sum), vks(scale * mass + extra), vk(scale);
        const bool finite = is_finite(row.max) && is_finite(row.log_sum);
        for (int64_t c = 0; c < padded; c += L) {
          const Vec d = (Vec::loadu(xrow + c) - vmax) - vlog_sum;
          const Vec p = finite ? exp_finite_row<ExpTail::kZeroBelow>(d) : vexp(d);
          p.store(pbuf + c);
          (vks * p - vk * (Vec::loadu(wpad + c) * veps)).store(grow + c);  // chunk_grad's expression
        }
        grow[y] = grad_from_prob(scale, mass, pbuf[y], index_target_mass(k, w_y, true, w_y), extra);
        if (has_softcap(k)) {
          for (int64_t c = 0; c < padded; c += L) {
            const Vec tc = Vec::loadu(xrow + c) / vcap;
            (Vec::loadu(grow + c) * (one - tc * tc)).store(grow + c);
          }
        }
      }
      store_span(grad + (r0 + pending) * C, n - pending * C, gbuf + pending * C);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
