// Which row path a class-index pass takes, decided once per call from the geometry and the options
// (as cuda/launch_plan.h decides a launch for CUDA); the paths themselves are chunked_rows.h,
// lane_rows.h and packed_rows.h. Probability targets always take the chunked path (prob_rows.h).
#pragma once

#include "chunked_rows.h"
#include "packed_rows.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

enum class RowPath {
  kChunked,  // C > kLaneRowsMaxClasses (or C == 0): each row in chunks of kChunkElems classes
  kLanes,    // short rows, not packed: one row per SIMD lane
  kPacked,   // short rows back to back (logits, and the gradient when there is one)
};

struct RowPlan {
  RowPath path;
  bool lane_groups;  // kPacked: try small_rows.h's L-row vector path first (the options allow it)
};

// x: the logits. grad: the gradient a backward writes, or nullptr for a forward (whose packed path
// depends on the logits alone). gs: the backward's scale. check_finite does not change the plan:
// a lane group holding a non-finite logit already leaves it to the per-row code, which reports it.
template <typename acc_t>
RowPlan plan_rows(const RowGeometry& x, const RowGeometry* grad, const LossConstants<acc_t>& k, const acc_t* w,
                  const GradScale* gs) {
  if (!use_lane_rows(x)) return {RowPath::kChunked, false};
  if (!is_packed(x) || (grad != nullptr && !is_packed(*grad))) return {RowPath::kLanes, false};
  const bool groups = grad == nullptr ? lane_group_options_ok(k, w) : lane_group_backward_ok(k, w, *gs);
  return {RowPath::kPacked, groups};
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
