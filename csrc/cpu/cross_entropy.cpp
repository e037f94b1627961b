// The CPU ops: check the contract, allocate outputs, call the kernels of the widest instruction
// set this CPU has, and raise at once for a bad target (the CPU has no queue to wait on).
#include <ATen/Dispatch.h>
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../op_common.h"
#include "../status.h"
#include "gradient_buffer.h"
#include "kernel_api.h"

namespace validated_loss::cpu {
namespace {

using at::Tensor;

struct KernelTable {
  const char* name;
  decltype(&DEFAULT::index_forward) index_forward;
  decltype(&DEFAULT::index_backward) index_backward;
  decltype(&DEFAULT::index_forward_grad) index_forward_grad;
  decltype(&DEFAULT::prob_forward) prob_forward;
  decltype(&DEFAULT::prob_backward) prob_backward;
};

#define VALIDATED_LOSS_KERNEL_TABLE(CAP)                                                                               \
  KernelTable {                                                                                                        \
    #CAP, &CAP::index_forward, &CAP::index_backward, &CAP::index_forward_grad, &CAP::prob_forward, &CAP::prob_backward \
  }

// ATen's own choice (it honours ATEN_CPU_CAPABILITY), so we never run wider than torch does.
const KernelTable& kernels() {
  static const KernelTable table = [] {
#ifdef VALIDATED_LOSS_X86_KERNELS
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return VALIDATED_LOSS_KERNEL_TABLE(AVX512);
    if (cap == "AVX2") return VALIDATED_LOSS_KERNEL_TABLE(AVX2);
#endif
    return VALIDATED_LOSS_KERNEL_TABLE(DEFAULT);
  }();
  return table;
}

LogitsView view_of(const Tensor& t) {
  return LogitsView{t.scalar_type(), t.const_data_ptr(), make_row_geometry(t)};
}

LossOptions options_of(const Tensor& weight_acc, double label_smoothing, int64_t reduction, double z_scale = 0,
                       double softcap = 0) {
  return LossOptions{data_or_null(weight_acc), label_smoothing, reduction, z_scale, softcap};
}

// Where the kernels write a forward's per-row results: the 'none' losses and the lse.
ForwardOutputs forward_outputs(const ForwardTensors& o, int64_t reduction, bool check_finite, const Tensor& logits) {
  const bool rows = reduction == kReductionNone;
  return ForwardOutputs{rows ? o.loss.mutable_data_ptr() : nullptr, o.lse.mutable_data_ptr(), check_finite,
                        rows && o.loss.scalar_type() != logits.scalar_type()};
}

// What the kernels' totals give the outputs once the loop is done: the status record, the reduced
// loss (mean divided by `mean_divisor`) and the total weight. Raises for a bad target or logit.
void finish_forward(const ForwardTotals& totals, const ForwardTensors& o, int64_t reduction, double mean_divisor,
                    bool smoothing, const Tensor& logits, const Tensor& target, int64_t ignore_index) {
  int64_t* s = o.status.mutable_data_ptr<int64_t>();
  s[kStatusInvalidPosition] = totals.invalid.position;
  s[kStatusInvalidValue] = totals.invalid.value;
  s[kStatusInvalidCount] = totals.invalid.count;
  s[kStatusNonFiniteRow] = totals.nonfinite_row;
  s[kStatusNonFiniteClass] = totals.nonfinite_class;
  s[kStatusNonFiniteCount] = totals.nonfinite_count;
  raise_for_status(s, target.sizes(), logits.size(1), ignore_index, logits.sizes());
  if (reduction != kReductionNone) {
    double value = totals.loss_sum;
    if (reduction == kReductionMean) {
      value = accumulate_dtype(logits.scalar_type()) == at::kDouble
                  ? mean_loss<double>(totals.loss_sum, mean_divisor, smoothing)
                  : mean_loss<float>(totals.loss_sum, mean_divisor, smoothing);
    }
    store_narrowed(o.loss, value);
  }
  store_narrowed(o.total_weight, totals.total_weight);
}

// grad_output as the kernels want it: per row for 'none', else one scalar (divided by the total
// weight for 'mean'). grad_output is on the CPU, so reading it costs nothing.
struct ScaleHolder {
  Tensor per_row, lse_grad;
  GradScale scale;
};

// grad_lse: the gradient of each row's returned lse (one per row), or undefined.
ScaleHolder grad_scale(const Tensor& grad_loss, int64_t reduction, double total_weight, const Tensor& logits,
                       at::ScalarType acc, const std::optional<Tensor>& grad_lse = std::nullopt) {
  ScaleHolder h;
  if (reduction == kReductionNone) {
    h.per_row = rows_for_kernel(grad_loss, logits, acc);
    h.scale = GradScale{h.per_row.const_data_ptr(), 0.0};
  } else {
    h.scale = GradScale{nullptr, reduction_scale<double>(reduction, grad_loss.item<double>(), total_weight)};
  }
  h.lse_grad = rows_for_kernel(grad_lse, logits, acc);
  h.scale.lse_grad = data_or_null(h.lse_grad);
  return h;
}

GradOutput grad_output_of(const Tensor& grad) {
  return GradOutput{grad.mutable_data_ptr(), make_row_geometry(grad)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> cross_entropy_fwd_cpu(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction,
    int64_t ignore_index, double label_smoothing, bool check_finite, int64_t /*validate: the CPU always raises*/,
    double lse_square_scale, double softcap, bool acc_loss, bool /*inplace_backward: autograd's*/) {
  check_index_op_args(logits, target, weight, reduction, lse_square_scale, softcap);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Tensor target_c = target.contiguous();
  const Tensor w = weights_for_kernel(weight, acc);
  const ForwardTensors o = empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), acc_loss));
  const IndexTargets t{target_c.const_data_ptr(), target_c.scalar_type() == at::kByte, ignore_index};
  const ForwardTotals totals =
      kernels().index_forward(view_of(logits), t, options_of(w, label_smoothing, reduction, lse_square_scale, softcap),
                              forward_outputs(o, reduction, check_finite, logits));
  finish_forward(totals, o, reduction, totals.total_weight, label_smoothing > 0, logits, target, ignore_index);
  return {o.loss, o.lse, o.total_weight, o.status};
}

// The class-index gradient: into a fresh tensor, or (in_place) over the logits themselves, which
// every kernel path allows: each row or block of rows is read whole before its gradient is stored.
Tensor index_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& target,
                      const std::optional<Tensor>& weight, const Tensor& lse, const Tensor& total_weight,
                      int64_t reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
                      double softcap, const std::optional<Tensor>& grad_lse, bool in_place) {
  check_index_op_args(logits, target, weight, reduction, lse_square_scale, softcap);
  if (in_place) check_in_place_gradient(logits);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Tensor target_c = target.contiguous();
  const Tensor w = weights_for_kernel(weight, acc);
  const LogitsView x = view_of(logits);
  check_rows_tensor(grad_lse, x.geo.num_rows, "grad_lse");
  check_grad_loss(grad_loss, reduction, x.geo.num_rows);
  const Tensor lse_c = saved_lse(lse, logits, acc, x.geo.num_rows);
  const ScaleHolder scale = grad_scale(grad_loss, reduction, total_weight.item<double>(), logits, acc, grad_lse);
  const Tensor grad = in_place ? logits : empty_gradient_like(logits);
  const IndexTargets t{target_c.const_data_ptr(), target_c.scalar_type() == at::kByte, ignore_index};
  kernels().index_backward(x, t, options_of(w, label_smoothing, reduction, lse_square_scale, softcap),
                           lse_c.const_data_ptr(), scale.scale, grad_output_of(grad));
  return grad;
}

Tensor cross_entropy_bwd_cpu(const Tensor& grad_loss, const Tensor& logits, const Tensor& target,
                             const std::optional<Tensor>& weight, const Tensor& lse, const Tensor& total_weight,
                             int64_t reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
                             double softcap, const std::optional<Tensor>& grad_lse) {
  return index_backward(grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
                        lse_square_scale, softcap, grad_lse, false);
}

void cross_entropy_bwd__cpu(Tensor& logits, const Tensor& grad_loss, const Tensor& target,
                            const std::optional<Tensor>& weight, const Tensor& lse, const Tensor& total_weight,
                            int64_t reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
                            double softcap, const std::optional<Tensor>& grad_lse) {
  index_backward(grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
                 lse_square_scale, softcap, grad_lse, true);
}

// Forward and gradient in one pass over a (chunk of) logits, the gradient written over the logits:
// each row is scanned, then its gradient computed while it is still in cache. For 'sum' the loss
// comes back in the accumulate dtype (a linear layer's chunks add these up); 'none' gives the
// rows' losses in the logits' dtype. The gradient is that of sum_r grad_loss_r * loss_r +
// grad_lse_r * lse_r (grad_loss: one per row for 'none', a scalar for 'sum', or none for 1).
std::tuple<Tensor, Tensor, Tensor, Tensor> cross_entropy_fwd_grad_cpu(
    Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
    double label_smoothing, double lse_square_scale, double softcap, const std::optional<Tensor>& grad_loss,
    const std::optional<Tensor>& grad_lse, bool check_finite, int64_t /*validate: the CPU always raises*/) {
  check_fwd_grad_args(logits, target, weight, reduction, lse_square_scale, softcap);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Tensor target_c = target.contiguous();
  const Tensor w = weights_for_kernel(weight, acc);
  const LogitsView x = view_of(logits);
  check_rows_tensor(grad_lse, x.geo.num_rows, "grad_lse");
  // 'sum' comes back in the accumulate dtype (a linear layer's chunks add these up).
  const ForwardTensors o =
      empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), reduction != kReductionNone));
  const ScaleHolder scale =
      grad_scale(fwd_grad_loss(grad_loss, logits, reduction, x.geo.num_rows), reduction, 1.0, logits, acc, grad_lse);
  const IndexTargets t{target_c.const_data_ptr(), target_c.scalar_type() == at::kByte, ignore_index};
  const ForwardTotals totals = kernels().index_forward_grad(
      x, t, options_of(w, label_smoothing, reduction, lse_square_scale, softcap),
      forward_outputs(o, reduction, check_finite, logits), scale.scale, grad_output_of(logits));
  finish_forward(totals, o, reduction, 1.0, false, logits, target, ignore_index);  // no 'mean' here
  return {o.loss, o.lse, o.total_weight, o.status};
}

std::tuple<Tensor, Tensor, Tensor> cross_entropy_prob_fwd_cpu(const Tensor& logits, const Tensor& target,
                                                              const std::optional<Tensor>& weight, int64_t reduction,
                                                              double label_smoothing, bool check_finite,
                                                              bool acc_loss) {
  check_prob_op_args(logits, target, weight, reduction);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Tensor w = weights_for_kernel(weight, acc);
  const LogitsView x = view_of(logits);
  const ForwardTensors o = empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), acc_loss));
  const ForwardTotals totals = kernels().prob_forward(x, view_of(target), options_of(w, label_smoothing, reduction),
                                                      forward_outputs(o, reduction, check_finite, logits));
  // Torch's mean over probability targets divides by the number of rows, never by weights.
  // label smoothing plays no part in that divisor.
  finish_forward(totals, o, reduction, prob_mean_divisor(x.geo.num_rows, x.geo.num_classes), false, logits, target,
                 -100);
  return {o.loss, o.lse, o.status};
}

std::tuple<Tensor, Tensor> cross_entropy_prob_bwd_cpu(const Tensor& grad_loss, const Tensor& logits,
                                                      const Tensor& target, const std::optional<Tensor>& weight,
                                                      const Tensor& lse, int64_t reduction, double label_smoothing,
                                                      bool target_grad) {
  check_prob_op_args(logits, target, weight, reduction);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Tensor w = weights_for_kernel(weight, acc);
  const LogitsView x = view_of(logits);
  const Tensor lse_c = saved_lse(lse, logits, acc, x.geo.num_rows);
  check_grad_loss(grad_loss, reduction, x.geo.num_rows);
  const ScaleHolder scale = grad_scale(grad_loss, reduction, static_cast<double>(x.geo.num_rows), logits, acc);
  Tensor grad_x = empty_gradient_like(logits);
  Tensor grad_q = target_grad ? at::empty_like(target) : at::empty({0}, logits.options());
  const GradOutput gq = target_grad ? grad_output_of(grad_q) : GradOutput{};
  kernels().prob_backward(x, view_of(target), options_of(w, label_smoothing, reduction), lse_c.const_data_ptr(),
                          scale.scale, grad_output_of(grad_x), target_grad ? &gq : nullptr);
  return {grad_x, grad_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(validated_loss, CPU, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cpu);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd_cpu);
  m.impl("cross_entropy_bwd_", &cross_entropy_bwd__cpu);
  m.impl("cross_entropy_fwd_grad", &cross_entropy_fwd_grad_cpu);
  m.impl("cross_entropy_prob_fwd", &cross_entropy_prob_fwd_cpu);
  m.impl("cross_entropy_prob_bwd", &cross_entropy_prob_bwd_cpu);
}

}  // namespace validated_loss::cpu
