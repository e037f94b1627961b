#include "deferred.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <utility>

#include <torch/library.h>

#include "../op_common.h"
#include "../status.h"

namespace validated_loss {

StatusQueue& status_queue() {
  static StatusQueue queue;
  return queue;
}

GraphSlots& graph_slots() {
  static GraphSlots slots;
  return slots;
}

namespace {

thread_local std::string next_origin;
std::atomic<int64_t> calls_queued{0};

}  // namespace

void set_call_origin(std::string origin) {
  next_origin = std::move(origin);
}

std::string take_call_origin() {
  std::string origin = std::move(next_origin);
  next_origin.clear();
  return origin.empty() ? std::string(kCompiledOrigin) : origin;
}

CallSite new_call_site(at::IntArrayRef target_sizes, int64_t num_classes, int64_t ignore_index,
                       at::IntArrayRef logits_sizes, std::string origin) {
  return CallSite{target_sizes.vec(), num_classes, ignore_index, logits_sizes.vec(), ++calls_queued, std::move(origin)};
}

size_t pending_checks() {
  return status_queue().size() + graph_slots().needing_check();
}

void clear_checks() {
  status_queue().clear();
  graph_slots().clear();
}

void raise_deferred_errors() {
  // Only what was examined is dropped: the queue drops its entries itself when it finds an error
  // (under its lock; an entry another thread pushes afterwards stays), and an error found there
  // discards the slots' unread records (they would repeat it). An error found in a slot leaves
  // the queue's not-yet-landed entries for a later check.
  std::optional<FoundError> found = status_queue().take_first_error();
  if (found) {
    graph_slots().clear();
  } else {
    found = graph_slots().take_first_error();
  }
  if (!found) return;
  const CallSite& site = found->site;
  raise_for_status(found->status.data(), site.target_sizes, site.num_classes, site.ignore_index, site.logits_sizes,
                   deferred_note(*found));
}

namespace {

#if !defined(VALIDATED_LOSS_CUDA_EMU)
// A status record computed on the CPU (linear_cross_entropy's target check of a CPU target in
// tests, or any host-made record): it has landed already.
void deferred_submit_cpu(const at::Tensor& status, c10::SymIntArrayRef target_shape, int64_t num_classes,
                         int64_t ignore_index, c10::SymIntArrayRef logits_shape) {
  std::string origin = take_call_origin();
  TORCH_CHECK(status.numel() == kStatusSize && status.scalar_type() == at::kLong,
              "validated_loss: a status record is int64[", kStatusSize, "]");
  auto host = std::make_shared<std::array<int64_t, kStatusSize>>();
  const at::Tensor s = status.contiguous();
  std::copy(s.const_data_ptr<int64_t>(), s.const_data_ptr<int64_t>() + kStatusSize, host->begin());
  status_queue().push(PendingStatus{std::shared_ptr<const int64_t>(host, host->data()), [] { return true; },
                                    new_call_site(C10_AS_INTARRAYREF_SLOW(target_shape), num_classes, ignore_index,
                                                  C10_AS_INTARRAYREF_SLOW(logits_shape), std::move(origin))});
}
#endif

}  // namespace

#if !defined(VALIDATED_LOSS_CUDA_EMU)  // the emulated-CUDA build serves CPU tensors with deferred_cuda.cu's
TORCH_LIBRARY_IMPL(validated_loss, CPU, m) {
  m.impl("deferred_submit", &deferred_submit_cpu);
}
#endif

// No tensor argument: one kernel for every backend.
TORCH_LIBRARY_IMPL(validated_loss, CompositeExplicitAutograd, m) {
  m.impl("check_deferred", &raise_deferred_errors);
}

}  // namespace validated_loss
