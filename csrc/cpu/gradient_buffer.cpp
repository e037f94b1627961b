#include "gradient_buffer.h"

#include <ATen/ops/empty_like.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace validated_loss::cpu {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
// Below this a buffer spans too few huge pages to matter, and small buffers are usually served
// from memory glibc has already touched.
constexpr size_t kAdviseFrom = size_t{4} << 20;

bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("VALIDATED_LOSS_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return wanted;
}

// Advice on the whole 2 MiB pages inside [data, data + bytes): pages already present stay as
// they are, pages not yet touched come in 2 MiB at a time. Failure (no THP in this kernel,
// "never" policy) leaves ordinary pages, so the result is only ever ignored.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace

at::Tensor empty_gradient_like(const at::Tensor& like) {
  at::Tensor grad = at::empty_like(like);
  const size_t bytes = grad.storage().nbytes();
  if (bytes >= kAdviseFrom && huge_pages_wanted()) advise_huge_pages(grad.storage().mutable_data(), bytes);
  return grad;
}

}  // namespace validated_loss::cpu
