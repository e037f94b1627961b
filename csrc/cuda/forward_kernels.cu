// Forward kernels (class-index and probability targets): one read of the logits per row, the
// target checked in the same pass, per-row loss and lse, per-block totals (then finalize).
// Torch-free: fed kernel_api.h's plain structs.
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
  const acc_t* w = static_cast<const acc_t*>(f.weight);
  const LossConstants<acc_t> k = loss_constants<acc_t>(f.weight_sum, f.label_smoothing, C, f.z_scale, f.softcap);
  const ScanOptions o{kProb || has_smoothing(k), has_smoothing(k), f.check_finite};
  acc_t* lse_out = static_cast<acc_t*>(f.lse);

  BlockTotals totals = totals_empty();
  for (int64_t group = blockIdx.x; group < plan.groups; group += plan.grid) {
    const Slot s = slot_of(plan, group, static_cast<int>(threadIdx.x));
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
    const RowSpan span = row_span(address_of(row), scan ? C : 0, x_stride, sizeof(T));
    const T* q_row = nullptr;
    bool q_vec = false;
    if constexpr (kProb) {
      q_row = static_cast<const T*>(q.data) + (scan ? row_start(q.ix, s.row) : 0);
      q_vec = vector_compatible(span, address_of(row), address_of(q_row), q.ix.class_stride);
    }
    const RowLoader<T, kProb> load{row, x_stride, q_row, q.ix.class_stride, q_vec, k.softcap};
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
          auto add = [&](int64_t c, acc_t xc, acc_t qc) { terms.sums.swd += prob_loss_term(k, w ? w[c] : acc_t(1), qc, lse, xc); };
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
        const bool valid = kind == kTargetValid;
        const acc_t x_y = valid ? load.logit(row[y * x_stride]) : acc_t(0);
        const acc_t w_y = (valid && w) ? w[y] : acc_t(1);
        out = index_row_finish(k, s.row, kind, y, x_y, w_y, ref, st, totals);
      }
      store_row_lse(lse_out, s.row, out.lse);
      if (f.loss_rows) store_row_loss<T>(f, s.row, out.loss);
    }
  }
  const BlockTotals merged = TotalsReduce(totals_storage).Reduce(totals, MergeTotals());
  if (threadIdx.x == 0) static_cast<BlockTotals*>(f.workspace)[blockIdx.x] = merged;
}

template <bool kProb>
cudaError_t launch_forward(const ForwardArgs& f, const IndexTargetArgs& t, const View& q, cudaStream_t stream) {
  const LaunchPlan plan = plan_for(f.x.ix, elem_bytes(f.dtype));
  if (plan.grid > 0) {
    const cudaError_t err = dispatch_dtype(f.dtype, [&](auto tag) {
      using T = decltype(tag);
      const dim3 grid(static_cast<unsigned>(plan.grid));
      if (plan.mapping == kBlockRow) {
        VL_LAUNCH(grid, kThreads, 0, stream, forward_kernel<T, kBlockRow, kProb>)(f, t, q, plan);
      } else {
        VL_LAUNCH(grid, kThreads, 0, stream, forward_kernel<T, kTeamRows, kProb>)(f, t, q, plan);
      }
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return err;
  }
  return finalize_launch(f, plan.grid, kProb, plan.num_rows, stream);
}

}  // namespace

cudaError_t index_forward_launch(const IndexForward& a, cudaStream_t stream) {
  return launch_forward<false>(a.f, a.t, View{nullptr, {}}, stream);
}

cudaError_t prob_forward_launch(const ProbForward& a, cudaStream_t stream) {
  return launch_forward<true>(a.f, IndexTargetArgs{nullptr, false, 0}, a.q, stream);
}

}  // namespace validated_loss::cuda
