// Deferred validation's process-wide state, shared by every backend (GPU-free): the status queue,
// the graph slots, call numbers and the origin the Python layer names a call with. The CUDA side
// (deferred_cuda.cu) fills the queue and the slots; checks raise through raise_for_status.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>

#include "call_origin.h"
#include "deferred_queue.h"
#include "graph_slots.h"

namespace validated_loss {

StatusQueue& status_queue();
GraphSlots& graph_slots();

// The next call number, with what the error message will need.
CallSite new_call_site(at::IntArrayRef target_sizes, int64_t num_classes, int64_t ignore_index,
                       at::IntArrayRef logits_sizes, std::string origin);

// Checks queued and graph slots watched (0: nothing to look at).
size_t pending_checks();
void clear_checks();

// Raises the first error an earlier call's status shows, if it has reached the host; never waits.
// Everything else queued is dropped with it (the first error is the one to fix).
void raise_deferred_errors();

}  // namespace validated_loss
