#include "block_run.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "fiber.h"

namespace vl_emu {
namespace {

constexpr int kWarp = 32;

enum class State { kReady, kRunning, kBarrier, kWarpOp, kExited };

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kAny:
      return "__any_sync";
    case WarpOp::kAll:
      return "__all_sync";
    case WarpOp::kSyncWarp:
      return "__syncwarp";
  }
  return "?";
}

class BlockRun;

// One CUDA thread: a fiber that runs the kernel body once per block it is given, reused by the
// next block on the same OS thread (creating stacks per block would cost more than the kernels).
struct EmuThread {
  int tid = 0;
  uint3_t idx{};
  State state = State::kExited;
  Site site{};
  WarpOp op{};
  unsigned mask = 0;
  int param = 0;
  int width = kWarp;
  size_t bytes = 0;
  int predicate = 0;  // at a barrier: this thread's predicate; after it: the block's count
  int arrived = 0;    // after a barrier: how many threads it released
  unsigned char value[16]{};
  unsigned char result[16]{};
  std::exception_ptr exception;
  const std::function<void()>* body = nullptr;
  std::unique_ptr<Fiber> fiber;
};

thread_local BlockRun* t_block = nullptr;
thread_local EmuThread* t_thread = nullptr;

void thread_main(void* arg) {
  auto* t = static_cast<EmuThread*>(arg);
  t->fiber->started();
  for (;;) {
    try {
      (*t->body)();
    } catch (...) {
      t->exception = std::current_exception();
    }
    t->state = State::kExited;
    t->fiber->yield();
  }
}

// The fibers of one OS thread, reused across blocks and launches. Dropped after an error (the
// fibers are then stopped mid-kernel, and are never resumed).
struct FiberPool {
  std::vector<std::unique_ptr<EmuThread>> threads;
  EmuThread* get(int i) {
    while (static_cast<int>(threads.size()) <= i) {
      auto t = std::make_unique<EmuThread>();
      t->fiber = std::make_unique<Fiber>(&thread_main, t.get(), default_stack_bytes());
      threads.push_back(std::move(t));
    }
    return threads[i].get();
  }
};
thread_local FiberPool t_pool;

class BlockRun {
 public:
  BlockRun(const LaunchConfig& c, const Schedule& s, const std::function<void()>& body, uint3_t block, uint64_t seed)
      : config_(c), schedule_(s), body_(body), block_(block), rng_(seed) {}

  void run() {
    const int n = static_cast<int>(config_.block.x * config_.block.y * config_.block.z);
    shared_.assign(config_.dynamic_shared_bytes + 16, 0xff);  // uninitialised shared memory reads as NaN
    threads_.resize(n);
    for (int i = 0; i < n; ++i) {
      EmuThread* t = t_pool.get(i);
      t->tid = i;
      t->idx = {i % config_.block.x, (i / config_.block.x) % config_.block.y, i / (config_.block.x * config_.block.y)};
      t->state = State::kReady;
      t->exception = nullptr;
      t->body = &body_;
      threads_[i] = t;
    }
    std::vector<int> first(n);
    for (int i = 0; i < n; ++i) first[i] = i;
    make_ready(first);
    int live = n;
    BlockRun* outer_block = t_block;
    t_block = this;
    try {
      while (live > 0) {
        if (ready_.empty()) {
          release_barrier();
          continue;
        }
        EmuThread* t = pop_ready();
        t->state = State::kRunning;
        t_thread = t;
        t->fiber->resume();
        t_thread = nullptr;
        if (!error_.empty()) fail(error_);
        if (t->exception) {
          std::string what = "an exception";
          try {
            std::rethrow_exception(t->exception);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          fail("thread " + thread_name(t) + " threw: " + what);
        }
        if (t->state == State::kExited) {
          --live;
          on_exit(t);
        }
      }
    } catch (...) {
      t_block = outer_block;
      throw;
    }
    t_block = outer_block;
  }

  // ---- called from inside a fiber ----
  EmuThread& self() { return *t_thread; }
  const uint3_t& block_idx() const { return block_; }
  const LaunchConfig& config() const { return config_; }
  void* shared() { return shared_.data() + (16 - reinterpret_cast<uintptr_t>(shared_.data()) % 16) % 16; }

  int syncthreads(Site site, int predicate, int* arrived) {
    EmuThread& t = self();
    t.state = State::kBarrier;
    t.site = site;
    t.predicate = predicate != 0;
    t.fiber->yield();
    if (arrived) *arrived = t.arrived;
    return t.predicate;
  }

  void warp_op(WarpOp op, unsigned mask, const void* value, size_t bytes, int param, int width, void* result,
               Site site) {
    EmuThread& t = self();
    const int lane = t.tid % kWarp;
    t.state = State::kWarpOp;
    t.site = site;
    t.op = op;
    t.mask = mask;
    t.param = param;
    t.width = width;
    t.bytes = bytes;
    std::memcpy(t.value, value, bytes);
    if (!(mask & (1u << lane))) {
      report(t, std::string(op_name(op)) + " with mask 0x" + hex(mask) + " that does not name the calling lane " +
                    std::to_string(lane));
    } else if (width < 1 || width > kWarp || (width & (width - 1))) {
      report(t, std::string(op_name(op)) + " with width " + std::to_string(width) + " (a power of two <= 32)");
    } else {
      try_complete(t);
    }
    t.fiber->yield();
    if (result)
      std::memcpy(result, t.result,
                  op == WarpOp::kBallot || op == WarpOp::kAny || op == WarpOp::kAll ? sizeof(unsigned) : bytes);
  }

  unsigned active_mask() {
    const int warp = self().tid / kWarp;
    unsigned m = 0;
    for (int l = 0; l < kWarp; ++l) {
      const int tid = warp * kWarp + l;
      if (tid < static_cast<int>(threads_.size()) && threads_[tid]->state != State::kExited) m |= 1u << l;
    }
    return m;
  }

 private:
  static std::string hex(unsigned v) {
    std::ostringstream s;
    s << std::hex << v;
    return s.str();
  }

  std::string thread_name(const EmuThread* t) const {
    std::ostringstream s;
    s << "(" << t->idx.x << "," << t->idx.y << "," << t->idx.z << ")";
    return s.str();
  }

  [[noreturn]] void fail(const std::string& what) {
    t_pool.threads.clear();  // fibers stopped mid-kernel are never resumed: drop them
    std::ostringstream s;
    s << "CUDA emulation: kernel " << config_.kernel << " (launched at " << where(config_.site) << "), block ("
      << block_.x << "," << block_.y << "," << block_.z << "), schedule " << describe(schedule_) << ": " << what;
    throw EmulationError(s.str());
  }

  // An error found inside a fiber: recorded, raised by the scheduler once the fiber yields.
  void report(const EmuThread& t, const std::string& what) {
    if (error_.empty()) error_ = "thread " + thread_name(&t) + " at " + where(t.site) + ": " + what;
  }

  void make_ready(std::vector<int> tids) {
    if (schedule_.order == Order::kReverse) std::reverse(tids.begin(), tids.end());
    for (int tid : tids) {
      threads_[tid]->state = State::kReady;
      ready_.push_back(tid);
    }
  }

  EmuThread* pop_ready() {
    size_t i = 0;
    if (schedule_.order == Order::kRandom) i = std::uniform_int_distribution<size_t>(0, ready_.size() - 1)(rng_);
    const int tid = ready_[i];
    ready_.erase(ready_.begin() + static_cast<std::ptrdiff_t>(i));
    return threads_[tid];
  }

  // Every lane the mask names is at this operation: exchange, and make them all ready.
  void try_complete(EmuThread& t) {
    const int warp = t.tid / kWarp;
    std::vector<int> lanes;
    for (int l = 0; l < kWarp; ++l) {
      if (!(t.mask & (1u << l))) continue;
      const int tid = warp * kWarp + l;
      if (tid >= static_cast<int>(threads_.size())) {
        return report(t, std::string(op_name(t.op)) + " mask 0x" + hex(t.mask) + " names lane " + std::to_string(l) +
                             ", past the block's last thread");
      }
      const EmuThread& o = *threads_[tid];
      if (o.state == State::kExited) {
        return report(t, std::string(op_name(t.op)) + " mask 0x" + hex(t.mask) + " names lane " + std::to_string(l) +
                             ", which has exited");
      }
      if (o.state != State::kWarpOp) return;  // not there yet
      if (o.op != t.op || o.site.line != t.site.line || o.site.file != t.site.file || o.mask != t.mask ||
          o.width != t.width || o.bytes != t.bytes) {
        return report(t, std::string(op_name(t.op)) + " mask 0x" + hex(t.mask) + " names lane " + std::to_string(l) +
                             ", which waits at " + op_name(o.op) + " mask 0x" + hex(o.mask) + " at " + where(o.site));
      }
      lanes.push_back(tid);
    }
    exchange(warp, lanes, t.op);
    make_ready(lanes);
  }

  void exchange(int warp, const std::vector<int>& tids, WarpOp op) {
    if (op == WarpOp::kSyncWarp) return;
    if (op == WarpOp::kBallot || op == WarpOp::kAny || op == WarpOp::kAll) {
      unsigned ballot = 0;
      for (int tid : tids) {
        int pred;
        std::memcpy(&pred, threads_[tid]->value, sizeof(int));
        if (pred) ballot |= 1u << (tid % kWarp);
      }
      const unsigned mask = threads_[tids[0]]->mask;
      const unsigned r = op == WarpOp::kBallot ? ballot
                         : op == WarpOp::kAny  ? unsigned(ballot != 0)
                                               : unsigned(ballot == mask);
      for (int tid : tids) std::memcpy(threads_[tid]->result, &r, sizeof(r));
      return;
    }
    for (int tid : tids) {
      EmuThread& t = *threads_[tid];
      const int lane = tid % kWarp;
      const int w = t.width;
      const int seg = lane & ~(w - 1);
      int src = lane;
      switch (op) {
        case WarpOp::kShflIdx:
          src = seg + (t.param & (w - 1));
          break;
        case WarpOp::kShflUp:
          src = (lane - seg) >= t.param ? lane - t.param : lane;
          break;
        case WarpOp::kShflDown:
          src = (lane - seg) + t.param < w ? lane + t.param : lane;
          break;
        case WarpOp::kShflXor:
          src = (lane ^ t.param) < seg + w ? (lane ^ t.param) : lane;
          break;
        default:
          break;
      }
      if (!(t.mask & (1u << src))) {
        report(t, std::string(op_name(op)) + " reads lane " + std::to_string(src) + ", which the mask 0x" +
                      hex(t.mask) + " does not name (an undefined value on a GPU)");
        src = lane;
      }
      std::memcpy(t.result, threads_[warp * kWarp + src]->value, t.bytes);
    }
  }

  void on_exit(const EmuThread* gone) {
    const int warp = gone->tid / kWarp;
    const int lane = gone->tid % kWarp;
    for (int l = 0; l < kWarp; ++l) {
      const int tid = warp * kWarp + l;
      if (tid >= static_cast<int>(threads_.size())) break;
      const EmuThread& o = *threads_[tid];
      if (o.state == State::kWarpOp && (o.mask & (1u << lane))) {
        fail("thread " + thread_name(&o) + " waits at " + op_name(o.op) + " (" + where(o.site) + ") with mask 0x" +
             hex(o.mask) + ", which names lane " + std::to_string(lane) + "; that thread exited without arriving");
      }
    }
  }

  // Nothing is ready: every live thread must be at one and the same __syncthreads().
  void release_barrier() {
    std::vector<int> waiting;
    const EmuThread* first = nullptr;
    for (EmuThread* t : threads_) {
      if (t->state == State::kExited) continue;
      if (t->state != State::kBarrier) {
        std::ostringstream s;
        s << "deadlock: no thread can run. ";
        int shown = 0;
        for (EmuThread* o : threads_) {
          if (o->state == State::kExited || shown >= 6) continue;
          ++shown;
          s << "thread " << thread_name(o) << " waits at "
            << (o->state == State::kBarrier ? "__syncthreads()" : op_name(o->op)) << " (" << where(o->site) << "); ";
        }
        fail(s.str());
      }
      if (!first) {
        first = t;
      } else if (t->site.line != first->site.line || t->site.file != first->site.file) {
        fail("threads wait at different barriers: thread " + thread_name(first) + " at __syncthreads() " +
             where(first->site) + ", thread " + thread_name(t) + " at " + where(t->site));
      }
      waiting.push_back(t->tid);
    }
    int count = 0;
    for (int tid : waiting) count += threads_[tid]->predicate;
    for (int tid : waiting) {
      threads_[tid]->predicate = count;
      threads_[tid]->arrived = static_cast<int>(waiting.size());
    }
    make_ready(waiting);
  }

  const LaunchConfig& config_;
  const Schedule& schedule_;
  const std::function<void()>& body_;
  uint3_t block_;
  std::mt19937_64 rng_;
  std::vector<EmuThread*> threads_;
  std::vector<int> ready_;
  std::vector<unsigned char> shared_;
  std::string error_;
};

BlockRun& current_block() {
  if (!t_block || !t_thread) throw EmulationError("CUDA emulation: a device function was called outside a kernel");
  return *t_block;
}

}  // namespace

std::string where(const Site& s) {
  return std::string(s.file ? s.file : "?") + ":" + std::to_string(s.line);
}

bool inside_block() {
  return t_block != nullptr;
}

void run_block(const LaunchConfig& config, const Schedule& schedule, const std::function<void()>& body, uint3_t block,
               uint64_t seed) {
  BlockRun(config, schedule, body, block, seed).run();
}

const uint3_t& thread_idx() {
  current_block();
  return t_thread->idx;
}
const uint3_t& block_idx() {
  return current_block().block_idx();
}
const uint3_t& block_dim() {
  return current_block().config().block;
}
const uint3_t& grid_dim() {
  return current_block().config().grid;
}
void* dynamic_shared_memory() {
  return current_block().shared();
}
int syncthreads(Site site, int predicate, int* arrived) {
  return current_block().syncthreads(site, predicate, arrived);
}
unsigned active_mask() {
  return current_block().active_mask();
}

void warp_op(WarpOp op, unsigned mask, const void* value, size_t bytes, int param, int width, void* result, Site site) {
  if (bytes > 16) throw EmulationError("CUDA emulation: a warp operand of more than 16 bytes");
  current_block().warp_op(op, mask, value, bytes, param, width, result, site);
}

}  // namespace vl_emu
