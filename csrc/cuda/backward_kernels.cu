// Backward kernels: one read of the logits and the row's lse, one write of the gradient.
// Every element, the target's included, is computed whole in the accumulate type from xent_row.h
// (grad_element with the class's target mass): no rounded value is ever read back and patched.
// Ignored and invalid rows get an exactly zero gradient. Torch-free.
#include "../xent_row.h"
#include "dtypes.cuh"
#include "kernel_api.h"
#include "launch.cuh"
#include "kernel_common.cuh"
#include "launch_plan.h"
#include "row_ops.h"
#include "row_scan.h"
#include "team_reduce.cuh"

namespace validated_loss::cuda {
namespace {

// Split `split` of `splits` of the row (its own span: the gradient row may have another phase).
template <typename T>
__device__ __forceinline__ void zero_row(T* row, int64_t num_classes, int64_t stride, int lane, int team, int64_t split,
                                         int64_t splits) {
  const RowSpan span = split_span(row_span(address_of(row), num_classes, stride, sizeof(T)), split, splits);
  const T zero = from_acc<T>(acc_of<T>(0));
  Pack<T> zeros;
#pragma unroll
  for (int j = 0; j < Pack<T>::kSize; ++j) zeros.v[j] = zero;
  for_each_unit(
      span, lane, team, [&](int64_t c) { row[c * stride] = zero; }, [&](int64_t c0) { store_pack(row + c0, zeros); });
}

// No reduction across lanes: one kernel serves every mapping and split (slot_of and split_span
// decide what each thread writes).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    index_backward_kernel(const __grid_constant__ IndexBackward a, const __grid_constant__ LaunchPlan plan) {
  using acc_t = acc_of<T>;
  constexpr int V = Pack<T>::kSize;
  const int64_t C = a.x.ix.num_classes;
  const int64_t x_stride = a.x.ix.class_stride;
  const int64_t g_stride = a.grad.ix.class_stride;
  const T* x = static_cast<const T*>(a.x.data);
  T* grad = static_cast<T*>(a.grad.data);
  const ClassWeights<T> w = class_weights<T>(a.weight, a.weight_narrow);
  const acc_t* lse = static_cast<const acc_t*>(a.lse);
  const LossConstants<acc_t> k = loss_constants<acc_t>(a.weight_sum, a.label_smoothing, C, a.z_scale, a.softcap);
  const acc_t shared_scale = uniform_scale<acc_t>(a.scale, a.reduction);
  const acc_t* lse_grad = static_cast<const acc_t*>(a.lse_grad);

  for (int64_t item = blockIdx.x; item < plan.items; item += plan.grid) {
    const Item it = item_of(plan, item);
    const Slot s = slot_of(plan, it.group, static_cast<int>(threadIdx.x));
    if (s.row >= plan.num_rows) continue;
    T* g_row = grad + row_start(a.grad.ix, s.row);
    const int64_t y = read_target(a.t, s.row);
    if (classify_target(y, C, a.t.ignore_index) != kTargetValid) {
      zero_row(g_row, C, g_stride, s.lane, plan.team, it.split, plan.splits);
      continue;
    }
    const T* row = x + row_start(a.x.ix, s.row);
    const RowSpan span = split_span(row_span(address_of(row), C, x_stride, sizeof(T)), it.split, plan.splits);
    const bool g_vec = vector_compatible(span, address_of(row), address_of(g_row), g_stride);
    const auto g = index_grad_row(k, w, y, row_scale<acc_t>(a.scale, shared_scale, s.row), load_row_lse(lse, s.row),
                                  lse_grad ? lse_grad[s.row] : acc_t(0));
    auto grad_of = [&](int64_t c, acc_t xc) { return from_acc<T>(g(c, xc)); };
    for_each_unit(
        span, s.lane, plan.team, [&](int64_t c) { g_row[c * g_stride] = grad_of(c, to_acc(row[c * x_stride])); },
        [&](int64_t c0) {
          const Pack<T> xp = load_pack(row + c0);
          Pack<T> out;
#pragma unroll
          for (int j = 0; j < V; ++j) out.v[j] = grad_of(c0 + j, to_acc(xp.v[j]));
          store_results(g_row, g_stride, g_vec, c0, out);
        });
  }
}

// Probability targets: the row's S = sum_c w_c q_c first (a one-value reduction over the team),
// then the gradient pass; d loss / d q as well when asked. Never split (S needs the whole row).
template <typename T, int kMapping>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    prob_backward_kernel(const __grid_constant__ ProbBackward a, const __grid_constant__ LaunchPlan plan) {
  using acc_t = acc_of<T>;
  constexpr int V = Pack<T>::kSize;
  using Team = TeamReduce<acc_t, kMapping>;
  __shared__ typename Team::Storage team_storage;
  const int64_t C = a.x.ix.num_classes;
  const int64_t x_stride = a.x.ix.class_stride;
  const int64_t q_stride = a.q.ix.class_stride;
  const int64_t g_stride = a.grad.ix.class_stride;
  const int64_t gq_stride = a.grad_target.ix.class_stride;
  const T* x = static_cast<const T*>(a.x.data);
  const T* q = static_cast<const T*>(a.q.data);
  T* grad = static_cast<T*>(a.grad.data);
  T* grad_q = static_cast<T*>(a.grad_target.data);
  const ClassWeights<T> w = class_weights<T>(a.weight, a.weight_narrow);
  const acc_t* lse = static_cast<const acc_t*>(a.lse);
  const LossConstants<acc_t> k = loss_constants<acc_t>(a.weight_sum, a.label_smoothing, C);
  const acc_t shared_scale = uniform_scale<acc_t>(a.scale, a.reduction);

  for (int64_t group = blockIdx.x; group < plan.groups; group += plan.grid) {
    const Slot s = slot_of(plan, group, static_cast<int>(threadIdx.x));
    const bool in_range = s.row < plan.num_rows;
    const T* q_row = q + (in_range ? row_start(a.q.ix, s.row) : 0);
    // Pass 1 over q: sum_c w_c q_c.
    acc_t swq = acc_t(0);
    const RowSpan q_span = row_span(address_of(q_row), in_range ? C : 0, q_stride, sizeof(T));
    auto add_q = [&](int64_t c, acc_t qc) { swq += prob_swq_element(w, c, qc); };
    for_each_unit(
        q_span, s.lane, plan.team, [&](int64_t c) { add_q(c, to_acc(q_row[c * q_stride])); },
        [&](int64_t c0) {
          const Pack<T> qp = load_pack(q_row + c0);
#pragma unroll
          for (int j = 0; j < V; ++j) add_q(c0 + j, to_acc(qp.v[j]));
        });
    swq = Team::sum(swq, plan.team, team_storage);
    if (!in_range) continue;

    // Pass 2: the gradients.
    const ProbGradRow<acc_t, ClassWeights<T>> g{
        k, w, prob_row_mass(k, swq), row_scale<acc_t>(a.scale, shared_scale, s.row), load_row_lse(lse, s.row)};
    const T* row = x + row_start(a.x.ix, s.row);
    T* g_row = grad + row_start(a.grad.ix, s.row);
    T* gq_row = grad_q ? grad_q + row_start(a.grad_target.ix, s.row) : nullptr;
    const RowSpan span = row_span(address_of(row), C, x_stride, sizeof(T));
    const bool q_vec = vector_compatible(span, address_of(row), address_of(q_row), q_stride);
    const bool g_vec = vector_compatible(span, address_of(row), address_of(g_row), g_stride);
    const bool gq_vec = gq_row && vector_compatible(span, address_of(row), address_of(gq_row), gq_stride);
    const RowLoader<T, true> load{row, x_stride, q_row, q_stride, q_vec};
    auto grads = [&](int64_t c, acc_t xc, acc_t qc, T& gx, T& gq) {
      gx = from_acc<T>(g.dx(c, xc, qc));
      gq = from_acc<T>(g.dq(c, xc));
    };
    for_each_unit(
        span, s.lane, plan.team,
        [&](int64_t c) {
          acc_t xc, qc;
          load.scalar(c, xc, qc);
          T gx, gq;
          grads(c, xc, qc, gx, gq);
          g_row[c * g_stride] = gx;
          if (gq_row) gq_row[c * gq_stride] = gq;
        },
        [&](int64_t c0) {
          acc_t xs[V], qs[V];
          load.vector(c0, xs, qs);
          Pack<T> gx, gq;
#pragma unroll
          for (int j = 0; j < V; ++j) grads(c0 + j, xs[j], qs[j], gx.v[j], gq.v[j]);
          store_results(g_row, g_stride, g_vec, c0, gx);
          if (gq_row) store_results(gq_row, gq_stride, gq_vec, c0, gq);
        });
  }
}

}  // namespace

cudaError_t index_backward_launch(const IndexBackward& a, cudaStream_t stream) {
  const LaunchPlan plan = plan_for(a.x.ix, elem_bytes(a.dtype), Split::kAllowed);
  if (plan.grid == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    VL_LAUNCH(dim3(static_cast<unsigned>(plan.grid)), kThreads, 0, stream, index_backward_kernel<T>)(a, plan);
    return cudaGetLastError();
  });
}

cudaError_t prob_backward_launch(const ProbBackward& a, cudaStream_t stream) {
  const LaunchPlan plan = plan_for(a.x.ix, elem_bytes(a.dtype), Split::kNo);
  if (plan.grid == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(plan.grid));
    switch (plan.mapping) {
      case kBlockRow:
        VL_LAUNCH(grid, kThreads, 0, stream, prob_backward_kernel<T, kBlockRow>)(a, plan);
        break;
      case kTiledRows:
        VL_LAUNCH(grid, kThreads, 0, stream, prob_backward_kernel<T, kTiledRows>)(a, plan);
        break;
      default:
        VL_LAUNCH(grid, kThreads, 0, stream, prob_backward_kernel<T, kTeamRows>)(a, plan);
    }
    return cudaGetLastError();
  });
}

}  // namespace validated_loss::cuda
