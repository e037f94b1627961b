// Host-side pieces every backend's op shares: the ops' metadata contract, row geometry from a
// tensor, output allocation and the messages built from a status record. ATen only (no
// torch/extension.h), so the CUDA files can include it cheaply.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "row_geometry.h"

namespace validated_loss {

// float64 logits accumulate in float64, everything else in float32.
at::ScalarType accumulate_dtype(at::ScalarType logits_dtype);

// The forward's loss dtype: the logits', or their accumulate dtype when the op's acc_loss is set.
at::ScalarType loss_dtype(at::ScalarType logits_dtype, bool acc_loss);

// The ops' contract on shapes and dtypes. The Python layer has already explained any misuse in
// the user's terms; these checks only guarantee that the kernels never index out of bounds.
// Class-index ops also take the LLM options: z-loss scale finite; softcap 0 (none) or positive
// and finite.
void check_index_op_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                         int64_t reduction, double lse_square_scale, double softcap);
void check_prob_op_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                        int64_t reduction);

// cross_entropy_bwd_ writes the gradient over the logits: every element must have memory of its own.
// `op` names the op in the message.
void check_in_place_gradient(const at::Tensor& logits, const char* op = "cross_entropy_bwd_");

// cross_entropy_fwd_grad's contract: the index op's, reduction 'none' or 'sum', and logits it can
// write its gradient over (check_in_place_gradient).
void check_fwd_grad_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                         int64_t reduction, double lse_square_scale, double softcap);

// An optional per-row tensor (grad_lse) holds one value per row, on the logits' device.
void check_rows_tensor(const std::optional<at::Tensor>& t, int64_t num_rows, const char* name);

RowGeometry make_row_geometry(const at::Tensor& logits);

// Shape of a 'none' loss: the logits' shape without the class dimension.
std::vector<int64_t> rows_shape(const at::Tensor& logits);

// Class weights as a contiguous accumulate-dtype vector (C floats), or an undefined tensor.
at::Tensor weights_for_kernel(const std::optional<at::Tensor>& weight, at::ScalarType acc_dtype);

// The tensor's data, or nullptr when it is undefined (an absent optional operand).
const void* data_or_null(const at::Tensor& t);

// The forward ops' outputs, allocated here for every backend:
//   loss          rows_shape(logits) for reduction 'none', else a 0-dim tensor; `loss_dtype`
//   lse           (num_rows, 2): each row's {max, log_sum}, in the accumulate dtype
//   total_weight  0-dim, accumulate dtype (the probability op returns none)
//   status        int64[kStatusSize] (status.h), every field written by the op
struct ForwardTensors {
  at::Tensor loss, lse, total_weight, status;
};
ForwardTensors empty_forward_outputs(const at::Tensor& logits, int64_t reduction, at::ScalarType loss_dtype);

// A backward's saved lse operand: {max, log_sum} of each of num_rows rows, in the accumulate dtype
// on the logits' device, contiguous.
at::Tensor saved_lse(const at::Tensor& lse, const at::Tensor& logits, at::ScalarType acc_dtype, int64_t num_rows);

// grad_output's contract: one value per row for 'none', one for a reduced loss.
void check_grad_loss(const at::Tensor& grad_loss, int64_t reduction, int64_t num_rows);

// An optional per-row operand (grad_lse; a 'none' grad_output) as the kernels read it: the
// accumulate dtype on the logits' device, contiguous; undefined when absent.
at::Tensor rows_for_kernel(const std::optional<at::Tensor>& t, const at::Tensor& logits, at::ScalarType acc_dtype);

// cross_entropy_fwd_grad's grad_loss: the caller's (checked), or ones (one per row for 'none', a
// scalar for 'sum') in the accumulate dtype.
at::Tensor fwd_grad_loss(const std::optional<at::Tensor>& grad_loss, const at::Tensor& logits, int64_t reduction,
                         int64_t num_rows);

// Writes a double total (a loss sum, a total weight) into a 0-dim tensor, rounded as a tensor cast
// rounds: past the dtype's range it is inf, as torch's own reductions give (a diverging model's loss
// scaler must see inf, not a "cannot be converted" error). Host memory only.
void store_narrowed(const at::Tensor& scalar, double value);

// Raise the error a status record describes, if any: TargetOutOfRangeError (an IndexError) for
// targets, NonFiniteLogitsError (a ValueError) for non-finite logits (python_errors.h). `status`
// points at host memory; `note` (deferred validation's) is appended to the message.
void raise_for_status(const int64_t* status, at::IntArrayRef target_sizes, int64_t num_classes, int64_t ignore_index,
                      at::IntArrayRef logits_sizes, const std::string& note = {});

std::string invalid_target_message(at::IntArrayRef target_sizes, int64_t position, int64_t value, int64_t count,
                                   int64_t num_classes, int64_t ignore_index);

}  // namespace validated_loss
