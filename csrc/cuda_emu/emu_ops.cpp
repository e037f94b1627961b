// The emulated build's own ops (torch.ops.validated_loss_emu), for the tests that drive the CUDA
// ops' host code against the emulated runtime: stream capture into a graph and its replay (what
// torch.cuda.graph does on a GPU), events that report "not ready" for a while, and the count of
// kernel launches by kernel.
#include <cstring>
#include <map>
#include <vector>
#include <mutex>
#include <string>

#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include "runtime.h"

namespace vl_emu {
namespace {

std::mutex graphs_mutex;
std::map<int64_t, cudaGraphExec_t>& graphs() {
  static std::map<int64_t, cudaGraphExec_t> g;
  return g;
}
cudaStream_t capture_stream = nullptr;

// What torch's private graph memory pool does on a GPU: memory allocated during a capture stays
// reserved while a graph may replay into it. Here tensors are CPU tensors, so during a capture the
// CPU allocator is swapped for one whose frees are held back until no graph is left.
std::mutex held_mutex;
std::vector<c10::DataPtr*>& held_back() {
  static std::vector<c10::DataPtr*> h;
  return h;
}
bool graphs_alive();

struct CaptureAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;
  c10::DataPtr allocate(size_t n) override {
    auto* inner = new c10::DataPtr(base->allocate(n));
    void* data = inner->get();
    return {data, inner, &release, c10::Device(c10::DeviceType::CPU)};
  }
  static void release(void* ctx) {
    auto* inner = static_cast<c10::DataPtr*>(ctx);
    std::lock_guard<std::mutex> lock(held_mutex);
    if (graphs_alive()) {
      held_back().push_back(inner);
    } else {
      delete inner;
    }
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};
CaptureAllocator capture_allocator;
c10::Allocator* allocator_before_capture = nullptr;

void free_held_back() {
  std::vector<c10::DataPtr*> held;
  {
    std::lock_guard<std::mutex> lock(held_mutex);
    held.swap(held_back());
  }
  for (c10::DataPtr* p : held) delete p;
}

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "CUDA error (emulated) in ", what, ": ", cudaGetErrorString(e));
}

// The calling thread's current stream becomes a new stream capturing in `mode`
// (0 global, 1 thread-local, 2 relaxed), as torch.cuda.graph's capture does.
void begin_capture(int64_t mode) {
  TORCH_CHECK(capture_stream == nullptr, "validated_loss_emu: a capture is already running");
  allocator_before_capture = c10::GetCPUAllocator();
  capture_allocator.base = allocator_before_capture;
  c10::SetCPUAllocator(&capture_allocator, /*priority=*/255);  // the highest: set and restore always win
  check(cudaStreamCreate(&capture_stream), "cudaStreamCreate");
  check(cudaStreamBeginCapture(capture_stream, static_cast<cudaStreamCaptureMode>(mode)), "cudaStreamBeginCapture");
  set_current_stream(capture_stream);
}

// Ends it and instantiates the graph; returns its handle for replay/destroy_graph.
int64_t end_capture() {
  TORCH_CHECK(capture_stream != nullptr, "validated_loss_emu: no capture is running");
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(capture_stream, &graph);
  set_current_stream(nullptr);
  c10::SetCPUAllocator(allocator_before_capture, /*priority=*/255);
  cudaStreamDestroy(capture_stream);
  capture_stream = nullptr;
  check(ended, "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  check(cudaGraphDestroy(graph), "cudaGraphDestroy");  // the instance keeps what it needs
  std::lock_guard<std::mutex> lock(graphs_mutex);
  const int64_t id = graphs().empty() ? 1 : graphs().rbegin()->first + 1;
  graphs()[id] = exec;
  return id;
}

void replay(int64_t id) {
  std::lock_guard<std::mutex> lock(graphs_mutex);
  TORCH_CHECK(graphs().count(id), "validated_loss_emu: no graph ", id);
  check(cudaGraphLaunch(graphs()[id], nullptr), "cudaGraphLaunch");
}

void destroy_graph(int64_t id) {
  std::lock_guard<std::mutex> lock(graphs_mutex);
  TORCH_CHECK(graphs().count(id), "validated_loss_emu: no graph ", id);
  check(cudaGraphExecDestroy(graphs()[id]), "cudaGraphExecDestroy");
  graphs().erase(id);
  if (graphs().empty()) free_held_back();
}

bool graphs_alive() {
  return capture_stream != nullptr || !graphs().empty();
}

int64_t set_event_delay_op(int64_t n) {
  return set_event_delay(static_cast<int>(n));
}

std::string launch_counts_op() {
  return launch_counts();
}

void reset_launch_counts_op() {
  reset_launch_counts();
}

}  // namespace
}  // namespace vl_emu

TORCH_LIBRARY(validated_loss_emu, m) {
  m.def("begin_capture(int mode=0) -> ()", &vl_emu::begin_capture);
  m.def("end_capture() -> int", &vl_emu::end_capture);
  m.def("replay(int graph) -> ()", &vl_emu::replay);
  m.def("destroy_graph(int graph) -> ()", &vl_emu::destroy_graph);
  m.def("set_event_delay(int queries) -> int", &vl_emu::set_event_delay_op);
  m.def("launch_counts() -> str", &vl_emu::launch_counts_op);
  m.def("reset_launch_counts() -> ()", &vl_emu::reset_launch_counts_op);
}
