// The CUDA C++ that kernel sources see under emulation (force-included by the emulated build, see
// prelude.h): execution-space keywords, the thread and block indices, barriers, warp intrinsics,
// atomics, fences and the 16-byte vector types (with their real alignment, so that
// UndefinedBehaviorSanitizer reports a misaligned vector access as the GPU would fault on it).
// The schedule that runs them is block_run.h's.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "block_run.h"

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(vl_emu::uint3_t v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator vl_emu::uint3_t() const { return {x, y, z}; }
};
using uint3 = vl_emu::uint3_t;

#define threadIdx (::vl_emu::thread_idx())
#define blockIdx (::vl_emu::block_idx())
#define blockDim (::vl_emu::block_dim())
#define gridDim (::vl_emu::grid_dim())
#define warpSize 32

// Dynamic shared memory: `VL_DYNAMIC_SHARED(T, name);` declares T* name (cuda/launch.cuh has the
// nvcc form). The emulation fills it with 0xff bytes at each block's start (NaN for floats).
#define VL_EMU_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::vl_emu::dynamic_shared_memory())

#define VL_EMU_SITE const char *vl_file = __builtin_FILE(), int vl_line = __builtin_LINE()
// clang-format off
#define VL_EMU_HERE ::vl_emu::Site{vl_file, vl_line}
// clang-format on

inline void __syncthreads(VL_EMU_SITE) {
  ::vl_emu::syncthreads(VL_EMU_HERE);
}
inline int __syncthreads_count(int predicate, VL_EMU_SITE) {
  return ::vl_emu::syncthreads(VL_EMU_HERE, predicate);
}
inline int __syncthreads_or(int predicate, VL_EMU_SITE) {
  return ::vl_emu::syncthreads(VL_EMU_HERE, predicate) > 0;
}
inline int __syncthreads_and(int predicate, VL_EMU_SITE) {
  int arrived = 0;
  return ::vl_emu::syncthreads(VL_EMU_HERE, predicate, &arrived) == arrived;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, VL_EMU_SITE) {
  ::vl_emu::warp_op(::vl_emu::WarpOp::kSyncWarp, mask, nullptr, 0, 0, 32, nullptr, VL_EMU_HERE);
}
inline unsigned __activemask() {
  return ::vl_emu::active_mask();
}

namespace vl_emu {
template <typename T>
T shuffle(WarpOp op, unsigned mask, T var, int param, int width, Site site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "warp shuffles move up to 16 bytes");
  T out;
  warp_op(op, mask, &var, sizeof(T), param, width, &out, site);
  return out;
}
inline unsigned vote(WarpOp op, unsigned mask, int predicate, Site site) {
  const int p = predicate != 0;
  unsigned out = 0;
  warp_op(op, mask, &p, sizeof(p), 0, 32, &out, site);
  return out;
}
}  // namespace vl_emu

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, VL_EMU_SITE) {
  return ::vl_emu::shuffle(::vl_emu::WarpOp::kShflIdx, mask, var, src_lane, width, VL_EMU_HERE);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, VL_EMU_SITE) {
  return ::vl_emu::shuffle(::vl_emu::WarpOp::kShflUp, mask, var, static_cast<int>(delta), width, VL_EMU_HERE);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, VL_EMU_SITE) {
  return ::vl_emu::shuffle(::vl_emu::WarpOp::kShflDown, mask, var, static_cast<int>(delta), width, VL_EMU_HERE);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, VL_EMU_SITE) {
  return ::vl_emu::shuffle(::vl_emu::WarpOp::kShflXor, mask, var, lane_mask, width, VL_EMU_HERE);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, VL_EMU_SITE) {
  return ::vl_emu::vote(::vl_emu::WarpOp::kBallot, mask, predicate, VL_EMU_HERE);
}
inline int __any_sync(unsigned mask, int predicate, VL_EMU_SITE) {
  return static_cast<int>(::vl_emu::vote(::vl_emu::WarpOp::kAny, mask, predicate, VL_EMU_HERE));
}
inline int __all_sync(unsigned mask, int predicate, VL_EMU_SITE) {
  return static_cast<int>(::vl_emu::vote(::vl_emu::WarpOp::kAll, mask, predicate, VL_EMU_HERE));
}

// Fences: blocks run on several OS threads, so these are real fences.
inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_block() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_system() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// Atomics (really atomic: blocks run concurrently). Return the old value, as CUDA's.
template <typename T>
T atomicAdd(T* address, T value) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
  } else {
    T old = *address;
    T desired = old + value;
    while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
      desired = old + value;
    }
    return old;
  }
}
template <typename T>
T atomicMax(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_SEQ_CST);
  while (old < value && !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_SEQ_CST);
  while (value < old && !__atomic_compare_exchange_n(address, &old, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
template <typename T>
T atomicExch(T* address, T value) {
  return __atomic_exchange_n(address, value, __ATOMIC_SEQ_CST);
}

// Bit reinterpretation.
template <typename To, typename From>
inline To emu_bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}
inline float __uint_as_float(unsigned v) {
  return emu_bit_cast<float>(v);
}
inline unsigned __float_as_uint(float f) {
  return emu_bit_cast<unsigned>(f);
}
inline float __int_as_float(int v) {
  return emu_bit_cast<float>(v);
}
inline int __float_as_int(float f) {
  return emu_bit_cast<int>(f);
}
inline uint64_t __umul64hi(uint64_t a, uint64_t b) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// Vector types with CUDA's sizes and alignments.
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) longlong2 {
  long long x, y;
};
inline float4 make_float4(float x, float y, float z, float w) {
  return {x, y, z, w};
}
inline int4 make_int4(int x, int y, int z, int w) {
  return {x, y, z, w};
}
