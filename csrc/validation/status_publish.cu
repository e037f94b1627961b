// The kernel a captured forward adds to its graph: the status record's hand-off to the host
// (status_slot.h says how the slot is shared). One thread: six words.
#include "status_publish.h"

#include "../cuda/launch.cuh"
#include "status_slot.h"

namespace validated_loss::cuda {
namespace {

__global__ void publish_status_kernel(const int64_t* status, int64_t* slot) {
  publish_status(slot, status);
}

}  // namespace

cudaError_t publish_status_launch(const int64_t* status, int64_t* slot, cudaStream_t stream) {
  VL_LAUNCH(1, 1, 0, stream, publish_status_kernel)(status, slot);
  return cudaGetLastError();
}

}  // namespace validated_loss::cuda
