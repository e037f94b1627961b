// Force-included (-include) before every source of the emulated build: turns CUDA C++'s keywords
// into host C++ and brings in the emulated device API and runtime, so the project's .cu files
// compile unchanged as host C++ (the launch syntax goes through cuda/launch.cuh's VL_LAUNCH).
// The build also puts csrc/cuda_emu/include first on the include path: <cuda_runtime_api.h>,
// <cuda_fp16.h>, <cuda_bf16.h> and <cub/block/block_reduce.cuh> resolve to the emulation.
#pragma once

#define VALIDATED_LOSS_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __grid_constant__
// Per OS thread, and one OS thread runs one block at a time: per block, as on the GPU.
#define __shared__ static thread_local
#define __align__(n) alignas(n)

#include "runtime.h"
