// The CUDA kernels' entry points, fed plain structs (no ATen): cross_entropy.cu is the only file
// that touches tensors; the kernel files include nothing of torch.
//
// Pointers are device pointers. "T" is the logits' dtype, "acc" its accumulate dtype (float64 for
// float64 logits, float32 otherwise). Each launcher enqueues its kernels on `stream` and returns
// cudaGetLastError().
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "launch_plan.h"

namespace validated_loss::cuda {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

inline int elem_bytes(DType t) {
  return t == DType::kDouble ? 8 : t == DType::kFloat ? 4 : 2;
}

// A tensor as the kernels see it: its data and where each row lives (make_row_indexer of its
// RowGeometry).
struct View {
  const void* data;
  RowIndexer ix;
};

struct MutableView {
  void* data;
  RowIndexer ix;
};

// What every forward shares.
struct ForwardArgs {
  DType dtype;
  View x;                  // logits
  const void* weight;      // C values (acc, or T when weight_narrow), or nullptr
  bool weight_narrow;      // weight holds T values (half/bfloat16 logits): widened at each read
  const void* weight_sum;  // device acc scalar: sum of weight (weight_sum_launch), or nullptr
                           // (then C; read only with label smoothing)
  double label_smoothing;
  double z_scale;     // z-loss scale, 0: none (class-index targets)
  double softcap;     // logit softcap, 0: none (class-index targets)
  int64_t reduction;  // 0 none, 1 mean, 2 sum
  bool check_finite;
  bool loss_acc;           // loss_rows / loss_out hold acc values (acc_loss; the fused op's 'sum'), else T
  void* loss_rows;         // 'none': T (acc when loss_acc) per row (flat row order); else nullptr
  void* lse;               // acc[rows][2]: {max, log_sum} per row (store_row_lse)
  void* workspace;         // forward_workspace_bytes() (uninitialized)
  void* loss_out;          // 'mean'/'sum': 0-dim T (acc when loss_acc); else nullptr
  void* total_weight_out;  // 0-dim acc, or nullptr
  int64_t* status;         // int64[kStatusSize]
};

struct IndexTargetArgs {
  const void* data;  // contiguous, one per row
  bool is_byte;      // uint8, else int64
  int64_t ignore_index;
};

// Scale of each row's gradient: grad_output per row ('none'), or a device scalar grad_output
// divided, for 'mean', by the device total weight (index) or by `rows` (probability targets).
// The scalar case is computed in float64, then rounded to acc, as the CPU ops do.
struct GradScaleArgs {
  const void* per_row;       // acc per row, or nullptr
  const void* scalar;        // float64 device scalar, or nullptr
  const void* total_weight;  // acc device scalar, or nullptr (then `rows`)
  double rows;
};

struct IndexForward {
  ForwardArgs f;
  IndexTargetArgs t;
};

struct ProbForward {
  ForwardArgs f;
  View q;  // probability targets, T, logits' shape
};

struct IndexBackward {
  DType dtype;
  View x;
  IndexTargetArgs t;
  const void* weight;  // as ForwardArgs'
  bool weight_narrow;
  const void* weight_sum;
  double label_smoothing;
  double z_scale;
  double softcap;
  int64_t reduction;
  const void* lse;       // acc[rows][2] (load_row_lse)
  const void* lse_grad;  // acc per row: gradient of the row's returned lse, or nullptr
  GradScaleArgs scale;
  MutableView grad;  // T, logits' shape; may be x itself (every element is read, then
                     // written, by the same thread)
};

struct ProbBackward {
  DType dtype;
  View x;
  View q;
  const void* weight;  // as ForwardArgs'
  bool weight_narrow;
  const void* weight_sum;
  double label_smoothing;
  int64_t reduction;
  const void* lse;
  GradScaleArgs scale;
  MutableView grad;         // d loss / d logits
  MutableView grad_target;  // d loss / d q, or data == nullptr
};

// Bytes of device workspace a forward over `x` needs (per-block partial totals; for rows split
// across blocks, their partial states too). prob: probability targets.
int64_t forward_workspace_bytes(DType dtype, const RowIndexer& x, bool prob);

// out[0] (acc of `dtype`, the logits' dtype) = sum of the C values of w: acc values, or T values
// when narrow (one block, deterministic, summed in float64).
cudaError_t weight_sum_launch(DType dtype, const void* w, bool narrow, int64_t num_classes, void* out,
                              cudaStream_t stream);

cudaError_t index_forward_launch(const IndexForward& a, cudaStream_t stream);
cudaError_t prob_forward_launch(const ProbForward& a, cudaStream_t stream);
cudaError_t index_backward_launch(const IndexBackward& a, cudaStream_t stream);
cudaError_t prob_backward_launch(const ProbBackward& a, cudaStream_t stream);

// Used by the forward launchers: merges the per-block totals into loss_out, total_weight_out and
// status. mean_over_rows: 'mean' divides by the number of rows (probability targets), else by the
// total weight.
cudaError_t finalize_launch(const ForwardArgs& f, int64_t num_blocks, bool mean_over_rows, int64_t num_rows,
                            cudaStream_t stream);

}  // namespace validated_loss::cuda
