// The part of the CUDA runtime API the project's host code uses, emulated on the CPU: errors,
// streams (work runs at once, in order, on the calling thread), events, host and "device"
// memory (both plain host memory), mapped pinned memory, stream capture into graphs, graph
// replay, and user objects whose destructor runs when the last graph holding them is destroyed.
// Capture follows CUDA's rule for cudaStreamCaptureModeGlobal: while any thread captures in global
// mode, an unsafe call (cudaEventQuery, cudaMalloc, cudaHostAlloc, cudaStreamSynchronize, ...) from
// a thread not in relaxed mode invalidates that capture, which then fails at cudaStreamEndCapture.
// Plus the kernel launch (vl_emu::Launch, used through cuda/launch.cuh's VL_LAUNCH).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "block_run.h"
#include "device.h"

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureWrongThread = 908,
  cudaErrorUnknown = 999,
};
using cudaError = cudaError_t;

struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
struct CUuserObject_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
using cudaGraph_t = CUgraph_st*;
using cudaGraphExec_t = CUgraphExec_st*;
using cudaUserObject_t = CUuserObject_st*;
using cudaHostFn_t = void (*)(void*);
#define CUDART_CB

enum cudaStreamCaptureStatus : int {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
enum cudaStreamCaptureMode : int {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
constexpr unsigned cudaEventDefault = 0x00;
constexpr unsigned cudaEventDisableTiming = 0x02;
constexpr unsigned cudaHostAllocDefault = 0x00;
constexpr unsigned cudaHostAllocPortable = 0x01;
constexpr unsigned cudaHostAllocMapped = 0x02;
constexpr unsigned cudaUserObjectNoDestructorSync = 0x1;
constexpr unsigned cudaGraphUserObjectMove = 0x1;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, cudaStreamCaptureStatus* status,
                                     unsigned long long* id = nullptr, cudaGraph_t* graph = nullptr,
                                     const void** dependencies = nullptr, const void** edge_data = nullptr,
                                     size_t* num_dependencies = nullptr);
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode);

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventDestroy(cudaEvent_t event);

cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned flags);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaUserObjectCreate(cudaUserObject_t* object, void* ptr, cudaHostFn_t destroy, unsigned initial_refcount,
                                 unsigned flags);
cudaError_t cudaUserObjectRelease(cudaUserObject_t object, unsigned count = 1);
cudaError_t cudaGraphRetainUserObject(cudaGraph_t graph, cudaUserObject_t object, unsigned count = 1,
                                      unsigned flags = 0);

namespace vl_emu {

// The stream the emulated ops run on (what at::cuda::getCurrentCUDAStream() is on a GPU):
// per thread, the default stream unless set.
cudaStream_t current_stream();
void set_current_stream(cudaStream_t stream);

// Events report cudaErrorNotReady for their first `n` queries after each record (0 by default):
// lets tests exercise "the copy has not landed yet" paths. Returns the previous value.
int set_event_delay(int n);

// Runs `work` on `stream` now, or records it into the graph being captured there.
void submit(cudaStream_t stream, std::function<void()> work);

// kernel<<<grid, block, shared, stream>>>(args...) under emulation.
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t shared, cudaStream_t stream, const char* kernel, const char* file, int line)
      : config_{grid, block, shared, kernel, Site{file, line}}, stream_(stream) {}

  template <typename... P>
  auto kernel(void (*fn)(P...)) {
    return [config = config_, stream = stream_, fn](auto&&... args) {
      // Parameters are copied at the launch, as CUDA copies them into the kernel's parameter space.
      auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<decltype(args)>(args)...);
      submit(stream, [config, fn, params] { run_grid(config, schedule_from_env(), [&] { std::apply(fn, *params); }); });
    };
  }

 private:
  LaunchConfig config_;
  cudaStream_t stream_;
};

}  // namespace vl_emu
