// The forward ops' Meta kernels: what torch.compile's fake tensors and opcheck see. The outputs'
// shapes and dtypes come from op_common's empty_forward_outputs, the one routine the CPU and CUDA
// ops allocate with, so the three can never disagree. (The backward ops' outputs are the logits'
// shape and need no routine: their fakes stay in _ops.py.)
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "op_common.h"

namespace validated_loss {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> fwd_meta(const Tensor& logits, const Tensor& /*target*/,
                                                    const std::optional<Tensor>& /*weight*/, int64_t reduction,
                                                    int64_t /*ignore_index*/, double /*label_smoothing*/,
                                                    bool /*check_finite*/, int64_t /*validate*/,
                                                    double /*lse_square_scale*/, double /*softcap*/, bool acc_loss,
                                                    bool /*inplace_backward*/) {
  const ForwardTensors o = empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), acc_loss));
  return {o.loss, o.lse, o.total_weight, o.status};
}

// The chunk step: 'none' losses in the logits' dtype, a 'sum' in the accumulate dtype.
std::tuple<Tensor, Tensor, Tensor, Tensor> fwd_grad_meta(Tensor& logits, const Tensor& /*target*/,
                                                         const std::optional<Tensor>& /*weight*/, int64_t reduction,
                                                         int64_t /*ignore_index*/, double /*label_smoothing*/,
                                                         double /*lse_square_scale*/, double /*softcap*/,
                                                         const std::optional<Tensor>& /*grad_loss*/,
                                                         const std::optional<Tensor>& /*grad_lse*/,
                                                         bool /*check_finite*/, int64_t /*validate*/) {
  const ForwardTensors o =
      empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), reduction != kReductionNone));
  return {o.loss, o.lse, o.total_weight, o.status};
}

std::tuple<Tensor, Tensor, Tensor> prob_fwd_meta(const Tensor& logits, const Tensor& /*target*/,
                                                 const std::optional<Tensor>& /*weight*/, int64_t reduction,
                                                 double /*label_smoothing*/, bool /*check_finite*/, bool acc_loss) {
  const ForwardTensors o = empty_forward_outputs(logits, reduction, loss_dtype(logits.scalar_type(), acc_loss));
  return {o.loss, o.lse, o.status};
}

}  // namespace

TORCH_LIBRARY_IMPL(validated_loss, Meta, m) {
  m.impl("cross_entropy_fwd", &fwd_meta);
  m.impl("cross_entropy_fwd_grad", &fwd_grad_meta);
  m.impl("cross_entropy_prob_fwd", &prob_fwd_meta);
}

}  // namespace validated_loss
