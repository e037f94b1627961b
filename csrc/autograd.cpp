// Autograd of cross_entropy_fwd, in C++: a torch::autograd::Function registered for the Autograd
// key, so a training step's loss crosses no Python between the op call and the gradient (the
// Python autograd torch.library registers cost ~40-60 us a call, ten times the kernels' work on
// small logits; issue 16). What _autograd.py's Python did for this op, it does:
//   - the forward saves the logits, target, weight, the (max, log_sum) rows and the total weight;
//   - the backward checks earlier calls' deferred statuses first (eager tensors only: under
//     torch.compile's tracing the compiled graph's ops check them), explains logits edited in
//     place after the loss (checks.logits_modified_error, through python_errors.cpp), takes the
//     lse gradient from its log_sum column, and writes the gradient over the logits for
//     inplace_backward when it can (see _gradient_in_place below), else calls cross_entropy_bwd.
// The backward calls the ops through the dispatcher, so under create_graph the backward op records
// its own (Python) autograd: second order is unchanged. The other ops' autograd stays in Python.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "validation/deferred.h"  // pending_checks()
#include "python_errors.h"

namespace validated_loss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                          int64_t, int64_t, double, bool, int64_t, double, double, bool,
                                                          bool);
using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&,
                      const Tensor&, int64_t, int64_t, double, double, double, const std::optional<Tensor>&);
using BwdInPlaceSig = void(Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&,
                           const Tensor&, int64_t, int64_t, double, double, double, const std::optional<Tensor>&);

template <class Sig>
const c10::TypedOperatorHandle<Sig>& op(const char* name) {
  // One lookup per op (a function-local static per signature; each signature names one op here).
  static const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Sig>();
  return handle;
}

const auto& fwd_op() {
  return op<FwdSig>("validated_loss::cross_entropy_fwd");
}
const auto& bwd_op() {
  return op<BwdSig>("validated_loss::cross_entropy_bwd");
}
const auto& bwd_in_place_op() {
  return op<BwdInPlaceSig>("validated_loss::cross_entropy_bwd_");
}

// A tensor torch.compile (dynamo, AOTAutograd, compiled autograd) is tracing: a fake or functional
// stand-in, never a real eager tensor. The Python autograd asked torch.compiler.is_compiling().
bool traced(const Tensor& t) {
  const auto keys = t.key_set();
  return keys.has(c10::DispatchKey::Python) || keys.has(c10::DispatchKey::Functionalize);
}

std::optional<Tensor> optional_tensor(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

struct CrossEntropyFwd : public torch::autograd::Function<CrossEntropyFwd> {
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target,
                               const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                               double label_smoothing, bool check_finite, int64_t validate, double lse_square_scale,
                               double softcap, bool acc_loss, bool inplace_backward) {
    auto [loss, lse, total_weight, status] = [&] {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return fwd_op().call(logits, target, weight, reduction, ignore_index, label_smoothing, check_finite, validate,
                           lse_square_scale, softcap, acc_loss, inplace_backward);
    }();
    ctx->set_materialize_grads(false);  // no zero-filled gradients for lse, total_weight and status
    ctx->save_for_backward({logits, target, weight.value_or(Tensor()), lse, total_weight});
    // Two entries rather than one per option: each is a hash-map insert per call.
    ctx->saved_data["ints"] = std::vector<int64_t>{reduction, ignore_index, inplace_backward};
    ctx->saved_data["floats"] = std::vector<double>{label_smoothing, lse_square_scale, softcap};
    return {loss, lse, total_weight, status};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    constexpr size_t kInputs = 12;
    const std::vector<int64_t> ints = ctx->saved_data["ints"].toIntVector();
    const std::vector<double> floats = ctx->saved_data["floats"].toDoubleVector();
    const int64_t reduction = ints[0], ignore_index = ints[1];
    const bool inplace_backward = ints[2] != 0;
    const double label_smoothing = floats[0], lse_square_scale = floats[1], softcap = floats[2];
    variable_list saved;
    try {
      saved = ctx->get_saved_variables();
    } catch (const c10::Error& error) {
      // Our own gradient write bumped the version (inplace_backward): torch's error, as README says.
      if (inplace_backward || !edited_in_place(error)) throw;
      throw_logits_modified(error);  // the logits edited in place after the loss, explained
    }
    const Tensor &logits = saved[0], &target = saved[1], &weight = saved[2], &lse = saved[3], &total_weight = saved[4];
    // validate="deferred": a bad target is reported by backward at the latest (_deferred.check_pending).
    // Python's check (_deferred.check_pending: not while a CUDA stream is being captured) runs only
    // when something is pending, which a CPU-only process never has.
    if (!traced(logits) && pending_checks() > 0) check_pending_in_python();

    variable_list result(kInputs);
    Tensor grad_loss = grads[0];
    // The saved lse is (max, log_sum) per row. max is a constant shift: the gradient of max + log_sum
    // (what return_lse gives) arrives on both columns and is taken from log_sum's, whose derivative
    // with max held fixed is the softmax.
    const std::optional<Tensor> lse_grad =
        grads[1].defined() ? std::optional<Tensor>(grads[1].select(1, 1)) : std::nullopt;
    if (!ctx->needs_input_grad(0) || (!grad_loss.defined() && !lse_grad)) return result;
    // The loss's shape: 'none' losses have the target's (one per row), the reductions none.
    if (!grad_loss.defined()) {
      grad_loss = at::zeros(reduction == 0 /* none */ ? target.sizes() : at::IntArrayRef(), logits.options());
    }
    // Without create_graph the backward ops' autograd (Python, for second order) would only pass
    // the call on below itself: skip it. With create_graph it records the double backward.
    std::optional<at::AutoDispatchBelowAutograd> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    // inplace_backward, when the gradient can be written over the logits: not under create_graph
    // (double backward differentiates this gradient: it must be a graph of its own), not while
    // torch.compile or compiled autograd traces the backward, and only over logits whose every
    // element has memory of its own (the check cross_entropy_bwd_ makes); otherwise a new gradient.
    if (inplace_backward && !at::GradMode::is_enabled() && !traced(logits) &&
        at::has_internal_overlap(logits) == at::MemOverlap::No) {
      Tensor written = logits;
      bwd_in_place_op().call(written, grad_loss, target, optional_tensor(weight), lse, total_weight, reduction,
                             ignore_index, label_smoothing, lse_square_scale, softcap, lse_grad);
      // The logits now hold their gradient: any other node that saved them (logits.exp(), a second
      // backward through this graph) must raise rather than read it.
      torch::autograd::increment_version(logits);
      result[0] = logits;
    } else {
      result[0] = bwd_op().call(grad_loss, logits, target, optional_tensor(weight), lse, total_weight, reduction,
                                ignore_index, label_smoothing, lse_square_scale, softcap, lse_grad);
    }
    return result;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> cross_entropy_fwd_autograd(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction,
    int64_t ignore_index, double label_smoothing, bool check_finite, int64_t validate, double lse_square_scale,
    double softcap, bool acc_loss, bool inplace_backward) {
  // No graph to record (inference, evaluation losses): the op below autograd, without a node.
  const bool weight_grad = weight.has_value() && weight->defined() && weight->requires_grad();
  if (!at::GradMode::is_enabled() || !(logits.requires_grad() || weight_grad)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(logits, target, weight, reduction, ignore_index, label_smoothing, check_finite, validate,
                         lse_square_scale, softcap, acc_loss, inplace_backward);
  }
  variable_list out =
      CrossEntropyFwd::apply(logits, target, weight, reduction, ignore_index, label_smoothing, check_finite, validate,
                             lse_square_scale, softcap, acc_loss, inplace_backward);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

// Registered on demand (validated_loss._C.register_autograd(), from _autograd.py) rather than by a
// static initialiser: with a torch of another minor release than the build's, the C++ autograd
// internals torch::autograd::Function instantiates (e.g. _wrap_outputs) may not exist, and _C, loaded
// with lazy binding (_library.py), must not call them; Python's autograd is registered instead.
void register_cpp_autograd() {
  static std::unique_ptr<torch::Library> library;
  if (library) return;
  library = std::make_unique<torch::Library>(torch::Library::IMPL, "validated_loss", c10::DispatchKey::Autograd,
                                             __FILE__, __LINE__);
  library->impl("cross_entropy_fwd", &cross_entropy_fwd_autograd);
}

}  // namespace validated_loss
