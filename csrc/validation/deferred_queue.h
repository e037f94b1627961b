// Deferred validation, host side: forwards' status records on their way to the host, checked
// without waiting for the device.
//
// The queue lives in C++ (not in the Python layer) because under torch.compile the Python code
// around the op runs once, at trace time: the op itself queues its status and checks the queue
// at the next call. Torch-free and GPU-free: whether a copy has landed is a callback (a CUDA event
// query in the ops, a flag in tests/deferred_test.cpp), so these rules run on the CPU:
//   * an entry stays queued until its copy has landed; a clean one then just leaves;
//   * a check never waits: it looks at the landed entries only;
//   * the first error (in queue order) among them is the one reported, and everything queued is
//     dropped with it (later errors would repeat it, and the user is about to fix the data).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../status.h"

namespace validated_loss {

// What raise_for_status needs to word a forward's error, and which call it was.
struct CallSite {
  std::vector<int64_t> target_sizes;
  int64_t num_classes = 0;
  int64_t ignore_index = -100;
  std::vector<int64_t> logits_sizes;
  int64_t call = 0;    // "call #N": numbered in the order checks were queued, from 1
  std::string origin;  // the caller's file:line, or what ran it (see deferred.cpp)
};

// A bad status record, taken off the queue (or out of a graph slot) to be raised.
struct FoundError {
  std::array<int64_t, kStatusSize> status;
  CallSite site;
  bool in_graph = false;  // found by a replay of a captured CUDA graph
};

// One forward's status on its way to the host.
struct PendingStatus {
  std::shared_ptr<const int64_t> host;  // kStatusSize values, readable once landed() is true
  std::function<bool()> landed;         // non-blocking; may keep the copy's buffer and event alive
  CallSite site;
};

// The line appended to raise_for_status's message for an error found this way: which call, where
// it came from, and when it is raised. Written once, for the queue and the graph slots.
std::string deferred_note(const FoundError& found);

// The origin of a call the Python layer did not name: one made inside a compiled graph.
extern const char* const kCompiledOrigin;

class StatusQueue {
 public:
  void push(PendingStatus pending);
  // Retires the entries whose copies have landed and returns the first error among them, if any,
  // after dropping everything queued. Never waits.
  std::optional<FoundError> take_first_error();
  size_t size() const;
  void clear();

 private:
  mutable std::mutex mutex_;
  std::deque<PendingStatus> pending_;
};

}  // namespace validated_loss
