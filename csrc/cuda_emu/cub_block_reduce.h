// A stand-in for the part of CUB the kernels use: cub::BlockReduce<T, kThreads> (any trivially
// copyable T, any associative operator) with CUB's contract, so that a kernel that breaks the
// contract fails under emulation as it would on a GPU:
//   - every thread of the block must call it (it has a barrier inside);
//   - the aggregate is valid in thread 0 only (the others get their own input back);
//   - temp storage may be reused only after a __syncthreads(): thread 0 reads the other threads'
//     partials after the barrier, so a thread that writes the storage again too early changes the
//     result under some schedule.
// The combination order is fixed (a tree within each warp, then warps in order), so results are
// reproducible; it is not bit-identical to CUB's on a GPU, which no test relies on.
#pragma once

#include <type_traits>

#include "device.h"

namespace cub {

struct Sum {
  template <typename T>
  T operator()(const T& a, const T& b) const {
    return a + b;
  }
};

template <typename T, int kBlockThreads>
class BlockReduce {
  static_assert(std::is_trivially_copyable_v<T>, "BlockReduce stand-in: T must be trivially copyable");

 public:
  struct TempStorage {
    alignas(alignof(T)) unsigned char bytes[sizeof(T) * kBlockThreads];
  };

  explicit BlockReduce(TempStorage& storage) : slots_(reinterpret_cast<T*>(storage.bytes)) {}

  template <typename Op>
  T Reduce(T input, Op op, int num_valid = kBlockThreads) {
    const int tid = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    slots_[tid] = input;
    __syncthreads();
    if (tid != 0) return input;
    T warp_total[(kBlockThreads + 31) / 32];
    int warps = 0;
    for (int w = 0; w * 32 < num_valid; ++w, ++warps) {
      const int lanes = num_valid - w * 32 < 32 ? num_valid - w * 32 : 32;
      T v[32];
      for (int l = 0; l < lanes; ++l) v[l] = slots_[w * 32 + l];
      for (int offset = 16; offset > 0; offset /= 2) {
        for (int l = 0; l + offset < lanes; ++l) {
          if (l < offset) v[l] = op(v[l], v[l + offset]);
        }
      }
      warp_total[w] = v[0];
    }
    T total = warp_total[0];
    for (int w = 1; w < warps; ++w) total = op(total, warp_total[w]);
    return total;
  }

  T Sum(T input) { return Reduce(input, cub::Sum()); }

 private:
  T* slots_;
};

}  // namespace cub
