// What every class-index row path shares: the loss constants, the reduction blocks and their
// totals, and one row's forward result recorded the same way whichever path computed it.
#pragma once

#include "chunk_ops.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// Rows per reduction block: a function of C only, so a sum never depends on the thread count.
// A multiple of 64 rows, so lane groups of small-class kernels never straddle two blocks.
inline int64_t rows_per_block(int64_t num_classes) {
  const int64_t rows = std::max<int64_t>(1, 32768 / std::max<int64_t>(num_classes, 1));
  return (rows + 63) / 64 * 64;
}

template <typename acc_t>
LossConstants<acc_t> loss_constants(const LossOptions& o, int64_t num_classes) {
  acc_t sum_weight = acc_t(num_classes);
  if (o.weight) {
    // In double: one by one in float32, 32000 weights drift by ~1e-6 relative (torch: ~1e-7).
    const acc_t* w = static_cast<const acc_t*>(o.weight);
    double sum = 0;
    for (int64_t c = 0; c < num_classes; ++c) sum += static_cast<double>(w[c]);
    sum_weight = static_cast<acc_t>(sum);
  }
  return {num_classes, static_cast<acc_t>(o.label_smoothing), sum_weight, static_cast<acc_t>(o.z_scale),
          static_cast<acc_t>(o.softcap)};
}

inline int64_t read_target(const IndexTargets& t, int64_t r) {
  return t.is_byte ? static_cast<int64_t>(static_cast<const uint8_t*>(t.data)[r])
                   : static_cast<const int64_t*>(t.data)[r];
}

inline ForwardTotals merge_totals(const std::vector<ForwardTotals>& parts) {
  ForwardTotals total;
  for (const auto& p : parts) {  // in block order: the result is the same for any thread count
    total.loss_sum += p.loss_sum;
    total.total_weight += p.total_weight;
    total.invalid = invalid_merge(total.invalid, p.invalid);
    if (total.nonfinite_row < 0 && p.nonfinite_row >= 0) {
      total.nonfinite_row = p.nonfinite_row;
      total.nonfinite_class = p.nonfinite_class;
    }
    total.nonfinite_count += p.nonfinite_count;
  }
  return total;
}

// Runs body(r0, r1, totals) over fixed blocks of rows in parallel and merges the blocks' totals.
template <typename Body>
ForwardTotals for_each_row_block(int64_t num_rows, int64_t num_classes, const Body& body) {
  const int64_t block = rows_per_block(num_classes);
  const int64_t num_blocks = (num_rows + block - 1) / block;
  std::vector<ForwardTotals> parts(num_blocks);
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) body(b * block, std::min(num_rows, (b + 1) * block), parts[b]);
  });
  return merge_totals(parts);
}

// One row's loss into the 'none' output, narrowed to the logits' dtype unless the output is
// accumulate-dtype (autocast: float32 losses from half/bfloat16 logits).
template <typename scalar_t, typename acc_t>
void store_row_loss(const ForwardOutputs& out, int64_t r, acc_t loss) {
  if (!out.loss_rows) return;
  if (out.loss_rows_acc) {
    static_cast<acc_t*>(out.loss_rows)[r] = loss;
  } else {
    static_cast<scalar_t*>(out.loss_rows)[r] = static_cast<scalar_t>(loss);
  }
}

inline void note_nonfinite(ForwardTotals& part, int64_t row, int64_t cls) {
  if (cls < 0) return;
  if (part.nonfinite_row < 0) {
    part.nonfinite_row = row;
    part.nonfinite_class = cls;
  }
  part.nonfinite_count += 1;
}

// ---------------------------------------------------------------------------------------------
// Class-index targets.

template <typename acc_t>
acc_t row_grad_scale(const GradScale& g, int64_t r) {
  return g.per_row ? static_cast<const acc_t*>(g.per_row)[r] : static_cast<acc_t>(g.scalar);
}

template <typename acc_t>
acc_t row_lse_grad(const GradScale& g, int64_t r) {
  return g.lse_grad ? static_cast<const acc_t*>(g.lse_grad)[r] : acc_t(0);
}

// The logits, targets and loss constants of a class-index pass, as every row path reads them
// (passed by value: a row path's own copy, kept in registers across its stores).
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
struct IndexRows {
  const scalar_t* x;
  const RowGeometry& g;
  const IndexTargets& t;
  LossConstants<acc_t> k;
  const acc_t* w;  // class weights, or nullptr
};

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
IndexRows<scalar_t, acc_t> index_rows(const LogitsView& xv, const IndexTargets& t, const LossOptions& o) {
  return {static_cast<const scalar_t*>(xv.data), xv.geo, t, loss_constants<acc_t>(o, xv.geo.num_classes),
          static_cast<const acc_t*>(o.weight)};
}

// What the fused op adds to the forward: the gradient of every row, written to `grad` (which may
// be the logits themselves) while the row is still in cache.
struct FusedGrad {
  GradScale scale;
  GradOutput grad;
};

struct RowTarget {
  int64_t y;
  TargetKind kind;
};

VL_ROW_INLINE RowTarget row_target(const IndexTargets& t, int64_t r, int64_t num_classes) {
  const int64_t y = read_target(t, r);
  return {y, classify_target(y, num_classes, t.ignore_index)};
}

// What a row path's forward scan found for a row with a valid target (an invalid target is never
// used as an address, so it is never scanned).
template <typename acc_t>
struct RowForward {
  RowLse<acc_t> lse;
  acc_t ref;
  acc_t x_y;  // the target logit as the loss saw it (capped)
  RowSums<acc_t> sums;
  int64_t nonfinite_class = -1;  // check_finite's first bad class; -1: none found or not asked
};

// What the row's gradient needs from its forward.
template <typename acc_t>
struct RowResult {
  TargetKind kind;
  int64_t y;
  RowLse<acc_t> lse;
  acc_t x_y;
};

// Records row r's loss, lse and status into the outputs and the block's totals. `f` is only read
// for a valid target. k and w by value: the caller's copies, which no store to the outputs can
// change (a reference would be reloaded after each float store).
template <typename scalar_t, typename acc_t>
VL_ROW_INLINE RowResult<acc_t> record_index_row(const LossConstants<acc_t> k, const acc_t* w, const ForwardOutputs& out,
                                                int64_t r, RowTarget tg, const RowForward<acc_t>& f,
                                                ForwardTotals& part) {
  acc_t loss = 0;
  RowLse<acc_t> lse{0, 0};
  acc_t x_y = 0;
  if (tg.kind == kTargetInvalid) {
    part.invalid = invalid_merge(part.invalid, InvalidTarget{r, tg.y, 1});
    loss = NAN;
    lse = RowLse<acc_t>{NAN, NAN};
  } else if (tg.kind == kTargetValid) {
    const acc_t w_y = w ? w[tg.y] : acc_t(1);
    note_nonfinite(part, r, f.nonfinite_class);
    lse = f.lse;
    x_y = f.x_y;
    loss = index_row_loss(k, lse, f.ref, x_y, w_y, f.sums);
    part.total_weight += w_y;
  }
  part.loss_sum += loss;
  store_row_lse(static_cast<acc_t*>(out.lse), r, lse);
  store_row_loss<scalar_t>(out, r, loss);
  return RowResult<acc_t>{tg.kind, tg.y, lse, x_y};
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
