#include "gradient_buffer.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

namespace validated_loss::cpu {
namespace {

constexpr size_t kBlockAlign = size_t{2} << 20;  // whole 2 MiB blocks: near sizes share one
// Below this a gradient spans too few pages to matter, and glibc serves it from memory it has
// already touched: torch's allocator takes it.
constexpr size_t kOwnBlocksFrom = size_t{4} << 20;
constexpr size_t kMaxCachedBlocks = 4;
constexpr int64_t kDefaultCacheLimit = int64_t{2} << 30;

size_t round_up(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

int64_t initial_cache_limit() {
  const char* v = std::getenv("VALIDATED_LOSS_GRADIENT_CACHE_MB");
  return v == nullptr ? kDefaultCacheLimit : std::max<int64_t>(0, std::atoll(v)) << 20;
}

// Free blocks by size (multiples of 2 MiB), kept for the next gradient. Never
// destroyed: tensors may die during interpreter shutdown, after static destructors have run.
class BlockCache {
 public:
  // A cached block of at least `bytes` and at most 1/8 more, or nullptr.
  void* take(size_t bytes, size_t* block_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!enabled_) return nullptr;
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 8) return nullptr;
    *block_bytes = it->first;
    void* block = it->second;
    cached_bytes_ -= it->first;
    free_.erase(it);
    return block;
  }

  // Keeps the block when the limit allows, else frees it.
  void give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (enabled_ && free_.size() < kMaxCachedBlocks && static_cast<int64_t>(cached_bytes_ + bytes) <= limit_) {
        free_.emplace(bytes, block);
        cached_bytes_ += bytes;
        return;
      }
    }
    std::free(block);
  }

  int64_t release() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    int64_t released = 0;
    for (const auto& [bytes, block] : blocks) {
      std::free(block);
      released += static_cast<int64_t>(bytes);
    }
    return released;
  }

  int64_t set_limit(int64_t limit) {
    int64_t previous;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      previous = limit_;
      limit_ = std::max<int64_t>(0, limit);
    }
    if (limit <= 0) release();
    return previous;
  }

  // Disabled, blocks are neither taken nor kept; the ones held stay for when it is enabled again.
  bool set_enabled(bool enabled) {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool previous = enabled_;
    enabled_ = enabled;
    return previous;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
  int64_t limit_ = initial_cache_limit();
  bool enabled_ = true;
};

BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

struct Block {
  void* data;
  size_t bytes;
};

void return_block(void* ctx) {
  auto* block = static_cast<Block*>(ctx);
  cache().give(block->data, block->bytes);
  delete block;
}

// Large requests get a cached block or a fresh one; small ones go to torch's allocator.
struct GradientAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n < kOwnBlocksFrom) return c10::GetCPUAllocator()->allocate(n);
    const size_t wanted = round_up(n, kBlockAlign);
    size_t bytes = wanted;
    void* data = cache().take(wanted, &bytes);
    if (data == nullptr && posix_memalign(&data, 64, wanted) != 0) throw std::bad_alloc();
    return {data, new Block{data, bytes}, &return_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};

GradientAllocator& gradient_allocator() {
  static GradientAllocator* instance = new GradientAllocator();
  return *instance;
}

int64_t empty_gradient_cache() {
  return cache().release();
}

int64_t set_gradient_cache_limit(int64_t limit_bytes) {
  return cache().set_limit(limit_bytes);
}

bool set_gradient_cache_enabled(bool enabled) {
  return cache().set_enabled(enabled);
}

int64_t gradient_cache_bytes() {
  return cache().cached_bytes();
}

}  // namespace

at::Tensor empty_gradient_like(const at::Tensor& like) {
  // empty_like's layout: the same strides for a dense tensor, contiguous otherwise.
  if (!like.is_non_overlapping_and_dense()) return at::empty_like(like, at::MemoryFormat::Contiguous);
  return at::detail::empty_strided_generic(like.sizes(), like.strides(), &gradient_allocator(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type());
}

// No tensor arguments, so no dispatch key: registered for every backend at once.
TORCH_LIBRARY_IMPL(validated_loss, CompositeExplicitAutograd, m) {
  m.impl("empty_gradient_cache", &empty_gradient_cache);
  m.impl("set_gradient_cache_limit", &set_gradient_cache_limit);
  m.impl("set_gradient_cache_enabled", &set_gradient_cache_enabled);
  m.impl("gradient_cache_bytes", &gradient_cache_bytes);
}

}  // namespace validated_loss::cpu
