// The gradient's memory. A gradient the size of the logits is written once, into memory the
// process has usually not touched (glibc maps large blocks afresh and unmaps them when freed), and
// on Linux every 4 KiB page of it then costs a page fault and a zeroing on its first write:
// measured on the project's machine, 0.24 ms per MiB, more than the kernel that fills it (a
// 500 MiB gradient: 120 ms of faults against ~30 ms of writing). A training loop frees the logits'
// gradient every step and asks for one of the same size in the next backward, so the block of a
// dead gradient is kept (up to a byte limit) and reused, already faulted in.
// (Transparent huge pages were tried: one fault per 2 MiB, but with this machine's defrag policy
// an advised block stalls in compaction, up to 1.4 s for 500 MiB, whenever other allocations have
// fragmented free memory; the cache avoids faults without that risk.)
// The limit is set at run time (validated_loss/memory.py); VALIDATED_LOSS_GRADIENT_CACHE_MB gives
// the initial one.
#pragma once

#include <ATen/core/Tensor.h>

namespace validated_loss::cpu {

// A tensor shaped like `like` (its strides when it is dense, else contiguous) for a gradient.
at::Tensor empty_gradient_like(const at::Tensor& like);

}  // namespace validated_loss::cpu
