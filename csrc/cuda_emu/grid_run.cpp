// A grid's launch in the CUDA emulation (block_run.h): its blocks in schedule order on a small pool
// of OS threads (so atomics between blocks are real), each block run by block_run.cpp; the
// schedule read from the environment; the launch counts the emulated suite reports.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "block_run.h"

namespace vl_emu {
namespace {

// The OS threads that run blocks, kept for the life of the process (each keeps its fibers).
class WorkerPool {
 public:
  // Runs job(i) for i in [0, count) on as many OS threads (the caller's is 0) and waits for all.
  void run(int count, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(threads_.size()) < count - 1) {
      const int id = static_cast<int>(threads_.size()) + 1;
      threads_.emplace_back([this, id] { loop(id); });
      threads_.back().detach();
    }
    job_ = &job;
    wanted_ = count - 1;
    running_ = count - 1;
    ++generation_;
    wake_.notify_all();
    lock.unlock();
    job(0);
    lock.lock();
    done_.wait(lock, [&] { return running_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id > wanted_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(id);
      lock.lock();
      if (--running_ == 0) done_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int wanted_ = 0;
  int running_ = 0;
  uint64_t generation_ = 0;
};

WorkerPool& workers() {
  static auto* pool = new WorkerPool();  // never destroyed: its threads outlive static destruction
  return *pool;
}

std::mutex counts_mutex;
std::map<std::string, int64_t>& counts() {
  static std::map<std::string, int64_t> c;
  return c;
}

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

Schedule schedule_from_env() {
  Schedule s;
  if (const char* v = std::getenv("VL_CUDA_EMU_SCHEDULE")) {
    const std::string spec(v);
    if (spec == "reverse") {
      s.order = Order::kReverse;
    } else if (spec.rfind("random", 0) == 0) {
      s.order = Order::kRandom;
      if (spec.size() > 7 && spec[6] == ':') s.seed = std::strtoull(spec.c_str() + 7, nullptr, 10);
    } else if (!spec.empty() && spec != "forward") {
      throw EmulationError("VL_CUDA_EMU_SCHEDULE must be forward, reverse or random[:seed], got '" + spec + "'");
    }
  }
  if (const char* v = std::getenv("VL_CUDA_EMU_WORKERS")) s.workers = std::max(1, std::atoi(v));
  return s;
}

std::string describe(const Schedule& s) {
  switch (s.order) {
    case Order::kForward:
      return "forward";
    case Order::kReverse:
      return "reverse";
    case Order::kRandom:
      return "random:" + std::to_string(s.seed);
  }
  return "?";
}

void run_grid(const LaunchConfig& config, const Schedule& schedule, const std::function<void()>& body) {
  const int64_t threads = int64_t(config.block.x) * config.block.y * config.block.z;
  if (threads < 1 || threads > kMaxBlockThreads) {
    throw EmulationError(std::string("CUDA emulation: kernel ") + config.kernel + " launched at " + where(config.site) +
                         " with " + std::to_string(threads) +
                         " threads per block (1 to 1024: cudaErrorInvalidConfiguration on a GPU)");
  }
  {
    std::lock_guard<std::mutex> lock(counts_mutex);
    ++counts()[config.kernel];
  }
  const int64_t nblocks = int64_t(config.grid.x) * config.grid.y * config.grid.z;
  if (nblocks == 0) return;
  std::vector<int64_t> order(nblocks);
  for (int64_t i = 0; i < nblocks; ++i) order[i] = i;
  if (schedule.order == Order::kReverse) std::reverse(order.begin(), order.end());
  if (schedule.order == Order::kRandom) std::shuffle(order.begin(), order.end(), std::mt19937_64(mix(schedule.seed)));
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
  std::atomic<bool> stop{false};
  auto job = [&](int) {
    while (!stop.load()) {
      const int64_t i = next.fetch_add(1);
      if (i >= nblocks) return;
      const int64_t b = order[i];
      const uint3_t block{static_cast<unsigned>(b % config.grid.x),
                          static_cast<unsigned>((b / config.grid.x) % config.grid.y),
                          static_cast<unsigned>(b / (int64_t(config.grid.x) * config.grid.y))};
      try {
        run_block(config, schedule, body, block, mix(schedule.seed ^ mix(static_cast<uint64_t>(b))));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        stop = true;
      }
    }
  };
  const int count = static_cast<int>(std::min<int64_t>(schedule.workers, nblocks));
  if (count <= 1 || inside_block()) {
    job(0);
  } else {
    static std::mutex one_launch_at_a_time;  // the pool runs one grid at a time
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    workers().run(count, job);
  }
  if (error) std::rethrow_exception(error);
}

std::string launch_counts() {
  std::lock_guard<std::mutex> lock(counts_mutex);
  std::ostringstream s;
  bool first = true;
  for (const auto& [name, n] : counts()) {
    s << (first ? "" : ", ") << name << " x" << n;
    first = false;
  }
  return s.str();
}

void reset_launch_counts() {
  std::lock_guard<std::mutex> lock(counts_mutex);
  counts().clear();
}

}  // namespace vl_emu
