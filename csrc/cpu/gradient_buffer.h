// The gradient's memory. A gradient the size of the logits is written once, into memory the
// process has usually never touched (glibc maps large blocks afresh and unmaps them on free), and
// on Linux every 4 KiB page of it then costs a page fault and a zeroing on its first write:
// measured here 0.24 ms per MiB, more than the kernel that fills it (a 500 MiB gradient: 120 ms
// of faults against ~30 ms of writing). Two remedies, both for large gradients only:
//  - huge pages: the block is advised for transparent huge pages, one fault per 2 MiB instead of
//    per 4 KiB (torch offers the same for all allocations with THP_MEM_ALLOC_ENABLE=1);
//  - a small cache: when a gradient tensor dies its block is kept (up to a byte limit) and the
//    next gradient of about the same size reuses it, already faulted in. A training loop frees
//    the logits' gradient every step and allocates it again in the next backward.
// VALIDATED_LOSS_HUGE_PAGES=0 turns the advice off; the cache limit is set at run time
// (set_gradient_cache_limit; VALIDATED_LOSS_GRADIENT_CACHE_MB gives the initial one).
#pragma once

#include <ATen/core/Tensor.h>

namespace validated_loss::cpu {

// A tensor shaped like `like` (its strides when it is dense, else contiguous) for a gradient.
at::Tensor empty_gradient_like(const at::Tensor& like);

}  // namespace validated_loss::cpu
