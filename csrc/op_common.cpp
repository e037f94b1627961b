#include "op_common.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include "python_errors.h"
#include "status.h"

namespace validated_loss {

at::ScalarType accumulate_dtype(at::ScalarType logits_dtype) {
  return logits_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType loss_dtype(at::ScalarType logits_dtype, bool acc_loss) {
  return acc_loss ? accumulate_dtype(logits_dtype) : logits_dtype;
}

static void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() >= 2, "validated_loss: logits must be (N, C, d1..dk), got ", logits.sizes());
  const auto t = logits.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "validated_loss: logits must be float32, float64, float16 or bfloat16, got ", t);
}

static void check_weight(const std::optional<at::Tensor>& weight, const at::Tensor& logits) {
  if (!weight.has_value() || !weight->defined()) return;
  TORCH_CHECK(weight->numel() == logits.size(1), "validated_loss: weight must hold ", logits.size(1),
              " class weights, got ", weight->sizes());
  TORCH_CHECK(weight->device() == logits.device(), "validated_loss: weight is on ", weight->device(), ", logits on ",
              logits.device());
}

static void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction >= kReductionNone && reduction <= kReductionSum,
              "validated_loss: reduction code must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

static void check_llm_options(double lse_square_scale, double softcap) {
  TORCH_CHECK(std::isfinite(lse_square_scale), "validated_loss: lse_square_scale must be finite, got ",
              lse_square_scale);
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0, "validated_loss: softcap must be 0 (none) or positive, got ",
              softcap);
}

void check_index_op_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                         int64_t reduction, double lse_square_scale, double softcap) {
  check_logits(logits);
  check_reduction(reduction);
  TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte,
              "validated_loss: class-index targets must be int64 or uint8, got ", target.scalar_type());
  TORCH_CHECK(target.device() == logits.device(), "validated_loss: target is on ", target.device(), ", logits on ",
              logits.device());
  TORCH_CHECK(target.sizes() == at::IntArrayRef(rows_shape(logits)), "validated_loss: target must have shape ",
              at::IntArrayRef(rows_shape(logits)), ", got ", target.sizes());
  check_weight(weight, logits);
  check_llm_options(lse_square_scale, softcap);
}

void check_prob_op_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                        int64_t reduction) {
  check_logits(logits);
  check_reduction(reduction);
  TORCH_CHECK(target.sizes() == logits.sizes(), "validated_loss: probability targets must have the logits' shape ",
              logits.sizes(), ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == logits.scalar_type(),
              "validated_loss: probability targets must have the logits' dtype ", logits.scalar_type(), ", got ",
              target.scalar_type());
  TORCH_CHECK(target.device() == logits.device(), "validated_loss: target is on ", target.device(), ", logits on ",
              logits.device());
  check_weight(weight, logits);
}

// "No internal overlap" in ATen's sense (non-overlapping and dense: the layout it can vouch for
// cheaply; a stride-0 or otherwise overlapping dimension would have rows written over rows still to
// be read). The Python layer asks the same function (torch._debug_has_internal_overlap) and uses a
// fresh gradient in every other case.
void check_in_place_gradient(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(at::has_internal_overlap(logits) == at::MemOverlap::No, "validated_loss: ", op,
              " writes the gradient over the logits, which must be non-overlapping and dense; got sizes ",
              logits.sizes(), ", strides ", logits.strides());
}

void check_fwd_grad_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                         int64_t reduction, double lse_square_scale, double softcap) {
  check_index_op_args(logits, target, weight, reduction, lse_square_scale, softcap);
  TORCH_CHECK(reduction != kReductionMean, "validated_loss: cross_entropy_fwd_grad takes reduction 'none' or 'sum'");
  check_in_place_gradient(logits, "cross_entropy_fwd_grad");
}

void check_rows_tensor(const std::optional<at::Tensor>& t, int64_t num_rows, const char* name) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->numel() == num_rows, "validated_loss: ", name, " must hold one value per row (", num_rows,
              "), got shape ", t->sizes());
  TORCH_CHECK(t->is_floating_point(), "validated_loss: ", name, " must be floating point, got ", t->scalar_type());
}

std::vector<int64_t> rows_shape(const at::Tensor& logits) {
  std::vector<int64_t> shape(logits.sizes().begin(), logits.sizes().end());
  shape.erase(shape.begin() + 1);
  return shape;
}

RowGeometry make_row_geometry(const at::Tensor& logits) {
  RowGeometry g;
  TORCH_CHECK(make_row_geometry(logits.sizes().data(), logits.strides().data(), static_cast<int>(logits.dim()), g),
              "validated_loss: logits with more than ", kMaxRowDims, " non-mergeable row dimensions");
  return g;
}

at::Tensor weights_for_kernel(const std::optional<at::Tensor>& weight, at::ScalarType acc_dtype) {
  if (!weight.has_value() || !weight->defined()) return at::Tensor();
  return weight->reshape({-1}).to(acc_dtype).contiguous();
}

const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

ForwardTensors empty_forward_outputs(const at::Tensor& logits, int64_t reduction, at::ScalarType loss_dtype) {
  // In symbolic sizes: the Meta kernels (meta.cpp) run on torch.compile's fake tensors, whose sizes
  // may be symbols; on real tensors these are plain integers.
  const c10::SymIntArrayRef sizes = logits.sym_sizes();
  c10::SymDimVector rows;  // the logits' sizes without the class dimension
  c10::SymInt num_rows = 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (d == 1) continue;
    rows.push_back(sizes[d]);
    num_rows = num_rows * sizes[d];
  }
  const at::TensorOptions acc = logits.options().dtype(accumulate_dtype(logits.scalar_type()));
  const at::TensorOptions loss = logits.options().dtype(loss_dtype);
  ForwardTensors o;
  o.loss = reduction == kReductionNone ? at::empty_symint(rows, loss) : at::empty({}, loss);
  o.lse = at::empty_symint({num_rows, c10::SymInt(2)}, acc);
  o.total_weight = at::empty({}, acc);
  o.status = at::empty({kStatusSize}, logits.options().dtype(at::kLong));
  return o;
}

at::Tensor saved_lse(const at::Tensor& lse, const at::Tensor& logits, at::ScalarType acc_dtype, int64_t num_rows) {
  TORCH_CHECK(lse.numel() == 2 * num_rows, "validated_loss: lse must hold {max, log_sum} for each of the ", num_rows,
              " rows, got shape ", lse.sizes());
  return lse.to(logits.device(), acc_dtype).contiguous();
}

void check_grad_loss(const at::Tensor& grad_loss, int64_t reduction, int64_t num_rows) {
  if (reduction == kReductionNone) {
    TORCH_CHECK(grad_loss.numel() == num_rows, "validated_loss: grad_output must hold one value per row (", num_rows,
                "), got shape ", grad_loss.sizes());
  } else {
    TORCH_CHECK(grad_loss.numel() == 1, "validated_loss: grad_output of a reduced loss must be a scalar, got shape ",
                grad_loss.sizes());
  }
}

at::Tensor rows_for_kernel(const std::optional<at::Tensor>& t, const at::Tensor& logits, at::ScalarType acc_dtype) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(logits.device(), acc_dtype).contiguous();
}

at::Tensor fwd_grad_loss(const std::optional<at::Tensor>& grad_loss, const at::Tensor& logits, int64_t reduction,
                         int64_t num_rows) {
  if (!grad_loss.has_value() || !grad_loss->defined()) {
    return at::ones(reduction == kReductionNone ? at::IntArrayRef(rows_shape(logits)) : at::IntArrayRef{},
                    logits.options().dtype(accumulate_dtype(logits.scalar_type())));
  }
  TORCH_CHECK(grad_loss->numel() == (reduction == kReductionNone ? num_rows : 1),
              "validated_loss: grad_loss must hold one value per row for 'none', one for 'sum'; got ",
              grad_loss->sizes());
  return *grad_loss;
}

void store_narrowed(const at::Tensor& scalar, double value) {
  // static_cast rounds a finite value past float's range to inf, as the tensor cast does
  // (at::scalar_tensor and fill_ would refuse it).
  switch (scalar.scalar_type()) {
    case at::kDouble:
      *scalar.mutable_data_ptr<double>() = value;
      return;
    case at::kFloat:
      *scalar.mutable_data_ptr<float>() = static_cast<float>(value);
      return;
    case at::kHalf:
      *scalar.mutable_data_ptr<at::Half>() = static_cast<at::Half>(static_cast<float>(value));
      return;
    case at::kBFloat16:
      *scalar.mutable_data_ptr<at::BFloat16>() = static_cast<at::BFloat16>(static_cast<float>(value));
      return;
    default:
      TORCH_CHECK(false, "validated_loss: no loss of dtype ", scalar.scalar_type());
  }
}

// Row-major multi-index of a flat position (a size-0 dimension counts as 1).
static std::vector<int64_t> unravel(at::IntArrayRef sizes, int64_t position) {
  std::vector<int64_t> index(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    const int64_t size = std::max<int64_t>(sizes[d], 1);
    index[d] = position % size;
    position /= size;
  }
  return index;
}

// A multi-index as "[i, j, k]".
static std::string format_index(const std::vector<int64_t>& index) {
  std::ostringstream out;
  out << "[";
  for (size_t d = 0; d < index.size(); ++d) out << (d ? ", " : "") << index[d];
  out << "]";
  return out.str();
}

static std::string likely_cause(int64_t value, int64_t num_classes) {
  if (value < 0) {
    return "negative labels used as padding or 'no label': pass ignore_index=" + std::to_string(value) +
           " (or map them to the ignore_index in force).";
  }
  if (value == num_classes) {
    return "labels numbered 1.." + std::to_string(num_classes) + " instead of 0.." + std::to_string(num_classes - 1) +
           " (subtract 1), or a model head with one class too few.";
  }
  if (value == 255) {
    return "a segmentation mask whose 'void'/border pixels are 255 (pass ignore_index=255), or grey "
           "values 0..255 that were never mapped to class indices.";
  }
  return "a model head with fewer outputs (" + std::to_string(num_classes) +
         ") than the label set, or labels from another dataset or label map.";
}

std::string invalid_target_message(at::IntArrayRef target_sizes, int64_t position, int64_t value, int64_t count,
                                   int64_t num_classes, int64_t ignore_index) {
  int64_t numel = 1;
  for (auto s : target_sizes) numel *= s;
  std::ostringstream out;
  out << "Target " << value << " is out of bounds. target" << format_index(unravel(target_sizes, position)) << " = "
      << value << " is not a class index in [0, " << num_classes << ") and is not ignore_index (" << ignore_index
      << "); " << count << " of " << numel
      << " targets are invalid. Likely cause: " << likely_cause(value, num_classes);
  return out.str();
}

void raise_for_status(const int64_t* status, at::IntArrayRef target_sizes, int64_t num_classes, int64_t ignore_index,
                      at::IntArrayRef logits_sizes, const std::string& note) {
  if (status[kStatusInvalidCount] > 0) {
    const TargetErrorFacts facts{unravel(target_sizes, status[kStatusInvalidPosition]), status[kStatusInvalidValue],
                                 status[kStatusInvalidCount], num_classes, ignore_index};
    throw_target_error(invalid_target_message(target_sizes, status[kStatusInvalidPosition], facts.value, facts.count,
                                              num_classes, ignore_index) +
                           note,
                       facts);
  }
  if (status[kStatusNonFiniteCount] > 0) {
    std::vector<int64_t> rows(logits_sizes.begin(), logits_sizes.end());
    rows.erase(rows.begin() + 1);
    const NonFiniteFacts facts{status[kStatusNonFiniteRow], status[kStatusNonFiniteClass],
                               status[kStatusNonFiniteCount]};
    throw_nonfinite_error(
        c10::str("Non-finite logits: input", format_index(unravel(rows, facts.row)), " (row ", facts.row, "), class ",
                 facts.column, " is NaN or infinite; ", facts.count, " of ", c10::multiply_integers(rows),
                 " rows hold a non-finite logit (logits shape ", logits_sizes,
                 "). Likely cause: a diverging model (learning rate too high, no gradient "
                 "clipping), float16 overflow without loss scaling, or NaN in the inputs.",
                 note),
        facts);
  }
}

namespace {

// The status record is on the host for every caller (the CUDA ops copy it there first): one CPU
// kernel, shared by every build.
void raise_for_status_cpu(const at::Tensor& status, c10::SymIntArrayRef target_shape, int64_t num_classes,
                          int64_t ignore_index, c10::SymIntArrayRef logits_shape) {
  TORCH_CHECK(status.numel() == kStatusSize && status.scalar_type() == at::kLong,
              "validated_loss: a status record is int64[", kStatusSize, "]");
  const at::Tensor s = status.contiguous();
  raise_for_status(s.const_data_ptr<int64_t>(), C10_AS_INTARRAYREF_SLOW(target_shape), num_classes, ignore_index,
                   C10_AS_INTARRAYREF_SLOW(logits_shape));
}

}  // namespace

TORCH_LIBRARY_IMPL(validated_loss, CPU, m) {
  m.impl("raise_for_status", &raise_for_status_cpu);
}

}  // namespace validated_loss
