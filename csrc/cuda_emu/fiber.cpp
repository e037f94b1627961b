#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define VL_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VL_EMU_ASAN 1
#endif
#endif

#if defined(VL_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__)
// vl_emu_switch(save, load): pushes the callee-saved registers and the floating-point control
// words, stores the stack pointer in *save, loads `load`, pops the same from there and returns
// into the other context. A new fiber's stack is laid out as if it had been switched out at the
// start of vl_emu_trampoline, which calls entry(arg) (r13, r12) with the stack aligned per the ABI.
extern "C" void vl_emu_switch(void** save, void* load);
extern "C" void vl_emu_trampoline();
asm(R"(
  .text
  .globl vl_emu_switch
  .hidden vl_emu_switch
  .type vl_emu_switch,@function
vl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size vl_emu_switch,.-vl_emu_switch

  .globl vl_emu_trampoline
  .hidden vl_emu_trampoline
  .type vl_emu_trampoline,@function
vl_emu_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size vl_emu_trampoline,.-vl_emu_trampoline
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

namespace vl_emu {

size_t default_stack_bytes() {
#if defined(VL_EMU_ASAN)
  return size_t{512} << 10;
#else
  return size_t{128} << 10;
#endif
}

namespace {

void before_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if defined(VL_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

void after_switch(void* fake_stack, const void** old_bottom, size_t* old_size) {
#if defined(VL_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_size);
#else
  (void)fake_stack, (void)old_bottom, (void)old_size;
#endif
}

}  // namespace

Fiber::Fiber(Entry entry, void* arg, size_t stack_bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  stack_bytes_ = (stack_bytes + page - 1) / page * page + page;
  stack_ = mmap(nullptr, stack_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (stack_ == MAP_FAILED) throw std::bad_alloc();
  mprotect(stack_, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
#if defined(__x86_64__)
  auto top = (reinterpret_cast<uintptr_t>(stack_) + stack_bytes_) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<uint64_t*>(top - 16 - 8 * 8);
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  frame[0] = uint64_t{mxcsr} | (uint64_t{fpucw} << 32);
  frame[1] = 0;                                               // r15
  frame[2] = 0;                                               // r14
  frame[3] = reinterpret_cast<uint64_t>(entry);               // r13
  frame[4] = reinterpret_cast<uint64_t>(arg);                 // r12
  frame[5] = 0;                                               // rbx
  frame[6] = 0;                                               // rbp
  frame[7] = reinterpret_cast<uint64_t>(&vl_emu_trampoline);  // return address
  sp_ = frame;
#else
  getcontext(&context_);
  context_.uc_stack.ss_sp = static_cast<char*>(stack_) + page;
  context_.uc_stack.ss_size = stack_bytes_ - page;
  context_.uc_link = nullptr;
  makecontext(&context_, reinterpret_cast<void (*)()>(entry), 1, arg);
#endif
}

Fiber::~Fiber() {
#if defined(VL_EMU_ASAN)
  // A fiber dropped mid-kernel leaves its frames' redzones poisoned; a later mapping at the same
  // address must not inherit them.
  __asan_unpoison_memory_region(stack_, stack_bytes_);
#endif
  if (stack_) munmap(stack_, stack_bytes_);
}

void Fiber::resume() {
  void* fake = nullptr;
  before_switch(&fake, static_cast<char*>(stack_), stack_bytes_);
#if defined(__x86_64__)
  vl_emu_switch(&caller_sp_, sp_);
#else
  swapcontext(&caller_, &context_);
#endif
  after_switch(fake, nullptr, nullptr);
}

void Fiber::yield() {
  before_switch(&fake_stack_, caller_bottom_, caller_size_);
#if defined(__x86_64__)
  vl_emu_switch(&sp_, caller_sp_);
#else
  swapcontext(&context_, &caller_);
#endif
  after_switch(fake_stack_, &caller_bottom_, &caller_size_);
}

void Fiber::started() {
  after_switch(nullptr, &caller_bottom_, &caller_size_);
}

void Fiber::finish() {
  before_switch(nullptr, caller_bottom_, caller_size_);  // nullptr: this fiber's fake stack is freed
#if defined(__x86_64__)
  vl_emu_switch(&sp_, caller_sp_);
#else
  setcontext(&caller_);
#endif
  std::abort();  // never resumed
}

}  // namespace vl_emu
