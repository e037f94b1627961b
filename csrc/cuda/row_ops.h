// What the kernels do with one row once its lanes' scan is combined (forward), and with each
// element (backward): torch-free, __host__ __device__, so tests/cuda_plan_test.cpp runs the very
// code of the kernels' row logic (target classification, NaN rows, ignore_index, loss and
// gradient composition, totals) on the host. The math is xent_row.h's; this file only wires it.
#pragma once

#include <cmath>
#include <cstdint>

#include "../xent_row.h"
#include "row_scan.h"

namespace validated_loss::cuda {

// The row's outputs, as lane 0 writes them (lse saved with store_row_lse).
template <typename acc_t>
struct RowOut {
  acc_t loss;
  RowLse<acc_t> lse;
};

// Class-index row. kind/y from classify_target; x_y and w_y are only read for a valid target
// (the caller loads x_y only then: an invalid target is never an address). The row's totals go
// into `totals`: an invalid target is recorded (position = row), its loss and lse are NaN; an
// ignored row has loss 0 and lse {0, 0}, as the CPU ops.
template <typename acc_t>
XENT_HD RowOut<acc_t> index_row_finish(const LossConstants<acc_t>& k, int64_t row, TargetKind kind, int64_t y,
                                       acc_t x_y, acc_t w_y, acc_t ref, const LaneState<acc_t>& st,
                                       BlockTotals& totals) {
  RowOut<acc_t> out{acc_t(0), RowLse<acc_t>{acc_t(0), acc_t(0)}};
  if (kind == kTargetInvalid) {
    totals.invalid = invalid_merge(totals.invalid, InvalidTarget{row, y, 1});
    out.loss = acc_t(NAN);
    out.lse = RowLse<acc_t>{acc_t(NAN), acc_t(NAN)};
  } else if (kind == kTargetValid) {
    totals_note_nonfinite(totals, row, st.bad_class);
    out.lse = row_lse(st.lse);
    out.loss = index_row_loss(k, out.lse, ref, x_y, w_y, st.sums);
    totals.total_weight += static_cast<double>(w_y);
  }
  totals.loss_sum += static_cast<double>(out.loss);
  return out;
}

// Probability-target row (every row is read; C == 0 gives loss 0, as torch's empty sum).
// by_terms: the row's loss is term_loss, summed term by term (a row prob_row_needs_terms names).
// (By value: a pointer to it would put it in local memory on the GPU.)
template <typename acc_t>
XENT_HD RowOut<acc_t> prob_row_finish(const LossConstants<acc_t>& k, int64_t row, acc_t ref, const LaneState<acc_t>& st,
                                      BlockTotals& totals, bool by_terms = false, acc_t term_loss = acc_t(0)) {
  totals_note_nonfinite(totals, row, st.bad_class);
  RowOut<acc_t> out;
  out.lse = row_lse(st.lse);
  out.loss = k.num_classes == 0 ? acc_t(0) : by_terms ? term_loss : prob_row_loss(k, out.lse, ref, st.sums);
  totals.loss_sum += static_cast<double>(out.loss);
  return out;
}

// The gradient of a valid class-index row, element by element: every element (the target's too)
// computed whole from its raw logit x (capped here when the call softcaps), never patched into a
// rounded value; z-loss and the lse gradient enter through `extra` (softmax_extra).
// W: class weights as `w ? w[c] : 1` reads them: a pointer (nullptr: none) or the kernels'
// ClassWeights (kernel_common.cuh), which reads them in the dtype they arrive in.
template <typename acc_t, typename W>
struct IndexGradRow {
  LossConstants<acc_t> k;
  W w;
  int64_t y;
  acc_t w_y;
  acc_t mass;
  acc_t scale;
  RowLse<acc_t> lse;
  acc_t extra;

  XENT_HD acc_t operator()(int64_t c, acc_t x) const {
    const acc_t a_c = index_target_mass(k, w ? w[c] : acc_t(1), c == y, w_y);
    if (!has_softcap(k)) return grad_element(scale, mass, x, lse, a_c, extra);
    const acc_t capped = softcap_logit(x, k.softcap);
    return grad_element(scale, mass, capped, lse, a_c, extra) * softcap_slope(capped, k.softcap);
  }
};

template <typename acc_t, typename W>
XENT_HD IndexGradRow<acc_t, W> index_grad_row(const LossConstants<acc_t>& k, W w, int64_t y, acc_t scale,
                                              RowLse<acc_t> lse, acc_t lse_grad = acc_t(0)) {
  const acc_t w_y = w ? w[y] : acc_t(1);
  return {k, w, y, w_y, index_row_mass(k, w_y), scale, lse, softmax_extra(k, scale, lse, lse_grad)};
}

// A probability row's gradients: d/dx_c and d/dq_c. mass from prob_row_mass of the row's
// sum_c w_c q_c (prob_swq_element summed over the row).
template <typename acc_t, typename W>
struct ProbGradRow {
  LossConstants<acc_t> k;
  W w;
  acc_t mass;
  acc_t scale;
  RowLse<acc_t> lse;

  XENT_HD acc_t dx(int64_t c, acc_t x, acc_t q) const {
    return grad_element(scale, mass, x, lse, prob_target_mass(k, w ? w[c] : acc_t(1), q));
  }
  XENT_HD acc_t dq(int64_t c, acc_t x) const { return prob_target_grad(k, scale, w ? w[c] : acc_t(1), x, lse); }
};

// One element's share of sum_c w_c q_c.
template <typename acc_t, typename W>
XENT_HD acc_t prob_swq_element(W w, int64_t c, acc_t q) {
  return row_sums_element<acc_t>(acc_t(0), w ? w[c] : acc_t(1), q, acc_t(0)).swq;
}

}  // namespace validated_loss::cuda
