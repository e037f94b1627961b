// The gradient's memory. A gradient the size of the logits is written once into memory the
// process has never touched, and on Linux every 4 KiB page of it then costs a page fault on its
// first write: measured here, 0.24 ms per MiB, more than the kernel that fills it (a 500 MiB
// gradient: 120 ms of faults against ~30 ms of writing). Advising the buffer for transparent huge
// pages turns 512 faults into one (torch offers the same for every allocation through its
// THP_MEM_ALLOC_ENABLE environment variable; this applies it to the one buffer where it matters).
#pragma once

#include <ATen/core/Tensor.h>

namespace validated_loss::cpu {

// at::empty_like(like), with its pages advised for transparent huge pages when it is large
// enough for that to matter. VALIDATED_LOSS_HUGE_PAGES=0 in the environment turns the advice off.
at::Tensor empty_gradient_like(const at::Tensor& like);

}  // namespace validated_loss::cpu
