// CPU kernels, compiled once per CPU capability (kernels_default/avx2/avx512.cpp include this file
// with that capability's flags and CPU_CAPABILITY macro, so at::vec::Vectorized has that width).
//
// A class-index pass takes one of three row paths, chosen once by row_path.h's plan_rows:
// chunked_rows.h (long rows, in chunks), lane_rows.h (short rows, one per SIMD lane) or
// packed_rows.h (short rows back to back; small_rows.h's L-row vector path for the common case).
// Probability targets: prob_rows.h. Rows go in parallel (at::parallel_for); a forward's sums are
// taken in fixed blocks of rows merged in order. The per-row math comes from xent_row.h.
#pragma once

#include "prob_rows.h"
#include "row_path.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// The class-index gradient, by the row path planned for the logits and the gradient's layouts.
template <typename scalar_t, typename acc_t>
void index_backward_rows(const IndexRows<scalar_t, acc_t>& a, const acc_t* lse, const GradScale& gs,
                         const GradOutput& gout) {
  const RowPlan plan = plan_rows(a.g, &gout.geo, a.k, a.w, &gs);
  switch (plan.path) {
    case RowPath::kChunked:
      return index_backward_chunked(a, lse, gs, gout);
    case RowPath::kLanes:
      return index_backward_lanes(a, lse, gs, gout);
    case RowPath::kPacked:
      return index_backward_packed(a, lse, gs, gout, plan.lane_groups);
  }
}

// The class-index forward; `fused` (the fused op): each row's gradient too, written to
// fused->grad (which may be the logits themselves).
template <typename scalar_t>
ForwardTotals index_forward_typed(const LogitsView& xv, const IndexTargets& t, const LossOptions& o,
                                  const ForwardOutputs& out, const FusedGrad* fused = nullptr) {
  using acc_t = acc_type<scalar_t>;
  const IndexRows<scalar_t> a = index_rows<scalar_t>(xv, t, o);
  const RowPlan plan = plan_rows(a.g, nullptr, a.k, a.w, nullptr);
  const ForwardTotals totals =
      for_each_row_block(a.g.num_rows, a.g.num_classes, [&](int64_t r0, int64_t r1, ForwardTotals& part) {
        switch (plan.path) {
          case RowPath::kChunked:
            return index_forward_chunked(a, out, fused, r0, r1, part);
          case RowPath::kLanes:
            return index_forward_lanes(a, out, r0, r1, part);
          case RowPath::kPacked:
            return index_forward_packed(a, out, plan.lane_groups, r0, r1, part);
        }
      });
  // Short rows: the gradient pass re-gathers them after the whole forward (the chunked path wrote
  // each row's gradient right after its scan).
  if (fused && plan.path != RowPath::kChunked) {
    index_backward_rows(a, static_cast<const acc_t*>(out.lse), fused->scale, fused->grad);
  }
  return totals;
}

template <typename scalar_t>
void index_backward_typed(const LogitsView& xv, const IndexTargets& t, const LossOptions& o, const void* lse,
                          const GradScale& gs, const GradOutput& gout) {
  using acc_t = acc_type<scalar_t>;
  index_backward_rows(index_rows<scalar_t>(xv, t, o), static_cast<const acc_t*>(lse), gs, gout);
}

}  // namespace CPU_CAPABILITY

// Entry points of this capability (declared in kernel_api.h), dispatching on the logits' dtype.
namespace CPU_CAPABILITY {

ForwardTotals index_forward(const LogitsView& x, const IndexTargets& t, const LossOptions& o,
                            const ForwardOutputs& out) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "index_forward",
                                         [&] { return index_forward_typed<scalar_t>(x, t, o, out); });
}

void index_backward(const LogitsView& x, const IndexTargets& t, const LossOptions& o, const void* lse,
                    const GradScale& g, const GradOutput& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "index_backward",
                                  [&] { index_backward_typed<scalar_t>(x, t, o, lse, g, grad); });
}

ForwardTotals index_forward_grad(const LogitsView& x, const IndexTargets& t, const LossOptions& o,
                                 const ForwardOutputs& out, const GradScale& g, const GradOutput& grad) {
  const FusedGrad fused{g, grad};
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "index_forward_grad",
                                         [&] { return index_forward_typed<scalar_t>(x, t, o, out, &fused); });
}

ForwardTotals prob_forward(const LogitsView& x, const LogitsView& q, const LossOptions& o, const ForwardOutputs& out) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "prob_forward",
                                         [&] { return prob_forward_typed<scalar_t>(x, q, o, out); });
}

void prob_backward(const LogitsView& x, const LogitsView& q, const LossOptions& o, const void* lse, const GradScale& g,
                   const GradOutput& grad_x, const GradOutput* grad_q) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "prob_backward",
                                  [&] { prob_backward_typed<scalar_t>(x, q, o, lse, g, grad_x, grad_q); });
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
