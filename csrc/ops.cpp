// The library's schemas: the only place they are written. Each backend file registers kernels
// for them with its own TORCH_LIBRARY_IMPL; Python registers fake kernels and autograd (_ops.py).
//
// Conventions shared by every op:
//   logits      (N, C, d1..dk), k >= 0, class dim 1, any strides (the Python layer turns a 1-D
//               (C,) input into (1, C)).
//   reduction   at::Reduction codes: 0 none, 1 mean, 2 sum.
//   'none' loss has the target's shape (index) or the logits' shape without dim 1 (probs).
//   lse         float[rows][2] = {max, log sum exp(x - max)} per row (float64 for float64 logits),
//               rows in row-major (n, d1..dk) order; saved for the backward so it never
//               recomputes them. Kept apart because max + log_sum loses log_sum when |max| is large.
//   status      int64[6]: first invalid target (flat position, value), invalid count, first
//               non-finite logit (row, class), non-finite count; -1 positions when none.
//   validate    0 off, 1 sync, 2 deferred (CUDA; the CPU always raises at once). 1 is taken as 2
//               while the stream is being captured into a CUDA graph (see validation/deferred_cuda.cu).
//   lse_square_scale  z-loss: + scale * lse^2 per counted row, inside the reduction (0: none).
//   softcap     logits replaced by softcap * tanh(x / softcap) before the softmax (0: none).
//               Both are class-index options (xent_row.h says how they enter loss and gradient).
//   grad_lse    the gradient of each row's lse (max + log_sum), when the caller returns it.
//   acc_loss    the loss (reduced, or the 'none' rows) in the accumulate dtype instead of the
//               logits': float32 from float16/bfloat16 logits read as they are (autocast's fp32
//               policy without a float32 copy of the logits); no change for float32/float64.
//   inplace_backward  for autograd only (the kernels ignore it): the backward writes the gradient
//               over the logits with cross_entropy_bwd_ instead of allocating one.
#include <Python.h>
#include <torch/library.h>

namespace validated_loss {
PyMethodDef* deferred_python_methods();  // validation/deferred_python.cpp
}

// `import validated_loss._C` loads this library, which registers the ops below; every op is
// reached through torch.ops.validated_loss. The module itself holds only deferred validation's
// host-state functions (validation/deferred_python.cpp).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, validated_loss::deferred_python_methods()};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(validated_loss, m) {
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int reduction, "
      "int ignore_index, float label_smoothing, bool check_finite=False, int validate=1, "
      "float lse_square_scale=0., float softcap=0., bool acc_loss=False, bool inplace_backward=False) "
      "-> (Tensor loss, Tensor lse, Tensor total_weight, Tensor status)");
  m.def(
      "cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, "
      "Tensor lse, Tensor total_weight, int reduction, int ignore_index, float label_smoothing, "
      "float lse_square_scale=0., float softcap=0., Tensor? grad_lse=None) -> Tensor");
  // cross_entropy_bwd with the gradient written over the logits themselves (inplace_backward):
  // no gradient-sized allocation. The logits must be non-overlapping and dense.
  m.def(
      "cross_entropy_bwd_(Tensor(a!) logits, Tensor grad_loss, Tensor target, Tensor? weight, "
      "Tensor lse, Tensor total_weight, int reduction, int ignore_index, float label_smoothing, "
      "float lse_square_scale=0., float softcap=0., Tensor? grad_lse=None) -> ()");
  // The chunk step of linear_cross_entropy: forward and gradient in one pass, the gradient of
  // sum_r grad_loss_r * loss_r + grad_lse_r * lse_r (grad_loss None: 1) written over the logits.
  // reduction 0 ('none': per-row losses, logits' dtype) or 2 ('sum': accumulate dtype).
  m.def(
      "cross_entropy_fwd_grad(Tensor(a!) logits, Tensor target, Tensor? weight, int reduction, "
      "int ignore_index, float label_smoothing, float lse_square_scale, float softcap, "
      "Tensor? grad_loss, Tensor? grad_lse, bool check_finite=False, int validate=1) "
      "-> (Tensor loss, Tensor lse, Tensor total_weight, Tensor status)");
  m.def(
      "cross_entropy_prob_fwd(Tensor logits, Tensor target, Tensor? weight, int reduction, "
      "float label_smoothing, bool check_finite=False, bool acc_loss=False) "
      "-> (Tensor loss, Tensor lse, Tensor status)");
  m.def(
      "cross_entropy_prob_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, "
      "Tensor lse, int reduction, float label_smoothing, bool target_grad) "
      "-> (Tensor grad_logits, Tensor grad_target)");
  // Deferred validation (csrc/validation/deferred.h). Queues a status record made outside the loss ops
  // (linear_cross_entropy's whole-target check) to be checked at the next call or backward:
  // CUDA copies it behind an event (under capture: into a slot the graph publishes into).
  m.def(
      "deferred_submit(Tensor status, SymInt[] target_shape, int num_classes, int ignore_index, "
      "SymInt[] logits_shape) -> ()");
  // Raises the first error earlier calls' statuses show once they have reached the host (queued
  // copies, CUDA-graph replays); never waits.
  m.def("check_deferred() -> ()");
  // Raises the error a status record (on the CPU) describes, if any: the one place the messages
  // for invalid targets and non-finite logits are written, for every device and mode.
  // The CPU gradient block cache (csrc/cpu/gradient_buffer.h): free what it holds (returns the
  // bytes released), set its byte limit (returns the previous one; 0 disables it), switch it off
  // and on without freeing what it holds (returns the previous state), its size.
  m.def("empty_gradient_cache() -> int");
  m.def("set_gradient_cache_limit(int limit_bytes) -> int");
  m.def("set_gradient_cache_enabled(bool enabled) -> bool");
  m.def("gradient_cache_bytes() -> int");
  m.def(
      "raise_for_status(Tensor status, SymInt[] target_shape, int num_classes, int ignore_index, "
      "SymInt[] logits_shape) -> ()");
}
