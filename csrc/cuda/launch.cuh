// The kernel launch and dynamic shared memory, written once for both builds of the kernel source:
// nvcc's <<<>>> on a GPU, the CUDA emulation's launch (csrc/cuda_emu/runtime.h) in the CPU build
// that executes the same kernels.
//   VL_LAUNCH(grid, block, shared_bytes, stream, kernel<...>)(args...);
//   VL_DYNAMIC_SHARED(T, name);   // T* name: the launch's dynamic shared memory
#pragma once

#if defined(VALIDATED_LOSS_CUDA_EMU)
#define VL_LAUNCH(grid, block, shared, stream, ...) \
  ::vl_emu::Launch(dim3(grid), dim3(block), shared, stream, #__VA_ARGS__, __FILE__, __LINE__).kernel(&__VA_ARGS__)
#define VL_DYNAMIC_SHARED(T, name) VL_EMU_DYNAMIC_SHARED(T, name)
#else
#define VL_LAUNCH(grid, block, shared, stream, ...) __VA_ARGS__<<<grid, block, shared, stream>>>
#define VL_DYNAMIC_SHARED(T, name)                                         \
  extern __shared__ __align__(16) unsigned char vl_dynamic_shared_bytes[]; \
  T* name = reinterpret_cast<T*>(vl_dynamic_shared_bytes)
#endif
