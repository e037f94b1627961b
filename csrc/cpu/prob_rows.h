// Probability targets (same dtype and shape as the logits, any strides): every row walked in
// chunks, whatever its class count (chunked_rows.h's scan_row).
#pragma once

#include "chunked_rows.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

template <typename scalar_t, typename acc_t>
acc_t prob_row_loss_direct(const scalar_t* x_row, int64_t x_stride, const scalar_t* q_row, int64_t q_stride,
                           const acc_t* w, const LossConstants<acc_t>& k, RowLse<acc_t> lse) {
  acc_t loss = 0;
  for (int64_t c = 0; c < k.num_classes; ++c) {
    loss += prob_loss_term(k, w ? w[c] : acc_t(1), static_cast<acc_t>(q_row[c * q_stride]), lse,
                           static_cast<acc_t>(x_row[c * x_stride]));
  }
  return loss;
}

template <typename scalar_t>
ForwardTotals prob_forward_typed(const LogitsView& xv, const LogitsView& qv, const LossOptions& o,
                                 const ForwardOutputs& out) {
  using acc_t = acc_type<scalar_t>;
  const RowGeometry& g = xv.geo;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  const auto* q = static_cast<const scalar_t*>(qv.data);
  const auto* w = static_cast<const acc_t*>(o.weight);
  const LossConstants<acc_t> k = loss_constants<acc_t>(o, g.num_classes);
  auto* lse_out = static_cast<acc_t*>(out.lse);
  return for_each_row_block(g.num_rows, g.num_classes, [&](int64_t r0, int64_t r1, ForwardTotals& part) {
    alignas(64) acc_t xbuf[kChunkElems];
    alignas(64) acc_t qbuf[kChunkElems];
    for (int64_t r = r0; r < r1; ++r) {
      const RowScan<acc_t> scan = scan_row<scalar_t, acc_t>(
          x + row_offset(g, r), g.class_stride, q + row_offset(qv.geo, r), qv.geo.class_stride, g.num_classes, w,
          has_smoothing(k), out.check_finite, xbuf, qbuf);
      note_nonfinite(part, r, scan.nonfinite_class);
      const RowLse<acc_t> lse = row_lse(scan.lse);
      // An empty class dimension has nothing to sum: the row's loss is 0, as torch's sum over it.
      acc_t loss = g.num_classes == 0 ? acc_t(0) : prob_row_loss(k, lse, scan.ref, scan.sums);
      if (prob_row_needs_terms(loss, lse)) {
        loss = prob_row_loss_direct(x + row_offset(g, r), g.class_stride, q + row_offset(qv.geo, r),
                                    qv.geo.class_stride, w, k, lse);
      }
      part.loss_sum += loss;
      store_row_lse(lse_out, r, lse);
      store_row_loss<scalar_t>(out, r, loss);
    }
  });
}

template <typename scalar_t>
void prob_backward_typed(const LogitsView& xv, const LogitsView& qv, const LossOptions& o, const void* lse_ptr,
                         const GradScale& gs, const GradOutput& gx, const GradOutput* gq) {
  using acc_t = acc_type<scalar_t>;
  const RowGeometry& g = xv.geo;
  const int64_t C = g.num_classes;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  const auto* q = static_cast<const scalar_t*>(qv.data);
  const auto* w = static_cast<const acc_t*>(o.weight);
  const auto* lse = static_cast<const acc_t*>(lse_ptr);
  const auto* per_row = static_cast<const acc_t*>(gs.per_row);
  const LossConstants<acc_t> k = loss_constants<acc_t>(o, C);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, g.num_rows, grain, [&](int64_t r0, int64_t r1) {
    alignas(64) acc_t xbuf[kChunkElems];
    alignas(64) acc_t qbuf[kChunkElems];
    alignas(64) acc_t gbuf[kChunkElems];
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xrow = x + row_offset(g, r);
      const scalar_t* qrow = q + row_offset(qv.geo, r);
      scalar_t* gxrow = static_cast<scalar_t*>(gx.data) + row_offset(gx.geo, r);
      scalar_t* gqrow = gq ? static_cast<scalar_t*>(gq->data) + row_offset(gq->geo, r) : nullptr;
      const acc_t scale = per_row ? per_row[r] : static_cast<acc_t>(gs.scalar);
      // S needs the whole row's sum_c w_c q_c before the first gradient element can be written.
      acc_t swq = 0;
      for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
        const int64_t n = std::min(kChunkElems, C - c0);
        const acc_t* qs = load_chunk(qrow, qv.geo.class_stride, c0, n, qbuf);
        swq += chunk_row_sums<acc_t>(qs, w ? w + c0 : nullptr, qs, n, acc_t(0), false).swq;
      }
      const acc_t mass = prob_row_mass(k, swq);
      for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
        const int64_t n = std::min(kChunkElems, C - c0);
        const acc_t* xs = load_chunk(xrow, g.class_stride, c0, n, xbuf);
        const acc_t* qs = load_chunk(qrow, qv.geo.class_stride, c0, n, qbuf);
        const acc_t* wc = w ? w + c0 : nullptr;
        acc_t* out = chunk_target(gxrow, gx.geo.class_stride, c0, gbuf);
        chunk_grad<acc_t>(out, xs, wc, qs, n, load_row_lse(lse, r), scale, mass, target_share(k),
                          smoothing_per_class(k));
        store_chunk(gxrow, gx.geo.class_stride, c0, n, out);
        if (gqrow) {
          out = chunk_target(gqrow, gq->geo.class_stride, c0, gbuf);
          chunk_target_grad<acc_t>(out, xs, wc, n, load_row_lse(lse, r), scale, target_share(k));
          store_chunk(gqrow, gq->geo.class_stride, c0, n, out);
        }
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
