// Combining the lanes of a row's team (launch_plan.h): warp shuffles for a team of <= 32 lanes,
// CUB BlockReduce for a block per row, shared memory for a tile's warps (kTiledRows). `all`
// combines whole lane states (the forward); `sum` one value (the probability backward's
// sum_c w_c q_c), so it moves one register instead of six. Every thread of the block calls these, uniformly (rows past
// the end take part with empty states), and every thread gets the row's combined state. The order
// of combination is fixed, so results are reproducible.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "launch_plan.h"
#include "row_scan.h"

namespace validated_loss::cuda {

struct CombineLanes {
  template <typename acc_t>
  __device__ __forceinline__ LaneState<acc_t> operator()(const LaneState<acc_t>& a, const LaneState<acc_t>& b) const {
    return lane_combine(a, b);
  }
};

struct MergeTotals {
  __device__ __forceinline__ BlockTotals operator()(const BlockTotals& a, const BlockTotals& b) const {
    return totals_merge(a, b);
  }
};

template <typename acc_t>
__device__ __forceinline__ LaneState<acc_t> shfl_xor_state(const LaneState<acc_t>& s, int offset) {
  constexpr unsigned kAll = 0xffffffffu;
  LaneState<acc_t> o;
  o.lse.max = __shfl_xor_sync(kAll, s.lse.max, offset);
  o.lse.sum = __shfl_xor_sync(kAll, s.lse.sum, offset);
  o.sums.swd = __shfl_xor_sync(kAll, s.sums.swd, offset);
  o.sums.swq = __shfl_xor_sync(kAll, s.sums.swq, offset);
  o.sums.swqd = __shfl_xor_sync(kAll, s.sums.swqd, offset);
  o.bad_class = static_cast<int64_t>(__shfl_xor_sync(kAll, static_cast<long long>(s.bad_class), offset));
  return o;
}

template <typename acc_t, int kMapping>
struct TeamReduce;

// A team of `team` (power of two <= 32) adjacent lanes of a warp: butterfly, lower lane's state
// first, so every lane computes bit-identical results.
template <typename acc_t>
struct TeamReduce<acc_t, kTeamRows> {
  struct Storage {};
  __device__ __forceinline__ static LaneState<acc_t> all(LaneState<acc_t> st, int team, Storage&) {
    const int lane = threadIdx.x % kWarpSize;
    for (int offset = team / 2; offset > 0; offset /= 2) {
      const LaneState<acc_t> other = shfl_xor_state(st, offset);
      st = (lane & offset) ? lane_combine(other, st) : lane_combine(st, other);
    }
    return st;
  }
  __device__ __forceinline__ static acc_t sum(acc_t v, int team, Storage&) {
    const int lane = threadIdx.x % kWarpSize;
    for (int offset = team / 2; offset > 0; offset /= 2) {
      const acc_t other = __shfl_xor_sync(0xffffffffu, v, offset);
      v = (lane & offset) ? other + v : v + other;
    }
    return v;
  }
};

template <typename acc_t>
struct TeamReduce<acc_t, kBlockRow> {
  using Reduce = cub::BlockReduce<LaneState<acc_t>, kThreads>;
  using SumReduce = cub::BlockReduce<acc_t, kThreads>;
  struct Storage {
    union {
      typename Reduce::TempStorage temp;
      typename SumReduce::TempStorage sum_temp;
    };
    LaneState<acc_t> result;
    acc_t sum_result;
  };
  __device__ __forceinline__ static LaneState<acc_t> all(LaneState<acc_t> st, int /*team*/, Storage& s) {
    const LaneState<acc_t> r = Reduce(s.temp).Reduce(st, CombineLanes());
    if (threadIdx.x == 0) s.result = r;
    __syncthreads();
    st = s.result;
    __syncthreads();  // all have read before the storage is used again
    return st;
  }
  __device__ __forceinline__ static acc_t sum(acc_t v, int /*team*/, Storage& s) {
    const acc_t r = SumReduce(s.sum_temp).Sum(v);
    if (threadIdx.x == 0) s.sum_result = r;
    __syncthreads();
    v = s.sum_result;
    __syncthreads();
    return v;
  }
};

// A tile: thread t holds lane t / rows of row t % rows (launch_plan.h's slot_of). Each thread
// publishes its state, then folds its row's lanes in lane order (every thread of a row gets the
// same bits; the fold is `team` = 8 steps, cheaper than a second round of barriers).
template <typename acc_t>
struct TeamReduce<acc_t, kTiledRows> {
  union Storage {
    LaneState<acc_t> states[kThreads];
    acc_t values[kThreads];
  };
  __device__ __forceinline__ static LaneState<acc_t> all(LaneState<acc_t> st, int team, Storage& s) {
    const int rows = kThreads / team;
    const int row = static_cast<int>(threadIdx.x) % rows;
    s.states[threadIdx.x] = st;
    __syncthreads();
    st = s.states[row];
    for (int lane = 1; lane < team; ++lane) st = lane_combine(st, s.states[lane * rows + row]);
    __syncthreads();
    return st;
  }
  __device__ __forceinline__ static acc_t sum(acc_t v, int team, Storage& s) {
    const int rows = kThreads / team;
    const int row = static_cast<int>(threadIdx.x) % rows;
    s.values[threadIdx.x] = v;
    __syncthreads();
    v = s.values[row];
    for (int lane = 1; lane < team; ++lane) v += s.values[lane * rows + row];
    __syncthreads();
    return v;
  }
};

// The block's totals, merged into thread 0's return value.
using TotalsReduce = cub::BlockReduce<BlockTotals, kThreads>;

}  // namespace validated_loss::cuda
