#include "graph_slots.h"

#include <utility>

#include "status_slot.h"

namespace validated_loss {

bool take_published(int64_t* slot, int64_t* record_out) {
  if (__atomic_load_n(&slot[kSlotPublished], __ATOMIC_ACQUIRE) == 0) return false;
  for (int i = 0; i < kStatusSize; ++i) record_out[i] = __atomic_load_n(&slot[i], __ATOMIC_RELAXED);
  // The record is copied out before the device may write the next one.
  __atomic_store_n(&slot[kSlotPublished], int64_t{0}, __ATOMIC_RELEASE);
  return true;
}

void GraphSlots::watch(GraphSite site) {
  std::lock_guard<std::mutex> lock(mutex_);
  sites_.push_back(std::move(site));
}

std::optional<SlotRef> GraphSlots::take_free_slot() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_.empty()) return std::nullopt;
  const SlotRef slot = free_.back();
  free_.pop_back();
  return slot;
}

void GraphSlots::add_free_slots(const std::vector<SlotRef>& fresh) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_.insert(free_.end(), fresh.begin(), fresh.end());
}

std::optional<FoundError> GraphSlots::take_first_error() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::optional<FoundError> found;
  std::vector<GraphSite> kept;
  for (GraphSite& g : sites_) {
    // graph_alive is loaded before the slot is read: once it is false no replay writes any more,
    // so this read sees the last record (still reported), and the slot can be recycled.
    const bool alive = g.graph_alive->load(std::memory_order_acquire);
    std::array<int64_t, kStatusSize> record;
    if (take_published(g.slot.host, record.data()) && !found && status_has_error(record.data())) {
      found = FoundError{record, g.site, true};
    }
    if (alive) {
      kept.push_back(std::move(g));
    } else {
      free_.push_back(g.slot);  // no replay can write it any more
    }
  }
  sites_ = std::move(kept);
  return found;
}

size_t GraphSlots::watched() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sites_.size();
}

size_t GraphSlots::needing_check() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t n = 0;
  for (const GraphSite& g : sites_) {
    n += !g.graph_alive->load(std::memory_order_acquire) ||
         __atomic_load_n(&g.slot.host[kSlotPublished], __ATOMIC_ACQUIRE) != 0;
  }
  return n;
}

void GraphSlots::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::array<int64_t, kStatusSize> discarded;
  for (GraphSite& g : sites_) take_published(g.slot.host, discarded.data());
}

}  // namespace validated_loss
