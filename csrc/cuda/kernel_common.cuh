// Device helpers the forward and backward kernels share: reading a row through its span, targets,
// the per-call loss constants and each row's gradient scale. The math itself is xent_row.h's.
#pragma once

#include <cstdint>

#include "../xent_row.h"
#include "dtypes.cuh"
#include "kernel_api.h"
#include "launch_plan.h"
#include "row_scan.h"

namespace validated_loss::cuda {

// Loads logits (and, kWithQ, probability targets) of one row as acc values, for scan_lane. The
// logits row set the span, so its vectors are aligned; q uses vectors only when it has the same
// 16-byte phase and class stride 1 (q_vec), else element by element. cap > 0: the logits come
// out softcapped (cap * tanh(x / cap)), as the loss sees them.
template <typename T, bool kWithQ>
struct RowLoader {
  using acc_t = acc_of<T>;
  static constexpr int V = Pack<T>::kSize;
  const T* x;
  int64_t x_stride;
  const T* q;
  int64_t q_stride;
  bool q_vec;
  acc_t cap;

  __device__ __forceinline__ acc_t logit(T v) const {
    const acc_t a = to_acc(v);
    return cap > acc_t(0) ? softcap_logit(a, cap) : a;
  }

  __device__ __forceinline__ void scalar(int64_t c, acc_t& xv, acc_t& qv) const {
    xv = logit(x[c * x_stride]);
    qv = kWithQ ? to_acc(q[c * q_stride]) : acc_t(0);
  }

  __device__ __forceinline__ void vector(int64_t c0, acc_t* xv, acc_t* qv) const {
    const Pack<T> p = load_pack(x + c0);
#pragma unroll
    for (int j = 0; j < V; ++j) xv[j] = logit(p.v[j]);
    if constexpr (kWithQ) {
      if (q_vec) {
        const Pack<T> pq = load_pack(q + c0);
#pragma unroll
        for (int j = 0; j < V; ++j) qv[j] = to_acc(pq.v[j]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) qv[j] = to_acc(q[(c0 + j) * q_stride]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) qv[j] = acc_t(0);
    }
  }
};

// Class weights as the kernels read them: in the accumulate dtype, or (narrow) in the logits'
// half dtype, widened at each read: torch requires a weight of the logits' dtype, and widening at
// the read spares every call a conversion kernel and a float copy. Reads like a pointer:
// `w ? w[c] : 1` (row_ops.h's W).
template <typename T>
struct ClassWeights {
  const void* data;  // C values, or nullptr (no weight)
  bool narrow;       // T values (half/bfloat16 logits), else acc values

  __device__ __forceinline__ explicit operator bool() const { return data != nullptr; }
  __device__ __forceinline__ acc_of<T> operator[](int64_t c) const {
    if constexpr (!std::is_same_v<T, acc_of<T>>) {
      if (narrow) return to_acc(static_cast<const T*>(data)[c]);
    }
    return static_cast<const acc_of<T>*>(data)[c];
  }
};

template <typename T>
__device__ __forceinline__ ClassWeights<T> class_weights(const void* data, bool narrow) {
  return ClassWeights<T>{data, narrow};
}

// The forward's workspace: BlockTotals for whichever kernel finishes the rows (the forward, or
// split_finish_kernel), then, for split rows, one lane state per (split, row), split-major.
XENT_HD int64_t split_partials_offset(const LaunchPlan& plan) {
  const int64_t finish_grid = row_plan(plan.num_rows).grid;
  const int64_t blocks = plan.grid > finish_grid ? plan.grid : finish_grid;
  return ceil_div((blocks > 0 ? blocks : 1) * static_cast<int64_t>(sizeof(BlockTotals)), 16) * 16;
}

template <typename acc_t>
__device__ __forceinline__ LaneState<acc_t>* split_partials(void* workspace, const LaunchPlan& plan) {
  if (plan.splits == 1) return nullptr;
  return reinterpret_cast<LaneState<acc_t>*>(static_cast<char*>(workspace) + split_partials_offset(plan));
}

__device__ __forceinline__ int64_t read_target(const IndexTargetArgs& t, int64_t row) {
  return t.is_byte ? static_cast<int64_t>(static_cast<const uint8_t*>(t.data)[row])
                   : static_cast<const int64_t*>(t.data)[row];
}

template <typename acc_t>
__device__ __forceinline__ LossConstants<acc_t> loss_constants(const void* weight_sum, double smoothing,
                                                               int64_t num_classes, double z_scale = 0,
                                                               double softcap = 0) {
  const acc_t sum_weight = weight_sum ? *static_cast<const acc_t*>(weight_sum) : static_cast<acc_t>(num_classes);
  return {num_classes, static_cast<acc_t>(smoothing), sum_weight, static_cast<acc_t>(z_scale),
          static_cast<acc_t>(softcap)};
}

// The scale every row shares ('mean'/'sum'), computed once per thread before the row loop:
// float64 as the CPU ops, then rounded to acc. Unused for 'none'.
template <typename acc_t>
__device__ __forceinline__ acc_t uniform_scale(const GradScaleArgs& s, int64_t reduction) {
  if (s.per_row) return acc_t(0);
  const double grad = *static_cast<const double*>(s.scalar);
  const double total = s.total_weight ? static_cast<double>(*static_cast<const acc_t*>(s.total_weight)) : s.rows;
  return static_cast<acc_t>(reduction_scale<double>(reduction, grad, total));
}

template <typename acc_t>
__device__ __forceinline__ acc_t row_scale(const GradScaleArgs& s, acc_t uniform, int64_t row) {
  return s.per_row ? static_cast<const acc_t*>(s.per_row)[row] : uniform;
}

// One row's loss into a 'none' forward's output: T, or acc when the op asked for acc_loss.
template <typename T>
__device__ __forceinline__ void store_row_loss(const ForwardArgs& f, int64_t row, acc_of<T> loss) {
  if (f.loss_acc) {
    static_cast<acc_of<T>*>(f.loss_rows)[row] = loss;
  } else {
    static_cast<T*>(f.loss_rows)[row] = from_acc<T>(loss);
  }
}

// Writes V results of one vector: a 16-byte store when the output row allows it.
template <typename T>
__device__ __forceinline__ void store_results(T* out_row, int64_t stride, bool vec, int64_t c0, const Pack<T>& p) {
  if (vec) {
    store_pack(out_row + c0, p);
  } else {
#pragma unroll
    for (int j = 0; j < Pack<T>::kSize; ++j) out_row[(c0 + j) * stride] = p.v[j];
  }
}

}  // namespace validated_loss::cuda
