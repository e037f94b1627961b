// Deferred validation under CUDA-graph capture, host side: the status slots that captured
// forwards publish into at every replay (status_slot.h), and which of them are still watched.
//
// A slot is watched from the capture on, for as long as its graph (or an instance of it) exists:
// the CUDA side ties a flag to the graph's lifetime, and once it drops, the slot is read one last
// time and goes back to the free list. Torch-free and GPU-free (slots are plain host memory to this
// file), so tests/deferred_test.cpp runs every rule here on the CPU.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "deferred_queue.h"

namespace validated_loss {

// One slot (kSlotWords int64) as the host and as the device address it (mapped pinned memory).
struct SlotRef {
  int64_t* host = nullptr;
  int64_t* device = nullptr;
};

struct GraphSite {
  SlotRef slot;
  std::shared_ptr<std::atomic<bool>> graph_alive;  // false once the graph and its instances are gone
  CallSite site;
};

// Host side of the hand-off: copies out a published record and frees the slot for the next one.
bool take_published(int64_t* slot, int64_t* record_out);

class GraphSlots {
 public:
  void watch(GraphSite site);
  // A slot nobody watches (flag 0), if any is free; the CUDA side allocates more when not.
  std::optional<SlotRef> take_free_slot();
  void add_free_slots(const std::vector<SlotRef>& fresh);  // zero-filled slots
  // Reads every watched slot without waiting; returns the first published error (in capture
  // order) and discards the others'. Sites whose graphs are gone are read, then recycled.
  std::optional<FoundError> take_first_error();
  size_t watched() const;
  // Sites a check would act on: a published record to read, or a released graph to recycle. Zero
  // while live graphs replay cleanly, so eager calls then skip the check (pending_checks).
  size_t needing_check() const;
  void clear();  // discards unread records; the sites stay watched

 private:
  mutable std::mutex mutex_;
  std::vector<GraphSite> sites_;
  std::vector<SlotRef> free_;
};

}  // namespace validated_loss
