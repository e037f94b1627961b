// The CPU kernels' entry points. kernels.h is compiled once per CPU capability (DEFAULT, AVX2,
// AVX512) into its own namespace; cross_entropy.cpp picks one at run time from the CPU it finds.
#pragma once

#include <c10/core/ScalarType.h>

#include "../row_geometry.h"
#include "../xent_row.h"

namespace validated_loss::cpu {

// Tensors as the kernels see them: a data pointer and where each row lives.
struct LogitsView {
  c10::ScalarType dtype;  // float, double, half or bfloat16; every other operand matches it
  const void* data;
  RowGeometry geo;
};

struct IndexTargets {
  const void* data;  // contiguous, one per row
  bool is_byte;      // uint8, else int64
  int64_t ignore_index;
};

struct LossOptions {
  const void* weight;  // C accumulate-dtype values, or nullptr
  double label_smoothing;
  int64_t reduction;
  double z_scale = 0;  // z-loss scale (class-index targets only); 0: none
  double softcap = 0;  // logit softcap (class-index targets only); 0: none
};

struct ForwardOutputs {
  void* loss_rows;  // 'none': one loss per row, in the logits' dtype (or see loss_rows_acc); else nullptr
  void* lse;        // one accumulate-dtype value per row
  bool check_finite;
  bool loss_rows_acc = false;  // loss_rows hold accumulate-dtype values (the ops' acc_loss)
};

struct ForwardTotals {
  double loss_sum = 0;
  double total_weight = 0;
  InvalidTarget invalid = invalid_none();
  int64_t nonfinite_row = -1;
  int64_t nonfinite_class = -1;
  int64_t nonfinite_count = 0;
};

struct GradScale {
  const void* per_row;             // 'none': accumulate-dtype grad_output per row; else nullptr
  double scalar;                   // 'mean'/'sum': grad_output (already divided by the total weight for mean)
  const void* lse_grad = nullptr;  // accumulate-dtype gradient of each row's returned lse, or nullptr
};

struct GradOutput {
  void* data;  // same dtype as the logits
  RowGeometry geo;
};

#define VALIDATED_LOSS_DECLARE_CPU_KERNELS(CAP)                                                            \
  namespace CAP {                                                                                          \
  ForwardTotals index_forward(const LogitsView& x, const IndexTargets& t, const LossOptions& o,            \
                              const ForwardOutputs& out);                                                  \
  void index_backward(const LogitsView& x, const IndexTargets& t, const LossOptions& o, const void* lse,   \
                      const GradScale& g, const GradOutput& grad);                                         \
  ForwardTotals index_forward_grad(const LogitsView& x, const IndexTargets& t, const LossOptions& o,       \
                                   const ForwardOutputs& out, const GradScale& g, const GradOutput& grad); \
  ForwardTotals prob_forward(const LogitsView& x, const LogitsView& q, const LossOptions& o,               \
                             const ForwardOutputs& out);                                                   \
  void prob_backward(const LogitsView& x, const LogitsView& q, const LossOptions& o, const void* lse,      \
                     const GradScale& g, const GradOutput& grad_x, const GradOutput* grad_q);              \
  }

VALIDATED_LOSS_DECLARE_CPU_KERNELS(DEFAULT)
VALIDATED_LOSS_DECLARE_CPU_KERNELS(AVX2)
VALIDATED_LOSS_DECLARE_CPU_KERNELS(AVX512)

}  // namespace validated_loss::cpu
