// The CUDA emulation layer (csrc/cuda_emu) tested on its own, with small kernels whose right
// answer is known: barriers, every warp operation with every width against the lane arithmetic
// of the CUDA programming guide, the errors it must report (divergent barriers, deadlock, a mask
// naming an exited lane or a lane at another operation), shared memory, atomics across blocks
// running on several OS threads, the CUB stand-in's contract, half/bfloat16 rounding, and the host
// runtime's capture, replay and user-object rules. Run by tests/test_cuda_emu_layer.py (plain,
// and under AddressSanitizer + UndefinedBehaviorSanitizer). Built with -include prelude.h.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <cub/block/block_reduce.cuh>
#include <cuda_fp16.h>

#include "cuda/launch.cuh"

static int checks = 0, failures = 0;
#define CHECK(cond, ...)                               \
  do {                                                 \
    ++checks;                                          \
    if (!(cond)) {                                     \
      ++failures;                                      \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

static void set_schedule(const char* s) {
  setenv("VL_CUDA_EMU_SCHEDULE", s, 1);
}
static const char* kSchedules[] = {"forward", "reverse", "random:1", "random:2"};

template <typename F>
static std::string error_of(F&& f) {
  try {
    f();
  } catch (const vl_emu::EmulationError& e) {
    return e.what();
  }
  return "";
}

// ---- kernels ----
__global__ void block_sum(const float* in, float* out, int n, bool with_barrier) {
  __shared__ float partial[256];
  partial[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  if (with_barrier) __syncthreads();
  for (int s = 128; s > 0; s /= 2) {
    if (static_cast<int>(threadIdx.x) < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    if (with_barrier) __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
  (void)n;
}

__global__ void shuffles(int* out, int width, int param) {
  const int lane = threadIdx.x % 32;
  const int v = 1000 + static_cast<int>(threadIdx.x);
  int* o = out + threadIdx.x * 4;
  o[0] = __shfl_sync(0xffffffffu, v, param, width);
  o[1] = __shfl_up_sync(0xffffffffu, v, param, width);
  o[2] = __shfl_down_sync(0xffffffffu, v, param, width);
  o[3] = __shfl_xor_sync(0xffffffffu, v, param, width);
  (void)lane;
}

__global__ void votes(unsigned* out) {
  const int lane = threadIdx.x % 32;
  out[threadIdx.x * 3 + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[threadIdx.x * 3 + 1] = __any_sync(0xffffffffu, lane == 31 && threadIdx.x < 32);
  out[threadIdx.x * 3 + 2] = __all_sync(0xffffffffu, lane < 40);
}

__global__ void barrier_votes(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  if (t >= 200) return;  // exited threads do not count
  out[t * 3 + 0] = __syncthreads_count(t % 3 == 0);
  out[t * 3 + 1] = __syncthreads_or(t == 150);
  out[t * 3 + 2] = __syncthreads_and(t < 199);
}

__global__ void divergent_barrier() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void shuffle_after_exit(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void shuffle_vs_barrier(int* out) {
  if (threadIdx.x == 0) {
    out[0] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncthreads();
  }
}

__global__ void two_shuffle_sites(int* out) {
  if (threadIdx.x % 2) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 2, 1);
  }
}

__global__ void mask_without_self(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, 7, 0);
}

__global__ void partial_mask(int* out) {
  // Only the low half of the warp takes part, with a mask naming exactly those lanes.
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0xffffu, static_cast<int>(threadIdx.x), 1, 16);
}

__global__ void dynamic_shared(float* out) {
  VL_DYNAMIC_SHARED(float, buf);
  out[threadIdx.x] = buf[threadIdx.x];  // before any write: the emulation's poison
  __syncthreads();
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[blockDim.x + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

__global__ void count_atomics(unsigned long long* counter, float* fsum) {
  atomicAdd(counter, 1ull);
  atomicAdd(fsum, 1.0f);
}

template <bool kBarrierBetween>
__global__ void cub_twice(const int* in, int* out) {
  using Reduce = cub::BlockReduce<int, 256>;
  __shared__ typename Reduce::TempStorage storage;
  const int a = Reduce(storage).Sum(in[threadIdx.x]);
  if (kBarrierBetween) __syncthreads();
  const int b = Reduce(storage).Reduce(in[threadIdx.x] * 2, [](int x, int y) { return x > y ? x : y; });
  if (threadIdx.x == 0) {
    out[0] = a;
    out[1] = b;
  }
}

__global__ void write_one(int* p, int v) {
  *p = v;
}

// A 16-byte vector load from an address that is only 4-byte aligned: the GPU faults
// (misaligned address); UndefinedBehaviorSanitizer reports it here.
__global__ void misaligned_vector_load(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p + 1);
  out[0] = v.x + v.y + v.z + v.w;
}

// ---- tests ----
static void test_barriers_and_races() {
  std::vector<float> in(4 * 256), out(4);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 97) * 0.5f;
  for (const char* s : kSchedules) {
    set_schedule(s);
    VL_LAUNCH(4, 256, 0, nullptr, block_sum)(in.data(), out.data(), 256, true);
    for (int b = 0; b < 4; ++b) {
      double want = 0;
      for (int i = 0; i < 256; ++i) want += in[b * 256 + i];
      CHECK(out[b] == static_cast<float>(want), "block_sum %s block %d: %f vs %f", s, b, out[b], want);
    }
  }
  // Without the barriers the result depends on the order of the threads: some schedule shows it.
  // (Each launch gets other data: static shared memory keeps the previous block's values, as on a
  // GPU, and a previous launch over the same data would have left the right partial sums there.)
  bool differs = false;
  for (const char* s : kSchedules) {
    set_schedule(s);
    for (float& v : in) v += 1.0f;
    VL_LAUNCH(1, 256, 0, nullptr, block_sum)(in.data(), out.data(), 256, false);
    double want = 0;
    for (int i = 0; i < 256; ++i) want += in[i];
    differs |= out[0] != static_cast<float>(want);
  }
  CHECK(differs, "a reduction without barriers gave the right sum under every schedule");
}

static int expected_shuffle(int kind, int tid, int width, int param) {
  const int lane = tid % 32, seg = lane & ~(width - 1), base = tid - lane;
  int src = lane;
  if (kind == 0) src = seg + param % width;
  if (kind == 1) src = lane - seg >= param ? lane - param : lane;
  if (kind == 2) src = lane - seg + param < width ? lane + param : lane;
  if (kind == 3) src = (lane ^ param) < seg + width ? (lane ^ param) : lane;
  return 1000 + base + src;
}

static void test_shuffles() {
  for (const char* s : {"forward", "random:3"}) {
    set_schedule(s);
    for (int width : {32, 16, 8, 4, 2, 1}) {
      for (int param : {0, 1, 3, 5, 16, 31}) {
        if (param >= width && param != 16 && param != 31) continue;
        std::vector<int> out(64 * 4, -1);
        VL_LAUNCH(1, 64, 0, nullptr, shuffles)(out.data(), width, param);
        for (int t = 0; t < 64; ++t) {
          for (int k = 0; k < 4; ++k) {
            const int want = expected_shuffle(k, t, width, param);
            CHECK(out[t * 4 + k] == want, "shuffle kind %d width %d param %d thread %d: %d vs %d", k, width, param, t,
                  out[t * 4 + k], want);
          }
        }
      }
    }
  }
  std::vector<unsigned> v(64 * 3);
  VL_LAUNCH(1, 64, 0, nullptr, votes)(v.data());
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int t = 0; t < 64; ++t) {
    CHECK(v[t * 3] == ballot, "ballot thread %d: %x", t, v[t * 3]);
    CHECK(v[t * 3 + 1] == (t < 32 ? 1u : 0u), "any thread %d", t);
    CHECK(v[t * 3 + 2] == 1u, "all thread %d", t);
  }
  std::vector<int> bv(256 * 3, -1);
  VL_LAUNCH(1, 256, 0, nullptr, barrier_votes)(bv.data());
  for (int t = 0; t < 200; ++t) {
    CHECK(bv[t * 3] == 67 && bv[t * 3 + 1] == 1 && bv[t * 3 + 2] == 0, "barrier votes thread %d: %d %d %d", t,
          bv[t * 3], bv[t * 3 + 1], bv[t * 3 + 2]);
  }
  std::vector<int> half(16, -1);
  VL_LAUNCH(1, 32, 0, nullptr, partial_mask)(half.data());
  for (int t = 0; t < 16; ++t) CHECK(half[t] == (t < 15 ? t + 1 : t), "partial mask lane %d: %d", t, half[t]);
}

static void test_errors() {
  set_schedule("forward");
  std::vector<int> out(64);
  std::string e = error_of([] { VL_LAUNCH(1, 64, 0, nullptr, divergent_barrier)(); });
  CHECK(e.find("different barriers") != std::string::npos && e.find("divergent_barrier") != std::string::npos,
        "divergent barrier: %s", e.c_str());
  CHECK(e.find("cuda_emu_selftest.cpp:") != std::string::npos, "no source line: %s", e.c_str());
  e = error_of([&] { VL_LAUNCH(1, 32, 0, nullptr, shuffle_after_exit)(out.data()); });
  CHECK(e.find("exited") != std::string::npos, "exited lane: %s", e.c_str());
  e = error_of([&] { VL_LAUNCH(1, 32, 0, nullptr, shuffle_vs_barrier)(out.data()); });
  CHECK(e.find("deadlock") != std::string::npos, "deadlock: %s", e.c_str());
  e = error_of([&] { VL_LAUNCH(1, 32, 0, nullptr, two_shuffle_sites)(out.data()); });
  CHECK(e.find("waits at __shfl_xor_sync") != std::string::npos, "different shuffle sites: %s", e.c_str());
  e = error_of([&] { VL_LAUNCH(1, 32, 0, nullptr, mask_without_self)(out.data()); });
  CHECK(e.find("does not name the calling lane") != std::string::npos, "mask without self: %s", e.c_str());
  e = error_of([&] { VL_LAUNCH(1, 2048, 0, nullptr, write_one)(out.data(), 1); });
  CHECK(e.find("threads per block") != std::string::npos, "block too large: %s", e.c_str());
  // After an error the next launch works (the stopped fibers were dropped).
  VL_LAUNCH(1, 32, 0, nullptr, write_one)(out.data(), 42);
  CHECK(out[0] == 42, "launch after an error");
}

static void test_shared_and_atomics() {
  std::vector<float> out(2 * 128);
  VL_LAUNCH(1, 128, 128 * sizeof(float), nullptr, dynamic_shared)(out.data());
  CHECK(std::isnan(out[0]) && std::isnan(out[127]), "dynamic shared memory starts poisoned");
  CHECK(out[128] == 127.0f && out[255] == 0.0f, "dynamic shared memory round trip");
  for (const char* workers : {"1", "2", "4"}) {
    setenv("VL_CUDA_EMU_WORKERS", workers, 1);
    for (const char* s : kSchedules) {
      set_schedule(s);
      unsigned long long counter = 0;
      float fsum = 0;
      VL_LAUNCH(64, 256, 0, nullptr, count_atomics)(&counter, &fsum);
      CHECK(counter == 64ull * 256 && fsum == 64.0f * 256, "atomics (%s workers, %s): %llu %f", workers, s, counter,
            fsum);
    }
  }
  unsetenv("VL_CUDA_EMU_WORKERS");
}

static void test_cub_contract() {
  std::vector<int> in(256), out(2);
  for (int i = 0; i < 256; ++i) in[i] = (i * 37) % 101;
  int sum = 0, mx = 0;
  for (int v : in) sum += v, mx = std::max(mx, 2 * v);
  for (const char* s : kSchedules) {
    set_schedule(s);
    VL_LAUNCH(1, 256, 0, nullptr, cub_twice<true>)(in.data(), out.data());
    CHECK(out[0] == sum && out[1] == mx, "BlockReduce %s: %d %d", s, out[0], out[1]);
  }
  bool differs = false;
  for (const char* s : kSchedules) {
    set_schedule(s);
    VL_LAUNCH(1, 256, 0, nullptr, cub_twice<false>)(in.data(), out.data());
    differs |= out[0] != sum || out[1] != mx;
  }
  CHECK(differs, "BlockReduce storage reused without a barrier gave the right result under every schedule");
}

static void test_half_types() {
  // Every half: to float and back is the identity (NaNs stay NaN).
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
    const _Float16 ref = [&] {
      _Float16 h;
      unsigned short bits = static_cast<unsigned short>(b);
      std::memcpy(&h, &bits, 2);
      return h;
    }();
    if (std::isnan(f)) {
      CHECK(std::isnan(static_cast<float>(ref)), "half %x", b);
      continue;
    }
    CHECK(f == static_cast<float>(ref), "half %x to float: %g vs %g", b, f, static_cast<float>(ref));
    CHECK(__half_as_ushort(__float2half_rn(f)) == b, "half %x round trip", b);
  }
  // Rounding of floats between halves: the compiler's _Float16 conversion rounds to nearest even.
  uint32_t x = 12345;
  for (int i = 0; i < 200000; ++i) {
    x = x * 1664525u + 1013904223u;
    float f;
    std::memcpy(&f, &x, 4);
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    unsigned short rb;
    std::memcpy(&rb, &ref, 2);
    CHECK(__half_as_ushort(__float2half_rn(f)) == rb, "float %g (%08x) to half: %x vs %x", f, x,
          __half_as_ushort(__float2half_rn(f)), rb);
    // bfloat16: round to nearest even on the upper 16 bits.
    const uint32_t lower = x & 0xffffu, upper = x >> 16;
    const uint32_t want = lower > 0x8000u || (lower == 0x8000u && (upper & 1u)) ? upper + 1 : upper;
    CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(f)) == want, "float %08x to bfloat16", x);
  }
}

static void destroyed(void* flag) {
  *static_cast<int*>(flag) += 1;
}

static void test_runtime() {
  set_schedule("forward");
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  int value = 0;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
  VL_LAUNCH(1, 1, 0, stream, write_one)(&value, 5);
  CHECK(value == 0, "a captured launch runs only at replay");
  cudaGraph_t graph;
  int released = 0;
  cudaUserObject_t object;
  cudaUserObjectCreate(&object, &released, &destroyed, 1, cudaUserObjectNoDestructorSync);
  cudaStreamCaptureStatus status;
  cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph);
  CHECK(status == cudaStreamCaptureStatusActive && graph != nullptr, "capture info");
  cudaGraphRetainUserObject(graph, object, 1, cudaGraphUserObjectMove);
  CHECK(cudaStreamEndCapture(stream, &graph) == cudaSuccess, "end capture");
  cudaGraphExec_t exec;
  cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphLaunch(exec, stream);
  CHECK(value == 5, "replay runs the captured launch");
  cudaGraphDestroy(graph);
  CHECK(released == 0, "user object alive while an instance exists");
  cudaGraphExecDestroy(exec);
  CHECK(released == 1, "user object destroyed with the last graph instance");

  // Global capture: another thread's event query is refused and invalidates the capture, unless
  // that thread is in relaxed mode.
  for (bool relaxed : {false, true}) {
    cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal);
    cudaError_t queried = cudaSuccess;
    std::thread other([&] {
      cudaEvent_t e;
      cudaEventCreate(&e);
      cudaStreamCaptureMode mode = relaxed ? cudaStreamCaptureModeRelaxed : cudaStreamCaptureModeGlobal;
      cudaThreadExchangeStreamCaptureMode(&mode);
      queried = cudaEventQuery(e);
      cudaThreadExchangeStreamCaptureMode(&mode);
      cudaEventDestroy(e);
    });
    other.join();
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    CHECK(relaxed ? (queried == cudaSuccess && ended == cudaSuccess)
                  : (queried == cudaErrorStreamCaptureUnsupported && ended == cudaErrorStreamCaptureInvalidated),
          "global capture vs event query (relaxed=%d): %d %d", relaxed, queried, ended);
    if (ended == cudaSuccess) cudaGraphDestroy(graph);
  }
  // Event delay: a recorded event reports not-ready for the configured number of queries.
  vl_emu::set_event_delay(2);
  cudaEvent_t e;
  cudaEventCreate(&e);
  cudaEventRecord(e, stream);
  CHECK(cudaEventQuery(e) == cudaErrorNotReady && cudaEventQuery(e) == cudaErrorNotReady &&
            cudaEventQuery(e) == cudaSuccess,
        "event delay");
  (void)cudaGetLastError();
  vl_emu::set_event_delay(0);
  cudaEventDestroy(e);
  cudaStreamDestroy(stream);
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "misaligned") {
    alignas(16) float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float out = 0;
    VL_LAUNCH(1, 1, 0, nullptr, misaligned_vector_load)(data, &out);
    std::printf("misaligned load gave %f\n", out);
    return 0;
  }
  test_barriers_and_races();
  test_shuffles();
  test_errors();
  test_shared_and_atomics();
  test_cub_contract();
  test_half_types();
  test_runtime();
  std::printf("cuda_emu_selftest: %d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
