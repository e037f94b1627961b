#include "deferred_queue.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "status_slot.h"

namespace validated_loss {

const char* const kCompiledOrigin = "inside a torch.compile graph, where validate='sync' is deferred too";

std::string deferred_note(const FoundError& found) {
  const std::string call = "call #" + std::to_string(found.site.call) + " (" + found.site.origin + ")";
  if (found.in_graph) {
    return "\n(found by deferred validation in a replay of the CUDA graph that captured the loss of " + call +
           "; raised at the next loss call, backward or validated_loss.check_deferred())";
  }
  return "\n(found by deferred validation in the loss of " + call + "; raised at the next loss call or backward)";
}

void StatusQueue::push(PendingStatus pending) {
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.push_back(std::move(pending));
}

std::optional<FoundError> StatusQueue::take_first_error() {
  std::deque<PendingStatus> dropped;  // destroyed after the lock is released (they may free events)
  std::optional<FoundError> found;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (!it->landed()) {
        ++it;
        continue;
      }
      if (status_has_error(it->host.get())) {
        found = FoundError{{}, std::move(it->site), false};
        std::copy(it->host.get(), it->host.get() + kStatusSize, found->status.begin());
        std::move(pending_.begin(), pending_.end(), std::back_inserter(dropped));
        pending_.clear();
        break;
      }
      dropped.push_back(std::move(*it));
      it = pending_.erase(it);
    }
  }
  return found;
}

size_t StatusQueue::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

void StatusQueue::clear() {
  std::deque<PendingStatus> dropped;
  std::lock_guard<std::mutex> lock(mutex_);
  dropped.swap(pending_);
}

}  // namespace validated_loss
