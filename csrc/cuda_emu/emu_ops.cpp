// The emulated build's own ops (torch.ops.validated_loss_emu), for the tests that drive the CUDA
// ops' host code against the emulated runtime: stream capture into a graph and its replay (what
// torch.cuda.graph does on a GPU), events that report "not ready" for a while, and the count of
// kernel launches by kernel.
#include <map>
#include <mutex>
#include <string>

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

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "CUDA error (emulated) in ", what, ": ", cudaGetErrorString(e));
}

// The calling thread's current stream becomes a new stream capturing in `mode`
// (0 global, 1 thread-local, 2 relaxed), as torch.cuda.graph's capture does.
void begin_capture(int64_t mode) {
  TORCH_CHECK(capture_stream == nullptr, "validated_loss_emu: a capture is already running");
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
}

int64_t set_event_delay_op(int64_t n) { return set_event_delay(static_cast<int>(n)); }

std::string launch_counts_op() { return launch_counts(); }

void reset_launch_counts_op() { reset_launch_counts(); }

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
