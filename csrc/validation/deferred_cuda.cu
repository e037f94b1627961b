// Validation's CUDA side (host code): the 'sync' wait, the 'deferred' queue entries and, under
// CUDA-graph capture, the graph status slots. The rules (what is checked when, which error wins)
// are in the torch-free deferred_queue.h and graph_slots.h; this file only gives them CUDA events
// and pinned memory. Nothing here waits for the GPU except 'sync' outside a capture.
#include "validation.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <torch/library.h>

#include "deferred.h"
#include "../op_common.h"
#include "../status.h"
#include "../cuda/device_runtime.h"
#include "status_publish.h"
#include "status_slot.h"

namespace validated_loss::cuda {

bool capturing(cudaStream_t stream);

namespace {

bool current_stream_capturing() {
  return capturing(current_stream());
}

// validate=1 outside a capture: the one wait of 'sync'.
void raise_now(const at::Tensor& status, cudaStream_t stream, at::IntArrayRef target_sizes, int64_t num_classes,
               int64_t ignore_index, at::IntArrayRef logits_sizes) {
  int64_t host[kStatusSize];
  copy_to_host_and_sync(host, status.const_data_ptr(), sizeof(host), stream);
  raise_for_status(host, target_sizes, num_classes, ignore_index, logits_sizes);
}

// The event behind one queued copy (c10's CUDAEvent header does not build under nvcc's -Werror).
class CopyEvent {
 public:
  explicit CopyEvent(cudaStream_t stream) {
    VL_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    VL_CUDA_CHECK(cudaEventRecord(event_, stream));
  }
  CopyEvent(const CopyEvent&) = delete;
  CopyEvent& operator=(const CopyEvent&) = delete;
  ~CopyEvent() {
    VL_CUDA_CHECK_WARN(cudaEventDestroy(event_));  // does not wait for the event
  }
  // Never waits. Querying an event is illegal while this thread's stream is being captured:
  // "not yet" then.
  // The query runs in thread-local capture mode: under the default global mode it would be an
  // unsafe call that invalidates a capture another thread is making (torch.cuda.graph captures in
  // global mode), as PyTorch's NCCL watchdog found.
  bool landed() const {
    if (current_stream_capturing()) return false;
    const CaptureModeGuard thread_local_mode(cudaStreamCaptureModeThreadLocal);
    const cudaError_t state = cudaEventQuery(event_);
    if (state == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: clear it
      return false;
    }
    VL_CUDA_CHECK(state);
    return true;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

// validate=2: the record copied to pinned memory on the forward's (current) stream, an event
// behind it. torch's copy_ records its use of the pinned block, so dropping the entry before the
// copy lands is safe.
void queue_copy(const at::Tensor& status, cudaStream_t stream, CallSite site) {
  at::Tensor host = pinned_status_buffer(kStatusSize);
  host.copy_(status, /*non_blocking=*/true);
  auto copied = std::make_shared<CopyEvent>(stream);
  status_queue().push(
      PendingStatus{std::shared_ptr<const int64_t>(host.const_data_ptr<int64_t>(), [host](const int64_t*) {}),
                    [copied] { return copied->landed(); }, std::move(site)});
}

// Graph slots live in mapped pinned memory allocated a chunk at a time and never freed (a slot
// goes back to the free list when its graph is destroyed). The first chunk is allocated at the
// first validating call outside a capture, so that captures after the usual warm-up allocate
// nothing; a later chunk may be allocated during a capture, in relaxed capture mode (as torch's
// caching allocator does for device memory).
constexpr int kSlotsPerChunk = 64;

void add_slot_chunk() {
  const CaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
  const size_t bytes = size_t{kSlotsPerChunk} * kSlotWords * sizeof(int64_t);
  void* host = nullptr;
  VL_CUDA_CHECK(cudaHostAlloc(&host, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
  std::memset(host, 0, bytes);
  void* device = nullptr;
  if (cudaHostGetDevicePointer(&device, host, 0) != cudaSuccess) {
    (void)cudaGetLastError();  // a context made without cudaDeviceMapHost: under unified addressing
    device = host;             // (every 64-bit platform) the device reaches pinned memory at its host address
  }
  std::vector<SlotRef> fresh;
  for (int i = 0; i < kSlotsPerChunk; ++i) {
    const int offset = i * kSlotWords;
    fresh.push_back(SlotRef{static_cast<int64_t*>(host) + offset, static_cast<int64_t*>(device) + offset});
  }
  graph_slots().add_free_slots(fresh);
}

void reserve_first_slots() {
  static std::once_flag once;
  std::call_once(once, add_slot_chunk);
}

SlotRef free_slot() {
  for (;;) {
    if (std::optional<SlotRef> slot = graph_slots().take_free_slot()) return *slot;
    add_slot_chunk();
  }
}

using AliveFlag = std::shared_ptr<std::atomic<bool>>;

// Called by CUDA, on a thread of its own and without any CUDA call allowed, once the graph and
// every instance of it are destroyed and their launches have completed.
void CUDART_CB graph_released(void* holder) {
  auto* alive = static_cast<AliveFlag*>(holder);
  (*alive)->store(false, std::memory_order_release);
  delete alive;
}

// The slot is watched as long as the graph being captured (or an instance of it) exists: a CUDA
// user object owned by the graph holds the flag.
void tie_to_graph(cudaGraph_t graph, AliveFlag alive) {
  auto* holder = new AliveFlag(std::move(alive));
  cudaUserObject_t object = nullptr;
  const cudaError_t created = cudaUserObjectCreate(&object, holder, &graph_released, 1, cudaUserObjectNoDestructorSync);
  if (created != cudaSuccess) {
    graph_released(holder);  // never tied: no replay will write the slot
    VL_CUDA_CHECK(created);
  }
  const cudaError_t retained = cudaGraphRetainUserObject(graph, object, 1, cudaGraphUserObjectMove);
  if (retained != cudaSuccess) {
    (void)cudaUserObjectRelease(object, 1);  // runs graph_released: the flag drops, the slot is recycled
    VL_CUDA_CHECK(retained);
  }
}

// validate=1 or 2 while capturing: the publish kernel joins the graph after the forward; the host
// takes what replays publish whenever it checks (graph_slots.h).
void publish_in_graph(const at::Tensor& status, cudaStream_t stream, CallSite site) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  VL_CUDA_CHECK(cudaStreamGetCaptureInfo(stream, &capture, nullptr, &graph));
  if (capture != cudaStreamCaptureStatusActive || graph == nullptr) return;  // an invalidated capture fails anyway
  const SlotRef slot = free_slot();
  auto alive = std::make_shared<std::atomic<bool>>(true);
  // Watched before anything can fail: a site whose graph is gone (or never got the flag) is
  // recycled at the next check.
  graph_slots().watch(GraphSite{slot, alive, std::move(site)});
  tie_to_graph(graph, std::move(alive));
  VL_CUDA_CHECK(publish_status_launch(status.const_data_ptr<int64_t>(), slot.device, stream));
}

// deferred_submit for a record on the GPU (linear_cross_entropy's whole-target check): 'deferred'.
void deferred_submit_cuda(const at::Tensor& status, c10::SymIntArrayRef target_shape, int64_t num_classes,
                          int64_t ignore_index, c10::SymIntArrayRef logits_shape) {
  std::string origin = take_call_origin();
  TORCH_CHECK(status.numel() == kStatusSize && status.scalar_type() == at::kLong,
              "validated_loss: a status record is int64[", kStatusSize, "]");
  const DeviceGuard guard(status.device());
  const cudaStream_t stream = current_stream();
  report_status(2, status.contiguous(), stream, C10_AS_INTARRAYREF_SLOW(target_shape), num_classes, ignore_index,
                C10_AS_INTARRAYREF_SLOW(logits_shape), std::move(origin));
}

}  // namespace

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  VL_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

void check_earlier_calls(cudaStream_t stream) {
  if (pending_checks() == 0 || capturing(stream)) return;
  raise_deferred_errors();
}

void report_status(int64_t validate, const at::Tensor& status, cudaStream_t stream, at::IntArrayRef target_sizes,
                   int64_t num_classes, int64_t ignore_index, at::IntArrayRef logits_sizes, std::string origin) {
  if (validate == 0) return;
  const bool capture = capturing(stream);
  if (!capture) reserve_first_slots();
  if (validate == 1 && !capture) {
    raise_now(status, stream, target_sizes, num_classes, ignore_index, logits_sizes);
    return;
  }
  CallSite site = new_call_site(target_sizes, num_classes, ignore_index, logits_sizes, std::move(origin));
  if (capture) {
    publish_in_graph(status, stream, std::move(site));
  } else {
    queue_copy(status, stream, std::move(site));
  }
}

TORCH_LIBRARY_IMPL(validated_loss, VL_CUDA_DISPATCH_KEY, m) {
  m.impl("deferred_submit", &deferred_submit_cuda);
}

}  // namespace validated_loss::cuda
