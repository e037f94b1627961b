// The small single-block kernels around the forward: the sum of the class weights (before), and
// the merge of the forward's per-block totals into the reduced loss, the total weight and the
// status record (after). One block each, fixed order: the same result on every run and GPU.
#include <cub/block/block_reduce.cuh>

#include "../status.h"
#include "../xent_row.h"
#include "dtypes.cuh"
#include "kernel_api.h"
#include "launch.cuh"
#include "kernel_common.cuh"
#include "launch_plan.h"
#include "row_scan.h"
#include "team_reduce.cuh"

namespace validated_loss::cuda {
namespace {

// T: the logits' dtype; the weights are read as ClassWeights<T> (acc values, or T values widened).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    weight_sum_kernel(const ClassWeights<T> w, int64_t num_classes, acc_of<T>* out) {
  // In double: a float32 sum of 32000 weights drifts by ~1e-6 relative (torch's: ~1e-7).
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double s = 0;
  for (int64_t c = threadIdx.x; c < num_classes; c += kThreads) s += static_cast<double>(w[c]);
  s = Reduce(storage).Sum(s);
  if (threadIdx.x == 0) out[0] = static_cast<acc_of<T>>(s);
}

template <typename T>
__device__ __forceinline__ T from_double(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return from_acc<T>(static_cast<float>(v));
  }
}

// loss_out is a T, or (loss_acc) an acc_of<T>.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    finalize_kernel(const BlockTotals* partials, int64_t num_blocks, void* loss_out, bool loss_acc,
                    acc_of<T>* total_weight_out, int64_t* status, int64_t reduction, bool mean_over_rows,
                    double num_rows, bool smoothing) {
  __shared__ typename TotalsReduce::TempStorage storage;
  BlockTotals t = totals_empty();
  for (int64_t b = threadIdx.x; b < num_blocks; b += kThreads) t = totals_merge(t, partials[b]);
  t = TotalsReduce(storage).Reduce(t, MergeTotals());
  if (threadIdx.x != 0) return;
  if (loss_out) {
    const double divisor = mean_over_rows ? num_rows : t.total_weight;
    const double loss = reduction == kReductionMean
                            ? mean_loss<acc_of<T>>(t.loss_sum, divisor, smoothing && !mean_over_rows)
                            : t.loss_sum;
    if (loss_acc) {
      *static_cast<acc_of<T>*>(loss_out) = static_cast<acc_of<T>>(loss);
    } else {
      *static_cast<T*>(loss_out) = from_double<T>(loss);
    }
  }
  if (total_weight_out) *total_weight_out = static_cast<acc_of<T>>(t.total_weight);
  status[kStatusInvalidPosition] = t.invalid.position;
  status[kStatusInvalidValue] = t.invalid.value;
  status[kStatusInvalidCount] = t.invalid.count;
  status[kStatusNonFiniteRow] = t.nonfinite_row;
  status[kStatusNonFiniteClass] = t.nonfinite_class;
  status[kStatusNonFiniteCount] = t.nonfinite_count;
}

}  // namespace

cudaError_t weight_sum_launch(DType dtype, const void* w, bool narrow, int64_t num_classes, void* out,
                              cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    VL_LAUNCH(1, kThreads, 0, stream, weight_sum_kernel<T>)(ClassWeights<T>{w, narrow}, num_classes,
                                                            static_cast<acc_of<T>*>(out));
    return cudaGetLastError();
  });
}

cudaError_t finalize_launch(const ForwardArgs& f, int64_t num_blocks, bool mean_over_rows, int64_t num_rows,
                            cudaStream_t stream) {
  return dispatch_dtype(f.dtype, [&](auto tag) {
    using T = decltype(tag);
    VL_LAUNCH(1, kThreads, 0, stream, finalize_kernel<T>)(
        static_cast<const BlockTotals*>(f.workspace), num_blocks, f.loss_out, f.loss_acc,
        static_cast<acc_of<T>*>(f.total_weight_out), f.status, f.reduction, mean_over_rows,
        prob_mean_divisor(num_rows, f.x.ix.num_classes), f.label_smoothing > 0);
    return cudaGetLastError();
  });
}

}  // namespace validated_loss::cuda
