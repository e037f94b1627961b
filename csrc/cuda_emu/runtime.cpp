#include "runtime.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

struct CUuserObject_st {
  std::atomic<int64_t> refs;
  void* ptr;
  cudaHostFn_t destroy;
};

struct CUgraph_st {
  std::vector<std::function<void()>> nodes;
  std::vector<std::pair<cudaUserObject_t, unsigned>> objects;  // references this graph holds
};

struct CUgraphExec_st {
  std::vector<std::function<void()>> nodes;
  std::vector<std::pair<cudaUserObject_t, unsigned>> objects;
};

struct CUstream_st {
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id owner;
  unsigned long long capture_id = 0;
  cudaGraph_t graph = nullptr;
};

struct CUevent_st {
  int not_ready_left = 0;
};

namespace {

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;
thread_local cudaStream_t t_current_stream = nullptr;
std::atomic<int> g_event_delay{0};
std::atomic<unsigned long long> g_capture_ids{0};

CUstream_st& default_stream() {
  static CUstream_st s;
  return s;
}

CUstream_st* resolve(cudaStream_t s) {
  return s ? s : &default_stream();
}

std::mutex g_capture_mutex;
std::set<CUstream_st*>& capturing_streams() {
  static std::set<CUstream_st*> s;
  return s;
}

std::mutex g_host_mutex;
std::set<void*>& host_allocations() {
  static std::set<void*> s;
  return s;
}

cudaError_t fail(cudaError_t e) {
  t_last_error = e;
  return e;
}

// CUDA's rule for "potentially unsafe" calls while streams are being captured: refused (and the
// offending captures invalidated) when this thread captures in a non-relaxed mode itself, or when
// its mode is global and another thread captures in global mode.
cudaError_t unsafe_call() {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  bool refused = false;
  for (CUstream_st* s : capturing_streams()) {
    const bool own = s->owner == std::this_thread::get_id();
    if ((own && s->mode != cudaStreamCaptureModeRelaxed) ||
        (!own && t_capture_mode == cudaStreamCaptureModeGlobal && s->mode == cudaStreamCaptureModeGlobal)) {
      s->invalidated = true;
      refused = true;
    }
  }
  return refused ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

void release(cudaUserObject_t object, unsigned count) {
  if (object->refs.fetch_sub(count) == static_cast<int64_t>(count)) {
    object->destroy(object->ptr);
    delete object;
  }
}

}  // namespace

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  return t_last_error;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureWrongThread:
      return "attempt to terminate a thread-local capture sequence from another thread";
    default:
      return "unknown error";
  }
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = new CUstream_st();
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream) return fail(cudaErrorInvalidResourceHandle);
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (resolve(stream)->capturing) {
    resolve(stream)->invalidated = true;
    return fail(cudaErrorStreamCaptureUnsupported);
  }
  return unsafe_call();  // work already ran: nothing to wait for
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  const CUstream_st* s = resolve(stream);
  *status = !s->capturing    ? cudaStreamCaptureStatusNone
            : s->invalidated ? cudaStreamCaptureStatusInvalidated
                             : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, cudaStreamCaptureStatus* status, unsigned long long* id,
                                     cudaGraph_t* graph, const void** dependencies, const void** edge_data,
                                     size_t* num_dependencies) {
  CUstream_st* s = resolve(stream);
  cudaStreamIsCapturing(stream, status);
  if (id) *id = s->capture_id;
  if (graph) *graph = s->capturing ? s->graph : nullptr;
  if (dependencies) *dependencies = nullptr;
  if (edge_data) *edge_data = nullptr;
  if (num_dependencies) *num_dependencies = 0;
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  CUstream_st* s = resolve(stream);
  if (s == &default_stream()) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot capture
  if (s->capturing) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  s->capturing = true;
  s->invalidated = false;
  s->mode = mode;
  s->owner = std::this_thread::get_id();
  s->capture_id = ++g_capture_ids;
  s->graph = new CUgraph_st();
  capturing_streams().insert(s);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  CUstream_st* s = resolve(stream);
  if (!s->capturing) return fail(cudaErrorInvalidValue);
  if (s->mode != cudaStreamCaptureModeRelaxed && s->owner != std::this_thread::get_id()) {
    return fail(cudaErrorStreamCaptureWrongThread);
  }
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  capturing_streams().erase(s);
  s->capturing = false;
  cudaGraph_t g = s->graph;
  s->graph = nullptr;
  if (s->invalidated) {
    cudaGraphDestroy(g);
    *graph = nullptr;
    return fail(cudaErrorStreamCaptureInvalidated);
  }
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  std::swap(*mode, t_capture_mode);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  *event = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  const int delay = g_event_delay.load();
  vl_emu::submit(stream, [event, delay] { event->not_ready_left = delay; });
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (const cudaError_t e = unsafe_call()) return e;
  if (event->not_ready_left > 0) {
    --event->not_ready_left;
    return fail(cudaErrorNotReady);
  }
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (const cudaError_t e = unsafe_call()) return e;
  event->not_ready_left = 0;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (const cudaError_t e = unsafe_call()) return e;
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned) {
  if (const cudaError_t e = unsafe_call()) return e;
  *ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  if (!*ptr) return fail(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(g_host_mutex);
  host_allocations().insert(*ptr);
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {
  std::lock_guard<std::mutex> lock(g_host_mutex);
  if (!host_allocations().erase(ptr)) return fail(cudaErrorInvalidValue);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned) {
  std::lock_guard<std::mutex> lock(g_host_mutex);
  if (!host_allocations().count(host)) return fail(cudaErrorInvalidValue);  // the base of a cudaHostAlloc block
  *device = host;  // unified addressing: the device sees mapped pinned memory at its host address
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (const cudaError_t e = unsafe_call()) return e;
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
  vl_emu::submit(stream, [dst, src, bytes] { std::memmove(dst, src, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  vl_emu::submit(stream, [dst, value, bytes] { std::memset(dst, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!graph) return fail(cudaErrorInvalidValue);
  auto* e = new CUgraphExec_st{graph->nodes, graph->objects};
  for (auto& [object, count] : e->objects) object->refs += count;  // an instance keeps them alive too
  *exec = e;
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (!exec) return fail(cudaErrorInvalidValue);
  for (const auto& node : exec->nodes) vl_emu::submit(stream, node);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (!exec) return fail(cudaErrorInvalidValue);
  for (auto& [object, count] : exec->objects) release(object, count);
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (!graph) return fail(cudaErrorInvalidValue);
  for (auto& [object, count] : graph->objects) release(object, count);
  delete graph;
  return cudaSuccess;
}
cudaError_t cudaUserObjectCreate(cudaUserObject_t* object, void* ptr, cudaHostFn_t destroy, unsigned initial_refcount,
                                 unsigned) {
  if (initial_refcount == 0 || !destroy) return fail(cudaErrorInvalidValue);
  *object = new CUuserObject_st{{static_cast<int64_t>(initial_refcount)}, ptr, destroy};
  return cudaSuccess;
}
cudaError_t cudaUserObjectRelease(cudaUserObject_t object, unsigned count) {
  if (!object) return fail(cudaErrorInvalidValue);
  release(object, count);
  return cudaSuccess;
}
cudaError_t cudaGraphRetainUserObject(cudaGraph_t graph, cudaUserObject_t object, unsigned count, unsigned flags) {
  if (!graph || !object) return fail(cudaErrorInvalidValue);
  if (!(flags & cudaGraphUserObjectMove)) object->refs += count;
  graph->objects.emplace_back(object, count);
  return cudaSuccess;
}

namespace vl_emu {

cudaStream_t current_stream() {
  return t_current_stream;
}
void set_current_stream(cudaStream_t stream) {
  t_current_stream = stream;
}
int set_event_delay(int n) {
  return g_event_delay.exchange(n);
}

void submit(cudaStream_t stream, std::function<void()> work) {
  CUstream_st* s = resolve(stream);
  if (s->capturing) {
    s->graph->nodes.push_back(std::move(work));
  } else {
    work();
  }
}

}  // namespace vl_emu
