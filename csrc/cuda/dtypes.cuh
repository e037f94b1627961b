// Element types of the kernels and their conversions to and from the accumulate type.
// Half and bfloat16 are carried as raw bits (torch builds with the CUDA half conversion operators
// disabled, and the kernels need only these four functions). Narrowing rounds to nearest even, as
// c10::Half and c10::BFloat16 do.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernel_api.h"

namespace validated_loss::cuda {

struct alignas(2) HalfBits {
  uint16_t bits;
};
struct alignas(2) BFloat16Bits {
  uint16_t bits;
};

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float to_acc(HalfBits v) {
  return __half2float(__ushort_as_half(v.bits));
}
__device__ __forceinline__ float to_acc(BFloat16Bits v) {
  return __uint_as_float(static_cast<uint32_t>(v.bits) << 16);
}
__device__ __forceinline__ float to_acc(float v) {
  return v;
}
__device__ __forceinline__ double to_acc(double v) {
  return v;
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_of<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ HalfBits from_acc<HalfBits>(float v) {
  return {__half_as_ushort(__float2half_rn(v))};
}
template <>
__device__ __forceinline__ BFloat16Bits from_acc<BFloat16Bits>(float v) {
  return {__bfloat16_as_ushort(__float2bfloat16_rn(v))};
}

// 16 bytes of T: one LDG.E.128 / STG.E.128 (the address is 16-byte aligned by row_span).
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

// Runs `body` with the element type of `dtype` (float, double, HalfBits, BFloat16Bits).
template <typename Body>
inline cudaError_t dispatch_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::kFloat:
      return body(float{});
    case DType::kDouble:
      return body(double{});
    case DType::kHalf:
      return body(HalfBits{});
    case DType::kBFloat16:
      return body(BFloat16Bits{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace validated_loss::cuda
