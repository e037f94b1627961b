// Fibers for the CUDA emulation: every CUDA thread of a block is one fiber, and the block's
// scheduler (block_run.cpp) switches between them at barriers and warp operations. Torch-free.
//
// On x86-64 the switch is a few instructions of our own (callee-saved registers, MXCSR and the x87
// control word, then the stack pointer): a block reduction switches 256 fibers several times per
// row, and glibc's swapcontext makes a sigprocmask system call on every switch. Elsewhere
// ucontext is used. Under AddressSanitizer every switch is announced to it
// (__sanitizer_start/finish_switch_fiber), or it would report the other stacks' frames as bad.
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace vl_emu {

class Fiber {
 public:
  using Entry = void (*)(void* arg);

  // A fiber that will run entry(arg) on its own stack when first switched to. entry must never
  // return: it ends by switching away for good (finish()).
  Fiber(Entry entry, void* arg, size_t stack_bytes);
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // From the scheduler's own context into this fiber; returns when the fiber yields or finishes.
  void resume();
  // From inside this fiber back to the scheduler.
  void yield();
  // First thing the entry function does (tells AddressSanitizer which stack it came from).
  void started();
  // The last switch out of a finished fiber (never returns).
  [[noreturn]] void finish();

 private:
  void* stack_ = nullptr;  // mmap'd, with a guard page at its low end
  size_t stack_bytes_ = 0;
#if defined(__x86_64__)
  void* sp_ = nullptr;         // the fiber's saved stack pointer while it is switched out
  void* caller_sp_ = nullptr;  // the scheduler's, while the fiber runs
#else
  ucontext_t context_{};
  ucontext_t caller_{};
#endif
  // AddressSanitizer's bookkeeping of the two stacks.
  void* fake_stack_ = nullptr;
  const void* caller_bottom_ = nullptr;
  size_t caller_size_ = 0;
};

// The default stack size of a CUDA thread's fiber (larger under AddressSanitizer, whose frames are).
size_t default_stack_bytes();

}  // namespace vl_emu
