// The CUDA emulation's execution model, torch-free: a grid's blocks run on a small pool of OS
// threads (so atomics between blocks are real), and the threads of one block run as fibers on
// one OS thread, switched by a per-block scheduler only where CUDA synchronises:
//   __syncthreads()  releases when every thread of the block that has not exited has arrived, all
//                    at the same barrier (threads waiting at different barriers are an error);
//   warp operations  (shuffles, ballot/any/all, __syncwarp) complete when every lane named in the
//                    mask has arrived at the same operation with the same mask; a named lane that
//                    has exited or waits elsewhere is an error.
// A state where nothing can run is reported as a deadlock, never hung. Every error names the
// kernel, block, thread and source line, and is thrown from the launch as EmulationError.
//
// The order in which ready threads (and blocks) run is the schedule: forward, reverse, or seeded
// random (VL_CUDA_EMU_SCHEDULE=forward|reverse|random[:seed]). A kernel without races gives
// bitwise the same result under all of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace vl_emu {

struct uint3_t {
  unsigned x, y, z;
};

struct Site {
  const char* file;
  int line;
};

class EmulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Order { kForward, kReverse, kRandom };

struct Schedule {
  Order order = Order::kForward;
  uint64_t seed = 0;
  int workers = 2;  // OS threads running blocks
};

// VL_CUDA_EMU_SCHEDULE and VL_CUDA_EMU_WORKERS, read at every launch (tests switch them).
Schedule schedule_from_env();
std::string describe(const Schedule& s);

struct LaunchConfig {
  uint3_t grid;
  uint3_t block;
  size_t dynamic_shared_bytes;
  const char* kernel;  // as written at the launch
  Site site;
};

// Runs body() once in every thread of every block. Throws EmulationError.
void run_grid(const LaunchConfig& config, const Schedule& schedule, const std::function<void()>& body);

// Launches so far, by kernel name (the emulated suite's summary; reset_launch_counts clears).
std::string launch_counts();
void reset_launch_counts();

// Between grid_run.cpp (run_grid: the grid, its block order, the OS threads) and block_run.cpp
// (one block's threads as fibers):
constexpr int kMaxBlockThreads = 1024;
void run_block(const LaunchConfig& config, const Schedule& schedule, const std::function<void()>& body, uint3_t block,
               uint64_t seed);
bool inside_block();               // this OS thread is running a block (a launch from a kernel runs inline)
std::string where(const Site& s);  // "file:line"

// ---- device side (valid only inside a kernel) ----
enum class WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };

const uint3_t& thread_idx();
const uint3_t& block_idx();
const uint3_t& block_dim();
const uint3_t& grid_dim();
void* dynamic_shared_memory();
// __syncthreads(); with a predicate (the _count/_and/_or forms): returns how many live threads
// arrived with a nonzero predicate, and (arrived) how many arrived.
int syncthreads(Site site, int predicate = 0, int* arrived = nullptr);
// value/result: `bytes` (<= 16) of the lane's operand and result; param: source lane, delta or
// lane mask; predicate ops pass an int and get an unsigned (ballot) or int.
void warp_op(WarpOp op, unsigned mask, const void* value, size_t bytes, int param, int width, void* result, Site site);
unsigned active_mask();

}  // namespace vl_emu
