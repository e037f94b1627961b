// The CUDA ops: check the contract (op_common), allocate outputs, launch the torch-free kernels
// (kernel_api.h) on the current stream. What happens to a forward's status record, by validate
// mode (the 'sync' wait, the 'deferred' queue, CUDA-graph capture), is validation/validation.h's
// report_status; every op first raises an earlier call's error whose record has reached the host
// (check_earlier_calls), so deferred errors surface at the next call or backward even when no
// Python runs around the op (torch.compile).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../op_common.h"
#include "../status.h"
#include "../validation/validation.h"
#include "device_runtime.h"
#include "kernel_api.h"

namespace validated_loss::cuda {
namespace {

using at::Tensor;

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat;
    case at::kDouble:
      return DType::kDouble;
    case at::kHalf:
      return DType::kHalf;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, "validated_loss: unsupported logits dtype ", t);
  }
}

View view_of(const Tensor& t) {
  return View{t.const_data_ptr(), make_row_indexer(make_row_geometry(t))};
}

MutableView mutable_view_of(Tensor& t) {
  return MutableView{t.mutable_data_ptr(), make_row_indexer(make_row_geometry(t))};
}

// Class weights as the kernels read them (kernel_api.h): the user's tensor itself when it holds
// the logits' half dtype (widened at each read) or the accumulate dtype, else a converted copy; and
// their sum, on the device, only when label smoothing reads it (LossConstants::sum_weight). So a
// call without smoothing launches nothing for its weights.
struct Weights {
  Tensor w;
  bool narrow = false;
  Tensor sum;
};

Weights weights_of(const std::optional<Tensor>& weight, const Tensor& logits, double label_smoothing,
                   cudaStream_t stream) {
  Weights r;
  const at::ScalarType acc = accumulate_dtype(logits.scalar_type());
  if (!weight.has_value() || !weight->defined()) return r;
  const bool half = logits.scalar_type() != acc;
  if (half && weight->scalar_type() == logits.scalar_type()) {
    r.w = weight->reshape({-1}).contiguous();
    r.narrow = true;
  } else {
    r.w = weights_for_kernel(weight, acc);
  }
  if (label_smoothing > 0) {
    r.sum = at::empty({}, logits.options().dtype(acc));
    VL_CUDA_CHECK(weight_sum_launch(dtype_of(logits.scalar_type()), r.w.const_data_ptr(), r.narrow, r.w.numel(),
                                    r.sum.mutable_data_ptr(), stream));
  }
  return r;
}

ForwardArgs forward_args(const Tensor& logits, const View& x, const Weights& w, double label_smoothing,
                         int64_t reduction, bool check_finite, const Tensor& loss, const Tensor& lse,
                         const Tensor& workspace, const Tensor& total_weight, const Tensor& status, double z_scale = 0,
                         double softcap = 0) {
  ForwardArgs f{};
  f.dtype = dtype_of(logits.scalar_type());
  f.x = x;
  f.weight = data_or_null(w.w);
  f.weight_narrow = w.narrow;
  f.weight_sum = data_or_null(w.sum);
  f.label_smoothing = label_smoothing;
  f.z_scale = z_scale;
  f.softcap = softcap;
  f.loss_acc = loss.scalar_type() != logits.scalar_type();
  f.reduction = reduction;
  f.check_finite = check_finite;
  f.loss_rows = reduction == kReductionNone ? loss.data_ptr() : nullptr;
  f.lse = lse.data_ptr();
  f.workspace = workspace.data_ptr();
  f.loss_out = reduction == kReductionNone ? nullptr : loss.data_ptr();
  f.total_weight_out = total_weight.defined() ? total_weight.data_ptr() : nullptr;
  f.status = status.data_ptr<int64_t>();
  return f;
}

// grad_output as the kernels want it: per row for 'none', else a float64 device scalar.
struct ScaleHolder {
  Tensor per_row, scalar, total_weight;
  GradScaleArgs args;
};

ScaleHolder grad_scale(const Tensor& grad_loss, int64_t reduction, const Tensor& total_weight, int64_t num_rows,
                       const Tensor& logits, at::ScalarType acc) {
  check_grad_loss(grad_loss, reduction, num_rows);
  ScaleHolder h;
  if (reduction == kReductionNone) {
    h.per_row = grad_loss.to(logits.device(), acc).contiguous();
    h.args = GradScaleArgs{h.per_row.const_data_ptr(), nullptr, nullptr, static_cast<double>(num_rows)};
  } else {
    h.scalar = grad_loss.to(logits.device(), at::kDouble).contiguous();
    if (total_weight.defined()) {
      TORCH_CHECK(total_weight.numel() == 1, "validated_loss: total_weight must be a scalar");
      h.total_weight = total_weight.to(logits.device(), acc).contiguous();
    }
    h.args =
        GradScaleArgs{nullptr, h.scalar.const_data_ptr(), data_or_null(h.total_weight), static_cast<double>(num_rows)};
  }
  return h;
}

// The class-index forward: loss, lse, total weight and status (loss_acc: the loss, reduced or per
// row, in the accumulate dtype instead of the logits').
ForwardTensors index_forward(const Tensor& logits, const Tensor& target, const Weights& w, int64_t reduction,
                             int64_t ignore_index, double label_smoothing, bool check_finite, double z_scale,
                             double softcap, bool loss_acc, cudaStream_t stream) {
  const Tensor target_c = target.contiguous();
  const View x = view_of(logits);
  const ForwardTensors o = empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), loss_acc));
  const DType dtype = dtype_of(logits.scalar_type());
  const Tensor workspace =
      at::empty({forward_workspace_bytes(dtype, x.ix, /*prob=*/false)}, logits.options().dtype(at::kByte));
  IndexForward a{};
  a.f = forward_args(logits, x, w, label_smoothing, reduction, check_finite, o.loss, o.lse, workspace, o.total_weight,
                     o.status, z_scale, softcap);
  a.t = IndexTargetArgs{target_c.const_data_ptr(), target_c.scalar_type() == at::kByte, ignore_index};
  VL_CUDA_CHECK(index_forward_launch(a, stream));
  return o;
}

// The class-index gradient into `grad` (which may be the logits themselves).
void index_backward(const ScaleHolder& scale, const Tensor& logits, const Tensor& target, const Weights& w,
                    const Tensor& lse, int64_t reduction, int64_t ignore_index, double label_smoothing, double z_scale,
                    double softcap, const Tensor& lse_grad, Tensor& grad, cudaStream_t stream) {
  const Tensor target_c = target.contiguous();
  IndexBackward a{};
  a.dtype = dtype_of(logits.scalar_type());
  a.x = view_of(logits);
  a.t = IndexTargetArgs{target_c.const_data_ptr(), target_c.scalar_type() == at::kByte, ignore_index};
  a.weight = data_or_null(w.w);
  a.weight_narrow = w.narrow;
  a.weight_sum = data_or_null(w.sum);
  a.label_smoothing = label_smoothing;
  a.z_scale = z_scale;
  a.softcap = softcap;
  a.reduction = reduction;
  a.lse = lse.const_data_ptr();
  a.lse_grad = data_or_null(lse_grad);
  a.scale = scale.args;
  a.grad = mutable_view_of(grad);
  VL_CUDA_CHECK(index_backward_launch(a, stream));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> cross_entropy_fwd_cuda(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction,
    int64_t ignore_index, double label_smoothing, bool check_finite, int64_t validate, double lse_square_scale,
    double softcap, bool acc_loss, bool /*inplace_backward: autograd's*/) {
  std::string origin = take_call_origin();  // set by the Python layer for this call, if it named it
  check_index_op_args(logits, target, weight, reduction, lse_square_scale, softcap);
  TORCH_CHECK(validate >= 0 && validate <= 2,
              "validated_loss: validate must be 0 (off), 1 (sync) or 2 (deferred), got ", validate);
  const DeviceGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  check_earlier_calls(stream);
  const Weights w = weights_of(weight, logits, label_smoothing, stream);
  const ForwardTensors o = index_forward(logits, target, w, reduction, ignore_index, label_smoothing, check_finite,
                                         lse_square_scale, softcap, acc_loss, stream);
  report_status(validate, o.status, stream, target.sizes(), logits.size(1), ignore_index, logits.sizes(),
                std::move(origin));
  return {o.loss, o.lse, o.total_weight, o.status};
}

// cross_entropy_bwd's gradient: into a fresh tensor, or (in_place: cross_entropy_bwd_) over the
// logits themselves (every element is read, then written, by one thread).
Tensor index_backward_op(const Tensor& grad_loss, const Tensor& logits, const Tensor& target,
                         const std::optional<Tensor>& weight, const Tensor& lse, const Tensor& total_weight,
                         int64_t reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
                         double softcap, const std::optional<Tensor>& grad_lse, bool in_place) {
  check_index_op_args(logits, target, weight, reduction, lse_square_scale, softcap);
  if (in_place) check_in_place_gradient(logits);
  const DeviceGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  check_earlier_calls(stream);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Weights w = weights_of(weight, logits, label_smoothing, stream);
  const int64_t num_rows = make_row_geometry(logits).num_rows;
  check_rows_tensor(grad_lse, num_rows, "grad_lse");
  const Tensor lse_c = saved_lse(lse, logits, acc, num_rows);
  const ScaleHolder scale = grad_scale(grad_loss, reduction, total_weight, num_rows, logits, acc);
  Tensor grad = in_place ? logits : at::empty_like(logits);
  index_backward(scale, logits, target, w, lse_c, reduction, ignore_index, label_smoothing, lse_square_scale, softcap,
                 rows_for_kernel(grad_lse, logits, acc), grad, stream);
  return grad;
}

Tensor cross_entropy_bwd_cuda(const Tensor& grad_loss, const Tensor& logits, const Tensor& target,
                              const std::optional<Tensor>& weight, const Tensor& lse, const Tensor& total_weight,
                              int64_t reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
                              double softcap, const std::optional<Tensor>& grad_lse) {
  return index_backward_op(grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index,
                           label_smoothing, lse_square_scale, softcap, grad_lse, false);
}

void cross_entropy_bwd__cuda(Tensor& logits, const Tensor& grad_loss, const Tensor& target,
                             const std::optional<Tensor>& weight, const Tensor& lse, const Tensor& total_weight,
                             int64_t reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
                             double softcap, const std::optional<Tensor>& grad_lse) {
  index_backward_op(grad_loss, logits, target, weight, lse, total_weight, reduction, ignore_index, label_smoothing,
                    lse_square_scale, softcap, grad_lse, true);
}

// The chunk step of linear_cross_entropy (see ops.cpp): the forward, then the backward kernel
// writing the gradient over the logits (each element is read and then written by one thread).
// Two passes over the chunk, where the CPU op fuses them per row.
std::tuple<Tensor, Tensor, Tensor, Tensor> cross_entropy_fwd_grad_cuda(
    Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
    double label_smoothing, double lse_square_scale, double softcap, const std::optional<Tensor>& grad_loss,
    const std::optional<Tensor>& grad_lse, bool check_finite, int64_t validate) {
  std::string origin = take_call_origin();  // set by the Python layer for this call, if it named it
  check_fwd_grad_args(logits, target, weight, reduction, lse_square_scale, softcap);
  TORCH_CHECK(validate >= 0 && validate <= 2,
              "validated_loss: validate must be 0 (off), 1 (sync) or 2 (deferred), got ", validate);
  const DeviceGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  // No check of earlier calls here: linear_cross_entropy's chunk steps belong to one call, whose
  // Python entry has checked (a check here would raise that same call's own queued error mid-loop).
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Weights w = weights_of(weight, logits, label_smoothing, stream);
  const int64_t num_rows = make_row_geometry(logits).num_rows;
  check_rows_tensor(grad_lse, num_rows, "grad_lse");
  const ForwardTensors o = index_forward(logits, target, w, reduction, ignore_index, label_smoothing, check_finite,
                                         lse_square_scale, softcap, reduction != kReductionNone, stream);
  const ScaleHolder scale =
      grad_scale(fwd_grad_loss(grad_loss, logits, reduction, num_rows), reduction, Tensor(), num_rows, logits, acc);
  index_backward(scale, logits, target, w, o.lse, reduction, ignore_index, label_smoothing, lse_square_scale, softcap,
                 rows_for_kernel(grad_lse, logits, acc), logits, stream);
  report_status(validate, o.status, stream, target.sizes(), logits.size(1), ignore_index, logits.sizes(),
                std::move(origin));
  return {o.loss, o.lse, o.total_weight, o.status};
}

std::tuple<Tensor, Tensor, Tensor> cross_entropy_prob_fwd_cuda(const Tensor& logits, const Tensor& target,
                                                               const std::optional<Tensor>& weight, int64_t reduction,
                                                               double label_smoothing, bool check_finite,
                                                               bool acc_loss) {
  std::string origin = take_call_origin();  // set by the Python layer for this call, if it named it
  check_prob_op_args(logits, target, weight, reduction);
  const DeviceGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  check_earlier_calls(stream);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Weights w = weights_of(weight, logits, label_smoothing, stream);
  const View x = view_of(logits);
  const ForwardTensors o = empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), acc_loss));
  const DType dtype = dtype_of(logits.scalar_type());
  const Tensor workspace =
      at::empty({forward_workspace_bytes(dtype, x.ix, /*prob=*/true)}, logits.options().dtype(at::kByte));
  ProbForward a{};
  // No total weight: torch's mean over probability targets divides by the number of rows.
  a.f = forward_args(logits, x, w, label_smoothing, reduction, check_finite, o.loss, o.lse, workspace, Tensor(),
                     o.status);
  a.q = view_of(target);
  VL_CUDA_CHECK(prob_forward_launch(a, stream));
  // Probability targets have no value to validate; only check_finite can fill the status (the
  // schema has no validate argument: check_finite=True implies 'sync').
  report_status(check_finite ? 1 : 0, o.status, stream, target.sizes(), x.ix.num_classes, -100, logits.sizes(),
                std::move(origin));
  return {o.loss, o.lse, o.status};
}

std::tuple<Tensor, Tensor> cross_entropy_prob_bwd_cuda(const Tensor& grad_loss, const Tensor& logits,
                                                       const Tensor& target, const std::optional<Tensor>& weight,
                                                       const Tensor& lse, int64_t reduction, double label_smoothing,
                                                       bool target_grad) {
  check_prob_op_args(logits, target, weight, reduction);
  const DeviceGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  check_earlier_calls(stream);
  const auto acc = accumulate_dtype(logits.scalar_type());
  const Weights w = weights_of(weight, logits, label_smoothing, stream);
  ProbBackward a{};
  a.dtype = dtype_of(logits.scalar_type());
  a.x = view_of(logits);
  a.q = view_of(target);
  const Tensor lse_c = saved_lse(lse, logits, acc, a.x.ix.num_rows);
  // Torch's mean over probability targets divides by the number of rows, never by weights.
  const ScaleHolder scale = grad_scale(grad_loss, reduction, Tensor(), a.x.ix.num_rows, logits, acc);
  Tensor grad_x = at::empty_like(logits);
  Tensor grad_q = target_grad ? at::empty_like(target) : at::empty({0}, logits.options());
  a.weight = data_or_null(w.w);
  a.weight_narrow = w.narrow;
  a.weight_sum = data_or_null(w.sum);
  a.label_smoothing = label_smoothing;
  a.reduction = reduction;
  a.lse = lse_c.const_data_ptr();
  a.scale = scale.args;
  a.grad = mutable_view_of(grad_x);
  a.grad_target = target_grad ? mutable_view_of(grad_q) : MutableView{nullptr, {}};
  VL_CUDA_CHECK(prob_backward_launch(a, stream));
  return {grad_x, grad_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(validated_loss, VL_CUDA_DISPATCH_KEY, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cuda);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd_cuda);
  m.impl("cross_entropy_bwd_", &cross_entropy_bwd__cuda);
  m.impl("cross_entropy_fwd_grad", &cross_entropy_fwd_grad_cuda);
  m.impl("cross_entropy_prob_fwd", &cross_entropy_prob_fwd_cuda);
  m.impl("cross_entropy_prob_bwd", &cross_entropy_prob_bwd_cuda);
}

}  // namespace validated_loss::cuda
