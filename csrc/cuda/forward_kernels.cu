// Forward kernels (class-index and probability targets): one read of the logits per row, the
// target checked in the same pass, per-row loss and lse, per-block totals (then finalize).
// When the plan splits rows' class ranges across blocks (launch_plan.h), the forward kernel
// leaves each (split, row)'s combined lane state in the workspace and split_finish_kernel merges
// them in split order and finishes the rows. Torch-free: fed kernel_api.h's plain structs.
#include "../status.h"
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

// kProb: probability targets (q), else class-index targets (t). An invalid class index is never
// used as an address: its row is not read at all, gets NaN loss and lse, and is counted.
template <typename T, int kMapping, bool kProb>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    forward_kernel(const __grid_constant__ ForwardArgs f, const __grid_constant__ IndexTargetArgs t,
                   const __grid_constant__ View q, const __grid_constant__ LaunchPlan plan) {
  using acc_t = acc_of<T>;
  constexpr int V = Pack<T>::kSize;
  using Team = TeamReduce<acc_t, kMapping>;
  __shared__ typename Team::Storage team_storage;
  __shared__ typename TotalsReduce::TempStorage totals_storage;

  const int64_t C = f.x.ix.num_classes;
  const int64_t x_stride = f.x.ix.class_stride;
  const T* x = static_cast<const T*>(f.x.data);
  const ClassWeights<T> w = class_weights<T>(f.weight, f.weight_narrow);
  const LossConstants<acc_t> k = loss_constants<acc_t>(f.weight_sum, f.label_smoothing, C, f.z_scale, f.softcap);
  const ScanOptions o{kProb || has_smoothing(k), has_smoothing(k), f.check_finite};
  acc_t* lse_out = static_cast<acc_t*>(f.lse);

  // Split rows (class-index targets only): lane 0 leaves the row's state here instead.
  LaneState<acc_t>* partials = split_partials<acc_t>(f.workspace, plan);

  BlockTotals totals = totals_empty();
  for (int64_t item = blockIdx.x; item < plan.items; item += plan.grid) {
    const Item it = item_of(plan, item);
    const Slot s = slot_of(plan, it.group, static_cast<int>(threadIdx.x));
    const bool in_range = s.row < plan.num_rows;
    int64_t y = 0;
    TargetKind kind = kTargetValid;
    if constexpr (!kProb) {
      if (in_range) {
        y = read_target(t, s.row);
        kind = classify_target(y, C, t.ignore_index);
      }
    }
    const bool scan = in_range && kind == kTargetValid;
    const T* row = x + (scan ? row_start(f.x.ix, s.row) : 0);
    const RowSpan span =
        split_span(row_span(address_of(row), scan ? C : 0, x_stride, sizeof(T)), it.split, plan.splits);
    const T* q_row = nullptr;
    bool q_vec = false;
    if constexpr (kProb) {
      q_row = static_cast<const T*>(q.data) + (scan ? row_start(q.ix, s.row) : 0);
      q_vec = vector_compatible(span, address_of(row), address_of(q_row), q.ix.class_stride);
    }
    const RowLoader<T, kProb> load{row, x_stride, q_row, q.ix.class_stride, q_vec, k.softcap};
    // The lane that finishes the row loads the target logit now, so its latency hides behind the
    // scan's instead of following the reduction.
    [[maybe_unused]] acc_t x_y = acc_t(0);
    if constexpr (!kProb) {
      if (scan && s.lane == 0 && partials == nullptr) x_y = load.logit(row[y * x_stride]);
    }
    const acc_t ref = (scan && o.need_sums && C > 0) ? row_reference(load.logit(row[0])) : acc_t(0);
    LaneState<acc_t> st = scan_lane<acc_t, V>(span, s.lane, plan.team, load, w, ref, o);
    st = Team::all(st, plan.team, team_storage);
    // Probability rows whose shifted sums are NaN where torch's loss is +inf are summed again,
    // term by term (prob_row_needs_terms). Every lane of a team holds the same combined state, so
    // the decision is the team's; the block votes so that the second reduction runs in every
    // thread (its shuffles and barriers need the whole warp and block).
    [[maybe_unused]] acc_t term_loss = acc_t(0);
    [[maybe_unused]] bool by_terms = false;
    if constexpr (kProb) {
      const RowLse<acc_t> lse = row_lse(st.lse);
      by_terms = scan && C > 0 && prob_row_needs_terms(prob_row_loss(k, lse, ref, st.sums), lse);
      if (__syncthreads_or(by_terms)) {
        LaneState<acc_t> terms = lane_empty<acc_t>();
        if (by_terms) {
          auto add = [&](int64_t c, acc_t xc, acc_t qc) {
            terms.sums.swd += prob_loss_term(k, w ? w[c] : acc_t(1), qc, lse, xc);
          };
          for_each_unit(
              span, s.lane, plan.team,
              [&](int64_t c) {
                acc_t xc, qc;
                load.scalar(c, xc, qc);
                add(c, xc, qc);
              },
              [&](int64_t c0) {
                acc_t xs[V], qs[V];
                load.vector(c0, xs, qs);
                VL_UNROLL
                for (int j = 0; j < V; ++j) add(c0 + j, xs[j], qs[j]);
              });
        }
        term_loss = Team::all(terms, plan.team, team_storage).sums.swd;
      }
    }

    if (in_range && s.lane == 0) {
      RowOut<acc_t> out;
      if constexpr (kProb) {
        out = prob_row_finish(k, s.row, ref, st, totals, by_terms, term_loss);
      } else {
        if (partials != nullptr) {
          partials[it.split * plan.num_rows + s.row] = st;
          continue;
        }
        const bool valid = kind == kTargetValid;
        const acc_t w_y = (valid && w) ? w[y] : acc_t(1);
        out = index_row_finish(k, s.row, kind, y, x_y, w_y, ref, st, totals);
      }
      store_row_lse(lse_out, s.row, out.lse);
      if (f.loss_rows) store_row_loss<T>(f, s.row, out.loss);
    }
  }
  if (partials != nullptr) return;  // split_finish_kernel has the totals
  const BlockTotals merged = TotalsReduce(totals_storage).Reduce(totals, MergeTotals());
  if (threadIdx.x == 0) static_cast<BlockTotals*>(f.workspace)[blockIdx.x] = merged;
}

// Split rows: each row's split states merged in split order, then finished as forward_kernel
// finishes a whole row (a thread per row: the merge is `splits` loads, the rest one row's worth).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    split_finish_kernel(const __grid_constant__ ForwardArgs f, const __grid_constant__ IndexTargetArgs t,
                        const __grid_constant__ LaunchPlan split_plan, const __grid_constant__ LaunchPlan plan) {
  using acc_t = acc_of<T>;
  __shared__ typename TotalsReduce::TempStorage totals_storage;
  const int64_t C = f.x.ix.num_classes;
  const int64_t x_stride = f.x.ix.class_stride;
  const T* x = static_cast<const T*>(f.x.data);
  const ClassWeights<T> w = class_weights<T>(f.weight, f.weight_narrow);
  const LossConstants<acc_t> k = loss_constants<acc_t>(f.weight_sum, f.label_smoothing, C, f.z_scale, f.softcap);
  const LaneState<acc_t>* partials = split_partials<acc_t>(f.workspace, split_plan);
  acc_t* lse_out = static_cast<acc_t*>(f.lse);

  BlockTotals totals = totals_empty();
  for (int64_t group = blockIdx.x; group < plan.groups; group += plan.grid) {
    const int64_t r = slot_of(plan, group, static_cast<int>(threadIdx.x)).row;
    if (r >= plan.num_rows) continue;
    const int64_t y = read_target(t, r);
    const TargetKind kind = classify_target(y, C, t.ignore_index);
    LaneState<acc_t> st = partials[r];
    for (int64_t sp = 1; sp < split_plan.splits; ++sp) st = lane_combine(st, partials[sp * plan.num_rows + r]);
    acc_t x_y = acc_t(0), w_y = acc_t(1), ref = acc_t(0);
    if (kind == kTargetValid) {
      const T* row = x + row_start(f.x.ix, r);
      const RowLoader<T, false> load{row, x_stride, nullptr, 0, false, k.softcap};
      x_y = load.logit(row[y * x_stride]);
      if (w) w_y = w[y];
      if (has_smoothing(k) && C > 0) ref = row_reference(load.logit(row[0]));
    }
    const RowOut<acc_t> out = index_row_finish(k, r, kind, y, x_y, w_y, ref, st, totals);
    store_row_lse(lse_out, r, out.lse);
    if (f.loss_rows) store_row_loss<T>(f, r, out.loss);
  }
  const BlockTotals merged = TotalsReduce(totals_storage).Reduce(totals, MergeTotals());
  if (threadIdx.x == 0) static_cast<BlockTotals*>(f.workspace)[blockIdx.x] = merged;
}

template <typename T, bool kProb>
void launch_forward_kernel(const LaunchPlan& plan, const ForwardArgs& f, const IndexTargetArgs& t, const View& q,
                           cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.grid));
  switch (plan.mapping) {
    case kBlockRow:
      VL_LAUNCH(grid, kThreads, 0, stream, forward_kernel<T, kBlockRow, kProb>)(f, t, q, plan);
      break;
    case kTiledRows:
      VL_LAUNCH(grid, kThreads, 0, stream, forward_kernel<T, kTiledRows, kProb>)(f, t, q, plan);
      break;
    default:
      VL_LAUNCH(grid, kThreads, 0, stream, forward_kernel<T, kTeamRows, kProb>)(f, t, q, plan);
  }
}

template <bool kProb>
cudaError_t launch_forward(const ForwardArgs& f, const IndexTargetArgs& t, const View& q, cudaStream_t stream) {
  const LaunchPlan plan = forward_plan(f.x.ix, elem_bytes(f.dtype), kProb);
  const LaunchPlan finish = row_plan(plan.num_rows);
  if (plan.grid > 0) {
    const cudaError_t err = dispatch_dtype(f.dtype, [&](auto tag) {
      using T = decltype(tag);
      launch_forward_kernel<T, kProb>(plan, f, t, q, stream);
      if constexpr (!kProb) {
        if (plan.splits > 1) {
          const cudaError_t launched = cudaGetLastError();
          if (launched != cudaSuccess) return launched;
          VL_LAUNCH(dim3(static_cast<unsigned>(finish.grid)), kThreads, 0, stream, split_finish_kernel<T>)(f, t, plan,
                                                                                                           finish);
        }
      }
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return err;
  }
  return finalize_launch(f, plan.splits > 1 ? finish.grid : plan.grid, kProb, plan.num_rows, stream);
}

}  // namespace

int64_t forward_workspace_bytes(DType dtype, const RowIndexer& x, bool prob) {
  const LaunchPlan plan = forward_plan(x, elem_bytes(dtype), prob);
  const int64_t state_bytes = dtype == DType::kDouble ? sizeof(LaneState<double>) : sizeof(LaneState<float>);
  return split_partials_offset(plan) + (plan.splits > 1 ? plan.splits * plan.num_rows * state_bytes : 0);
}

cudaError_t index_forward_launch(const IndexForward& a, cudaStream_t stream) {
  return launch_forward<false>(a.f, a.t, View{nullptr, {}}, stream);
}

cudaError_t prob_forward_launch(const ProbForward& a, cudaStream_t stream) {
  return launch_forward<true>(a.f, IndexTargetArgs{nullptr, false, 0}, a.q, stream);
}

}  // namespace validated_loss::cuda
