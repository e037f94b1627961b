// What the CUDA ops' host code needs from torch's CUDA runtime, in one place, so that the same op
// code (cross_entropy.cu, validation/deferred_cuda.cu) also runs in the emulated build
// (csrc/cuda_emu), where the ops serve CPU tensors and the kernels execute on the CPU:
//   current_stream()          torch's current CUDA stream / the emulation's per-thread stream
//   DeviceGuard               c10::cuda::CUDAGuard / nothing (one "device")
//   CaptureModeGuard          c10::cuda::CUDAStreamCaptureModeGuard / the same over the emulation
//   copy_to_host_and_sync     c10::cuda::memcpy_and_sync / the emulated copy
//   pinned_status_buffer(n)   n int64 in pinned host memory / plain host memory
//   VL_CUDA_CHECK(_WARN)      C10_CUDA_CHECK(_WARN) / a check that throws the emulation's error
//   VL_CUDA_DISPATCH_KEY      the dispatch key the ops register for: CUDA / CPU
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#if defined(VALIDATED_LOSS_CUDA_EMU)

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define VL_CUDA_DISPATCH_KEY CPU
#define VL_CUDA_CHECK(expr)                                                                         \
  do {                                                                                              \
    const cudaError_t vl_err = (expr);                                                              \
    TORCH_CHECK(vl_err == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(vl_err), " (", \
                static_cast<int>(vl_err), ") from ", #expr);                                        \
  } while (0)
#define VL_CUDA_CHECK_WARN(expr) (void)(expr)

namespace validated_loss::cuda {

inline cudaStream_t current_stream() {
  return vl_emu::current_stream();
}

struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

class CaptureModeGuard {
 public:
  explicit CaptureModeGuard(cudaStreamCaptureMode mode) : previous_(mode) {
    cudaThreadExchangeStreamCaptureMode(&previous_);
  }
  ~CaptureModeGuard() { cudaThreadExchangeStreamCaptureMode(&previous_); }

 private:
  cudaStreamCaptureMode previous_;
};

inline void copy_to_host_and_sync(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  VL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  VL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

inline at::Tensor pinned_status_buffer(int64_t n) {
  return at::empty({n}, at::TensorOptions().dtype(at::kLong));
}

}  // namespace validated_loss::cuda

#else

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

#define VL_CUDA_DISPATCH_KEY CUDA
#define VL_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#define VL_CUDA_CHECK_WARN(expr) C10_CUDA_CHECK_WARN(expr)

namespace validated_loss::cuda {

inline cudaStream_t current_stream() {
  return at::cuda::getCurrentCUDAStream();
}

using DeviceGuard = c10::cuda::CUDAGuard;
using CaptureModeGuard = c10::cuda::CUDAStreamCaptureModeGuard;

inline void copy_to_host_and_sync(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  c10::cuda::memcpy_and_sync(dst, src, bytes, cudaMemcpyDeviceToHost, stream);
}

inline at::Tensor pinned_status_buffer(int64_t n) {
  return at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
}

}  // namespace validated_loss::cuda

#endif
