// Deferred validation under CUDA-graph capture: one thread publishes a bad `status` into `slot`,
// mapped pinned host memory, unless it holds an unread record (status_slot.h). Captured after
// the forward, it runs at every replay.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace validated_loss::cuda {

cudaError_t publish_status_launch(const int64_t* status, int64_t* slot, cudaStream_t stream);

}  // namespace validated_loss::cuda
