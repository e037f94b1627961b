// A status slot: where the replays of a captured CUDA graph leave a bad status record for the host.
//
// A captured forward cannot copy its status to the host outside the graph, and an event query
// cannot tell which replay a slot's contents came from. So the graph itself publishes: after the
// forward, one device thread runs publish_status on a slot in mapped pinned host memory, and the
// host takes what was published (graph_slots.cpp) whenever it checks. The hand-off needs no event
// and no copy: a flag word says "this record is complete and unread".
//   device: writes only while the flag is 0 (record first, system-wide fence, then the flag);
//   host:   reads only while the flag is 1 (flag, then record), then clears the flag.
// So each side owns the record while the flag has its value, and the first bad replay since the
// host's last look is the one kept (later ones would repeat it).
//
// Torch-free and host-compilable: the CPU tests run publish_status on the host.
#pragma once

#include <atomic>
#include <cstdint>

#include "../status.h"

#if defined(__CUDACC__)
#define SLOT_HD __host__ __device__ __forceinline__
#else
#define SLOT_HD inline
#endif

namespace validated_loss {

constexpr int kSlotPublished = kStatusSize;  // nonzero: the record before it is complete and unread
constexpr int kSlotWords = 8;                // one 64-byte line per slot (record, flag, padding)

SLOT_HD bool status_has_error(const int64_t* status) {
  return status[kStatusInvalidCount] > 0 || status[kStatusNonFiniteCount] > 0;
}

// The record's writes become visible to the host before the flag's.
SLOT_HD void slot_release_fence() {
#if defined(__CUDA_ARCH__)
  __threadfence_system();
#else
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

// Device side, one thread, ordered after the forward on its stream. A clean status publishes
// nothing; a bad one only when the slot holds no unread record.
SLOT_HD void publish_status(volatile int64_t* slot, const int64_t* status) {
  if (!status_has_error(status) || slot[kSlotPublished] != 0) return;
  for (int i = 0; i < kStatusSize; ++i) slot[i] = status[i];
  slot_release_fence();
  slot[kSlotPublished] = 1;
}

}  // namespace validated_loss
