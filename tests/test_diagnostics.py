"""validated_loss.diagnostics against torch 2.13's own checks.

On a torch older than 2.13 the comparisons check what holds across versions (tests/torch_versions.py):
our class is still caught by the class that torch raised, and the message still explains itself.

For every misuse in the table, torch.nn.functional.cross_entropy is run first: the test fails if
torch does not raise the type the table says (so the table cannot drift from torch). Then
check_inputs must raise our class, which must be a ValidatedLossError *and* be caught by
pytest.raises(<torch's type>), with a message that starts with torch's own text and names the
numbers and the fix. Valid inputs must pass and give torch's mode. A hypothesis test compares
check_inputs with torch on random shapes, dtypes and arguments.
"""

import importlib.util
import itertools
import math
import pathlib
import pickle
import sys
from dataclasses import dataclass
from typing import Callable, Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torch_versions import OLDER_TORCH_CHECKS, TORCH_CHECKS_AS_OURS, torch_cross_entropy

try:
    from validated_loss import diagnostics as D
    HAVE_EXTENSION = True
except Exception:  # the extension is not built: load the pure-Python module on its own
    _path = pathlib.Path(__file__).resolve().parents[1] / "validated_loss" / "diagnostics.py"
    # A top-level name: pickle (and dataclasses) look the module up by name, and importing
    # "validated_loss.diagnostics" would import the broken package first.
    _spec = importlib.util.spec_from_file_location("validated_loss_diagnostics", _path)
    D = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = D
    _spec.loader.exec_module(D)
    HAVE_EXTENSION = False

# Messages about target values are worded once, in the extension (csrc/op_common.cpp).
needs_extension = pytest.mark.skipif(not HAVE_EXTENSION, reason="the compiled extension is not importable")

L, U8 = torch.int64, torch.uint8
F8 = torch.float8_e5m2


def x(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


def y(*shape, dtype=L, value=0):
    return torch.full(shape, value, dtype=dtype)


def p(*shape, dtype=torch.float32):
    return torch.rand(shape).to(dtype)


def w(*shape, dtype=torch.float32, requires_grad=False):
    return torch.ones(shape, dtype=dtype, requires_grad=requires_grad)


def run_check_inputs(inp, tgt, kw):
    return D.check_inputs(inp, tgt, kw.get("weight"), kw.get("ignore_index", -100),
                          kw.get("label_smoothing", 0.0))


# =============================================================================
# Misuse table
# =============================================================================


@dataclass
class Case:
    id: str
    make: Callable[[], Tuple[torch.Tensor, torch.Tensor, dict]]
    ours: type          # the exact class check_inputs must raise
    torch_type: type    # the exact class torch raises
    contains: Tuple[str, ...] = ()
    same_text: bool = True  # our message starts with torch's (not for meta-device cases)


def case(id, make, ours, torch_type, *contains, same_text=True):
    return Case(id, make, ours, torch_type, tuple(contains), same_text)



CASES = [
    # --- batch sizes (§5 rows 1-4, catalogue: batch sizes differ) ------------------------
    case("batch_32_vs_64", lambda: (x(32, 10), y(64), {}), D.BatchSizeMismatchError, ValueError,
         "(32)", "(64)", "32 samples", "64", "2 entries per input sample", "partial batch"),
    case("batch_partial_32_vs_50", lambda: (x(32, 10), y(50), {}), D.BatchSizeMismatchError, ValueError,
         "32", "50", "final partial batch", "DataLoader", "drop_last", "train/validation"),
    case("batch_input_larger", lambda: (x(64, 10), y(32), {}), D.BatchSizeMismatchError, ValueError,
         "2 rows per target entry", "partial batch"),
    case("batch_empty_target", lambda: (x(4, 10), y(0), {}), D.BatchSizeMismatchError, ValueError,
         "empty"),
    case("logits_flattened_target_not", lambda: (x(14, 5), y(2, 7), {}), D.TargetSizeError, ValueError,
         "(14, 5)", "(2, 7)", "target.flatten()", "(14,)", "logits.view(2, 7, 5).movedim(-1, 1)"),
    case("target_flattened_logits_NTC", lambda: (x(2, 7, 5), y(14), {}), D.TargetSizeError, ValueError,
         "(14,)", "(2, 7, 5)", "logits.flatten(0, 1)", "(14, 5)"),
    case("target_flattened_logits_NCd", lambda: (x(2, 5, 7), y(14), {}), D.TargetSizeError, ValueError,
         "logits.movedim(1, -1).reshape(-1, 5)", "target.view(2, 7)"),
    case("one_hot_rows_flattened", lambda: (x(8, 4), y(32), {}), D.TargetSizeError, ValueError,
         "32 = 8 x 4", "target.view(8, 4).argmax(1)"),
    case("scalar_target_2d", lambda: (x(4, 5), y(), {}), D.ScalarTargetError, ValueError,
         "batch_size (0)", "0-dim", "(4,)"),
    case("scalar_target_batch_1", lambda: (x(1, 5), y(), {}), D.ScalarTargetError, ValueError,
         "target.view(1)"),
    case("scalar_target_empty_batch_2d", lambda: (x(0, 5), y(), {}), D.ScalarTargetError, IndexError,
         "0-dim"),
    case("scalar_target_empty_batch_3d", lambda: (x(0, 5, 2), y(), {}), D.ScalarTargetError, RuntimeError,
         "0-dim"),
    case("scalar_target_empty_batch_4d", lambda: (x(0, 5, 2, 2), y(), {}), D.ScalarTargetError, RuntimeError,
         "dimension: 0"),
    case("scalar_target_4d", lambda: (x(4, 5, 2, 2), y(), {}), D.ScalarTargetError, ValueError,
         "(4, 2, 2)"),
    # --- multi-target, (N, 1), one-hot (rows 5, 6, 8) ----------------------------------------
    case("target_N_1", lambda: (x(4, 5), y(4, 1), {}), D.TargetShapeError, RuntimeError,
         "(4, 1)", "target.squeeze(1)", "column"),
    case("float_target_N_1", lambda: (x(4, 5), y(4, 1, dtype=torch.float32), {}), D.TargetShapeError,
         RuntimeError, "target.squeeze(1)", ".long()"),
    case("target_N_K_integer", lambda: (x(4, 5), y(4, 3), {}), D.TargetShapeError, RuntimeError,
         "3 columns", "5 classes", "target.argmax(1)", "binary_cross_entropy_with_logits"),
    case("target_3d_for_2d_input", lambda: (x(4, 5), y(4, 2, 3), {}), D.TargetShapeError, RuntimeError,
         "(4, 2, 3)", "(4,)"),
    case("one_dim_input_2d_target", lambda: (x(5), y(1, 1), {}), D.TargetShapeError, RuntimeError,
         "target.squeeze(1)"),
    case("prob_target_wrong_classes", lambda: (x(4, 5), p(4, 6), {}), D.ProbabilityTargetShapeError,
         RuntimeError, "(4, 6)", "(4, 5)", "6 classes", "have 5"),
    case("prob_target_extra_dim", lambda: (x(4, 5), p(4, 5, 1), {}), D.ProbabilityTargetShapeError,
         RuntimeError, "target.squeeze(2)"),
    case("prob_target_transposed", lambda: (x(4, 5), p(5, 4), {}), D.ProbabilityTargetShapeError,
         ValueError, "(5, 4)", "(4, 5)", "target.t()"),
    case("one_hot_long", lambda: (x(4, 5), y(4, 5), {}), D.TargetDtypeError, RuntimeError,
         "got Long", "target.argmax(1)", "(4,)", "target.float()"),
    case("one_hot_int32", lambda: (x(4, 5), y(4, 5, dtype=torch.int32), {}), D.TargetDtypeError,
         RuntimeError, "got Int", "target.argmax(1)"),
    case("single_class_binary_labels", lambda: (x(4, 1), y(4, 1), {}), D.TargetDtypeError, RuntimeError,
         "single class", "binary_cross_entropy_with_logits"),
    case("one_dim_long_same_size", lambda: (x(5), y(5), {}), D.TargetDtypeError, RuntimeError,
         "target.argmax()"),
    case("scalar_input_scalar_long_target", lambda: (x(), y(), {}), D.TargetDtypeError, RuntimeError,
         "0-dim"),
    case("one_hot_4d_long", lambda: (x(2, 5, 3, 4), y(2, 5, 3, 4), {}), D.TargetDtypeError, RuntimeError,
         "target.argmax(1)", "(2, 3, 4)"),
    # --- target dtype (rows 9-11) -----------------------------------------------------------
    case("float_class_indices", lambda: (x(4, 5), y(4, dtype=torch.float32), {}), D.TargetDtypeError,
         RuntimeError, "got Float", "target.long()", "(4, 5)"),
    case("double_class_indices", lambda: (x(4, 5), y(4, dtype=torch.float64), {}), D.TargetDtypeError,
         RuntimeError, "got Double", "target.long()"),
    case("int32_targets", lambda: (x(4, 5), y(4, dtype=torch.int32), {}), D.TargetDtypeError, RuntimeError,
         "got Int", "target.long()", "numpy", "Windows"),
    case("int16_targets_3d", lambda: (x(2, 5, 3), y(2, 3, dtype=torch.int16), {}), D.TargetDtypeError,
         RuntimeError, "got Short", "target.long()"),
    case("int8_targets_4d", lambda: (x(2, 5, 3, 4), y(2, 3, 4, dtype=torch.int8), {}), D.TargetDtypeError,
         RuntimeError, "got Char"),
    case("bool_targets", lambda: (x(4, 5), y(4, dtype=torch.bool), {}), D.TargetDtypeError, RuntimeError,
         "got Bool", "target.long()"),
    case("complex_targets", lambda: (x(4, 5), y(4, dtype=torch.complex64), {}), D.TargetDtypeError,
         RuntimeError, "got ComplexFloat"),
    case("uint8_targets_3d", lambda: (x(2, 5, 3), y(2, 3, dtype=U8), {}), D.TargetDtypeError, RuntimeError,
         "expected scalar type Long but found Byte", "target.long()", "1-D and 2-D"),
    case("uint8_targets_5d", lambda: (x(2, 5, 2, 2, 2), y(2, 2, 2, 2, dtype=U8), {}), D.TargetDtypeError,
         RuntimeError, "found Byte"),
    # --- K-dimensional shapes (rows 15-20) -----------------------------------------------------
    case("sequence_logits_NTC", lambda: (x(2, 7, 5), y(2, 7), {}), D.TargetShapeError, RuntimeError,
         "[2, 5]", "[2, 7]", "logits.transpose(1, 2)", "logits.flatten(0, 1)", "target.flatten()",
         "(2, 5, 7)"),
    case("float_sequence_targets_NTC", lambda: (x(2, 7, 5), y(2, 7, dtype=torch.float32), {}),
         D.TargetShapeError, RuntimeError, "logits.transpose(1, 2)", ".long()"),
    case("spatial_mismatch_3d", lambda: (x(2, 5, 7), y(2, 8), {}), D.TargetShapeError, RuntimeError,
         "target dim 1 has size 8", "input dim 2 has size 7"),
    case("spatial_mismatch_5d", lambda: (x(2, 5, 3, 4, 2), y(2, 3, 4, 3), {}), D.TargetShapeError,
         RuntimeError, "target dim 3 has size 3", "input dim 4 has size 2"),
    case("per_sample_labels_for_sequence", lambda: (x(2, 5, 7), y(2), {}), D.TargetShapeError, RuntimeError,
         "extra dims (7,)", "(2, 7)"),
    case("trailing_unit_logit_dim", lambda: (x(2, 5, 1), y(2), {}), D.TargetShapeError, RuntimeError,
         "logits.reshape(2, 5)"),
    case("target_extra_trailing_dim_3d", lambda: (x(2, 5, 7), y(2, 7, 1), {}), D.TargetShapeError,
         RuntimeError, "target.squeeze(2)"),
    case("prob_target_channel_last_3d", lambda: (x(2, 7, 5), p(2, 5, 7), {}), D.ProbabilityTargetShapeError,
         RuntimeError, "target.movedim(-1, 1)"),
    case("one_hot_channel_last_3d", lambda: (x(2, 5, 7), y(2, 7, 5), {}), D.TargetShapeError, RuntimeError,
         "target.argmax(-1)"),
    case("seg_mask_N1HW", lambda: (x(2, 5, 8, 8), y(2, 1, 8, 8), {}), D.TargetShapeError, RuntimeError,
         "dimension: 4", "target.squeeze(1)", "single-channel"),
    case("seg_mask_N1HW_uint8", lambda: (x(2, 5, 8, 8), y(2, 1, 8, 8, dtype=U8), {}), D.TargetShapeError,
         RuntimeError, "target.squeeze(1)", ".long()"),
    case("seg_mask_rgb", lambda: (x(2, 5, 8, 8), y(2, 8, 8, 3, dtype=U8), {}), D.TargetShapeError,
         RuntimeError, "RGB", "colour", "(2, 8, 8)"),
    case("seg_mask_one_hot_NHWC", lambda: (x(2, 5, 8, 8), y(2, 8, 8, 5), {}), D.TargetShapeError,
         RuntimeError, "target.argmax(-1)"),
    case("seg_target_N_H", lambda: (x(2, 5, 3, 4), y(2, 3), {}), D.TargetShapeError, RuntimeError,
         "dimension: 2", "(2, 3, 4)"),
    case("seg_spatial_mismatch", lambda: (x(2, 5, 3, 4), y(2, 3, 5), {}), D.TargetShapeError, RuntimeError,
         "size mismatch (got input: [2, 5, 3, 4] , target: [2, 3, 5]", "target dim 2 has size 5",
         "input dim 3 has size 4"),
    case("seg_height_width_swapped", lambda: (x(2, 5, 3, 4), y(2, 4, 3), {}), D.TargetShapeError,
         RuntimeError, "swapped", "target.transpose(1, 2)"),
    case("seg_logits_downsampled", lambda: (x(2, 5, 16, 16), y(2, 64, 64), {}), D.TargetShapeError,
         RuntimeError, "factor 4", "F.interpolate(logits, size=(64, 64), mode='bilinear')"),
    case("sequence_logits_downsampled", lambda: (x(2, 5, 8), y(2, 16), {}), D.TargetShapeError,
         RuntimeError, "factor 2", "mode='linear'"),
    case("seg_logits_NHWC", lambda: (x(2, 8, 8, 5), y(2, 8, 8), {}), D.TargetShapeError, RuntimeError,
         "channels-last", "logits.permute(0, 3, 1, 2)"),
    case("seg_prob_wrong_classes_4d", lambda: (x(2, 5, 3, 4), p(2, 6, 3, 4), {}),
         D.ProbabilityTargetShapeError, RuntimeError, "6 classes"),
    case("one_dim_input_many_targets", lambda: (x(5), y(3), {}), D.TargetSizeError, ValueError,
         "target size: 3", "one sample", "(3, C)"),
    case("one_dim_input_empty_target", lambda: (x(5), y(0), {}), D.TargetSizeError, ValueError,
         "target size: 0"),
    # --- weight (rows 22-25, 37) -----------------------------------------------------------------
    case("weight_too_short", lambda: (x(8, 5), y(8), dict(weight=w(4))), D.WeightShapeError, RuntimeError,
         "all 5 classes", "shape: [4]", "4 entries", "minlength=5"),
    case("weight_too_long", lambda: (x(8, 5), y(8), dict(weight=w(6))), D.WeightShapeError, RuntimeError,
         "6 entries", "5 classes"),
    case("weight_column", lambda: (x(8, 5), y(8), dict(weight=w(5, 1))), D.WeightShapeError, RuntimeError,
         "shape: [5, 1]", "weight.flatten()"),
    case("weight_row", lambda: (x(8, 5), y(8), dict(weight=w(1, 5))), D.WeightShapeError, RuntimeError,
         "shape: [1, 5]"),
    case("weight_scalar", lambda: (x(8, 5), y(8), dict(weight=w())), D.WeightShapeError, RuntimeError,
         "shape: []"),
    case("weight_one_dim_input", lambda: (x(5), y(), dict(weight=w(4))), D.WeightShapeError, RuntimeError,
         "all 5 classes"),
    case("weight_kd", lambda: (x(2, 5, 3), y(2, 3), dict(weight=w(4))), D.WeightShapeError, RuntimeError,
         "defined either for all or no classes", "4 entries", "5 classes"),
    case("weight_matches_spatial_dim", lambda: (x(2, 5, 7), y(2, 7), dict(weight=w(7))), D.WeightShapeError,
         RuntimeError, "input dim 2", "dim 1"),
    case("weight_probability_target", lambda: (x(4, 5), p(4, 5), dict(weight=w(4))), D.WeightShapeError,
         RuntimeError, "cross_entropy: weight tensor", "all 5 classes", "shape: [4]"),
    case("weight_column_probability_target", lambda: (x(2, 5, 3), p(2, 5, 3), dict(weight=w(5, 1))),
         D.WeightShapeError, RuntimeError, "shape: [5, 1]", "weight.flatten()"),
    case("weight_double", lambda: (x(4, 5), y(4), dict(weight=w(5, dtype=torch.float64))),
         D.WeightDtypeError, RuntimeError, "expected scalar type Float but found Double", "numpy",
         "weight.to(input.dtype)"),
    case("weight_float_half_logits", lambda: (x(4, 5, dtype=torch.float16), y(4), dict(weight=w(5))),
         D.WeightDtypeError, RuntimeError, "Half but found Float", "weight.to(input.dtype)"),
    case("weight_long", lambda: (x(4, 5), y(4), dict(weight=w(5, dtype=L))), D.WeightDtypeError,
         RuntimeError, "found Long"),
    case("weight_double_4d", lambda: (x(2, 5, 3, 4), y(2, 3, 4), dict(weight=w(5, dtype=torch.float64))),
         D.WeightDtypeError, RuntimeError, "Float but found Double"),
    case("weight_double_label_smoothing",
         lambda: (x(4, 5), y(4), dict(weight=w(5, dtype=torch.float64), label_smoothing=0.1)),
         D.WeightDtypeError, RuntimeError, "found Double"),
    case("weight_float8_probability_target", lambda: (x(4, 5), p(4, 5), dict(weight=w(5, dtype=F8))),
         D.WeightDtypeError, RuntimeError, "Float8_e5m2", "weight.to(input.dtype)"),
    case("weight_requires_grad", lambda: (x(4, 5), y(4), dict(weight=w(5, requires_grad=True))),
         D.WeightRequiresGradError, RuntimeError, "'nll_loss_forward'", "weight.detach()"),
    case("weight_requires_grad_kd", lambda: (x(2, 5, 3), y(2, 3), dict(weight=w(5, requires_grad=True))),
         D.WeightRequiresGradError, RuntimeError, "'nll_loss2d_forward'"),
    case("weight_row_with_smoothing_kd",
         lambda: (x(2, 5, 3, 4), y(2, 3, 4), dict(weight=w(1, 5), label_smoothing=0.1)),
         D.WeightShapeError, RuntimeError, "shape '[1, 1, 1, 1]' is invalid for input of size 5", "1-D",
         "weight.flatten()"),
    case("weight_scalar_with_smoothing_kd",
         lambda: (x(2, 1, 3), y(2, 3), dict(weight=w(), label_smoothing=0.1)),
         D.ScalarWeightError, IndexError, "weight.reshape(1)"),
    # --- logits (rows 27-30) -----------------------------------------------------------------------
    case("zero_classes_kd", lambda: (x(2, 0, 3), y(2, 3), {}), D.InputShapeError, RuntimeError,
         "size mismatch (got input: [2, 0, 0, 0] , target: [2, 1, 3]", "no classes"),
    case("scalar_logits_prob_target", lambda: (x(), p(), {}), D.InputShapeError, IndexError,
         "Dimension specified as 1", "0-dim"),
    case("scalar_logits_index_target", lambda: (x(), y(1), {}), D.InputShapeError, IndexError,
         "Dimension out of range", "(N, C)"),
    case("long_logits", lambda: (y(4, 5), y(4), {}), D.InputDtypeError, NotImplementedError,
         "log_softmax_lastdim_kernel_impl", "'Long'", "input.float()"),
    case("bool_logits_1d", lambda: (y(5, dtype=torch.bool), y(), {}), D.InputDtypeError, NotImplementedError,
         "'Bool'"),
    case("int_logits_3d", lambda: (y(2, 5, 3, dtype=torch.int32), y(2, 3), {}), D.InputDtypeError,
         NotImplementedError, '"log_softmax_kernel_impl" not implemented for \'Int\''),
    case("arguments_swapped", lambda: (y(4), x(4, 5), {}), D.InputDtypeError, NotImplementedError,
         "swapped", "cross_entropy(logits, labels)"),
    case("complex_logits", lambda: (x(4, 5, dtype=torch.complex64), y(4), {}), D.InputDtypeError,
         NotImplementedError, "ComplexFloat", "complex"),
    case("complex_logits_float_probs", lambda: (x(4, 5, dtype=torch.complex64), p(4, 5), {}),
         D.InputDtypeError, NotImplementedError, "ComplexFloat"),
    case("empty_long_logits", lambda: (y(0, 5), y(0), {}), D.InputDtypeError, NotImplementedError,
         '"nll_loss_out_frame" not implemented for \'Long\''),
    case("empty_bool_logits_kd", lambda: (y(0, 5, 2, dtype=torch.bool), y(0, 2), dict(weight=w(5))),
         D.InputDtypeError, NotImplementedError, "nll_loss2d_forward_out_frame"),
    case("empty_float8_logits_probs", lambda: (x(0, 5, dtype=F8), p(0, 5), {}), D.InputDtypeError,
         RuntimeError, "Promotion for Float8 Types"),
    case("float8_logits", lambda: (x(4, 5, dtype=F8), y(4), {}), D.InputDtypeError, NotImplementedError,
         "Float8_e5m2", "input.float()"),
    case("complex_logits_complex_target", lambda: (x(4, 5, dtype=torch.complex64),
                                                    x(4, 5, dtype=torch.complex64), {}),
         D.TargetDtypeError, RuntimeError, "got ComplexFloat"),
    # --- arguments (rows 31, 32) and probability dtypes ---------------------------------------------
    case("ignore_index_probability_target", lambda: (x(4, 5), p(4, 5), dict(ignore_index=0)),
         D.IgnoreIndexError, RuntimeError, "ignore_index=0", "reduction='none'", "(4,)"),
    case("label_smoothing_1_5", lambda: (x(4, 5), y(4), dict(label_smoothing=1.5)),
         D.LabelSmoothingRangeError, RuntimeError, "Got: 1.5"),
    case("label_smoothing_percentage", lambda: (x(4, 5), y(4), dict(label_smoothing=10.0)),
         D.LabelSmoothingRangeError, RuntimeError, "Got: 10", "percentage", "label_smoothing=0.1"),
    case("label_smoothing_inf_probs", lambda: (x(4, 5), p(4, 5), dict(label_smoothing=math.inf)),
         D.LabelSmoothingRangeError, RuntimeError, "Got: inf"),
    case("label_smoothing_just_above_1", lambda: (x(4, 5), y(4), dict(label_smoothing=1.0000000001)),
         D.LabelSmoothingRangeError, RuntimeError, "Got: 1"),
    case("one_dim_input_shape_1_target_smoothing", lambda: (x(5), y(1), dict(label_smoothing=0.1)),
         D.TargetShapeError, RuntimeError, "target.view(())"),
    case("float8_probability_target", lambda: (x(4, 5), p(4, 5, dtype=F8), {}), D.LowPrecisionTargetError,
         RuntimeError, "Promotion for Float8 Types", "target.to(input.dtype)"),
    case("float8_probability_target_smoothing",
         lambda: (x(4, 5), p(4, 5, dtype=F8), dict(label_smoothing=0.1)), D.LowPrecisionTargetError,
         NotImplementedError, "Float8_e5m2"),
    # --- devices (row 39; only meta is available on a CPU machine) ------------------------------------
    case("target_on_other_device", lambda: (torch.empty(4, 5, device="meta"), y(4), {}),
         D.DeviceMismatchError, RuntimeError, "meta", "cpu", "target.to(input.device)", same_text=False),
    case("weight_on_other_device",
         lambda: (torch.empty(4, 5, device="meta"), y(4).to("meta"), dict(weight=w(5))),
         D.DeviceMismatchError, RuntimeError, "weight is on cpu", "weight.to(input.device)", same_text=False),
    case("probability_target_on_other_device", lambda: (torch.empty(4, 5, device="meta"), p(4, 5), {}),
         D.DeviceMismatchError, RuntimeError, "target is on cpu", same_text=False),
    # --- precedence: two misuses, torch's first one wins (§5 "Check precedence") ----------------------
    case("first_long_logits_then_batch", lambda: (y(4, 5), y(3), {}), D.InputDtypeError, NotImplementedError),
    case("first_smoothing_then_batch", lambda: (x(4, 5), y(3), dict(label_smoothing=2.0)),
         D.LabelSmoothingRangeError, RuntimeError, "Got: 2"),
    case("first_smoothing_then_long_logits", lambda: (y(4, 5), y(4), dict(label_smoothing=2.0)),
         D.LabelSmoothingRangeError, RuntimeError),
    case("first_prob_weight_then_smoothing", lambda: (x(4, 5), p(4, 5), dict(weight=w(4), label_smoothing=2.0)),
         D.WeightShapeError, RuntimeError),
    case("first_prob_logit_dtype_then_smoothing", lambda: (y(4, 5), p(4, 5), dict(label_smoothing=2.0)),
         D.InputDtypeError, NotImplementedError),
    case("first_ignore_index_then_smoothing", lambda: (x(4, 5), p(4, 5), dict(ignore_index=0, label_smoothing=2.0)),
         D.IgnoreIndexError, RuntimeError),
    case("first_target_dtype_then_ignore_index", lambda: (x(4, 5), y(4, 5), dict(ignore_index=0)),
         D.TargetDtypeError, RuntimeError),
    case("first_scalar_logits_then_weight", lambda: (x(), p(), dict(weight=w(3))), D.InputShapeError, IndexError),
    case("first_scalar_logits_then_dtype", lambda: (y(), y(1), {}), D.InputShapeError, IndexError),
    case("first_batch_then_requires_grad", lambda: (x(4, 5), y(3), dict(weight=w(5, requires_grad=True))),
         D.BatchSizeMismatchError, ValueError),
    case("first_requires_grad_then_multi_target",
         lambda: (x(4, 5), y(4, 1), dict(weight=w(5, requires_grad=True))), D.WeightRequiresGradError, RuntimeError),
    case("first_requires_grad_then_1d_size", lambda: (x(5), y(3), dict(weight=w(5, requires_grad=True))),
         D.WeightRequiresGradError, RuntimeError),
    case("first_kd_size_then_requires_grad",
         lambda: (x(4, 5, 2), y(4, 3), dict(weight=w(5, requires_grad=True))), D.TargetShapeError, RuntimeError),
    case("first_multi_target_then_dtype", lambda: (x(4, 5), y(4, 1, dtype=torch.int32), {}),
         D.TargetShapeError, RuntimeError),
    case("first_dtype_then_1d_size", lambda: (x(5), y(3, dtype=torch.float32), {}), D.TargetDtypeError, RuntimeError),
    case("first_1d_size_then_weight", lambda: (x(5), y(3), dict(weight=w(4))), D.TargetSizeError, ValueError),
    case("first_4d_rank_then_dtype", lambda: (x(2, 5, 3, 4), y(2, 1, 3, 4, dtype=torch.int32), {}),
         D.TargetShapeError, RuntimeError),
    case("first_4d_dtype_then_spatial", lambda: (x(2, 5, 3, 4), y(2, 3, 5, dtype=torch.int32), {}),
         D.TargetDtypeError, RuntimeError),
    case("first_4d_weight_then_spatial", lambda: (x(2, 5, 3, 4), y(2, 3, 5), dict(weight=w(3))),
         D.WeightShapeError, RuntimeError),
    case("first_weight_dtype_then_uint8_kd",
         lambda: (x(2, 5, 3), y(2, 3, dtype=U8), dict(weight=w(5, dtype=torch.float64))),
         D.WeightDtypeError, RuntimeError),
    case("first_kd_weight_numel_then_uint8", lambda: (x(2, 5, 3), y(2, 3, dtype=U8), dict(weight=w(4))),
         D.WeightShapeError, RuntimeError),
    case("first_float8_smoothing_then_bad_weight",
         lambda: (x(4, 5), p(4, 5, dtype=F8), dict(weight=w(3), label_smoothing=0.1)),
         D.WeightShapeError, RuntimeError),
]


def _torch_raises(inp, tgt, kw):
    with pytest.raises(Exception) as info:
        F.cross_entropy(inp, tgt, **kw)
    return info.value


def _ours_raises(inp, tgt, kw):
    with pytest.raises(D.ValidatedLossError) as info:
        run_check_inputs(inp, tgt, kw)
    return info.value


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_misuse_matches_torch_and_explains(c):
    inp, tgt, kw = c.make()
    theirs = _torch_raises(inp, tgt, kw)
    if TORCH_CHECKS_AS_OURS:
        assert type(theirs) is c.torch_type, f"torch raised {type(theirs).__name__}: {theirs}"

    ours = _ours_raises(inp, tgt, kw)
    assert type(ours) is c.ours, f"we raised {type(ours).__name__}:\n{ours}"
    # Existing `except <torch's type>` clauses still catch it. The "first_*" cases pin torch 2.13's
    # order of two checks that both fail; an older torch may take the other one first.
    catchers = (c.torch_type,) if c.id.startswith("first_") else (c.torch_type, type(theirs))
    for caught_by in catchers:
        with pytest.raises(caught_by):
            raise ours
    message = str(ours)
    if c.same_text and TORCH_CHECKS_AS_OURS:
        assert message.startswith(str(theirs)), f"torch said:\n{theirs}\nwe said:\n{message}"
    for text in c.contains:
        assert text in message, f"{text!r} missing from:\n{message}"


@pytest.mark.parametrize("c", [c for c in CASES if c.same_text], ids=[c.id for c in CASES if c.same_text])
def test_misuse_on_meta_tensors_gives_the_same_error(c):
    """check_inputs reads metadata only: meta tensors (no data) give the same class and text."""
    inp, tgt, kw = c.make()
    on_cpu = _ours_raises(inp, tgt, kw)
    meta_kw = {k: (v.detach().to("meta").requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
               for k, v in kw.items()}
    on_meta = _ours_raises(inp.to("meta"), tgt.to("meta"), meta_kw)
    assert type(on_meta) is type(on_cpu)
    assert str(on_meta) == str(on_cpu)


@pytest.mark.parametrize("c", CASES[:40], ids=[c.id for c in CASES[:40]])
def test_check_batch_reports_the_same_error(c):
    inp, tgt, kw = c.make()
    report = D.check_batch(inp, tgt, **kw)
    assert not report.ok
    assert type(report.error) is c.ours
    assert report.problems == [str(report.error)]
    assert report.mode == ("probs" if inp.shape == tgt.shape else "index")
    assert "1 problem" in str(report)


def test_every_exception_is_a_validated_loss_error_of_torchs_types():
    expected_bases = {
        D.BatchSizeMismatchError: (ValueError, RuntimeError),
        D.TargetShapeError: (RuntimeError,),
        D.TargetSizeError: (D.TargetShapeError, ValueError, RuntimeError),
        D.ScalarTargetError: (D.TargetSizeError, ValueError, RuntimeError, IndexError),
        D.ProbabilityTargetShapeError: (D.TargetShapeError, ValueError, RuntimeError),
        D.TargetDtypeError: (RuntimeError,),
        D.LowPrecisionTargetError: (D.TargetDtypeError, RuntimeError, NotImplementedError),
        D.InputDtypeError: (NotImplementedError,),
        D.InputShapeError: (IndexError, RuntimeError),
        D.WeightShapeError: (RuntimeError,),
        D.ScalarWeightError: (D.WeightShapeError, IndexError),
        D.WeightDtypeError: (RuntimeError,),
        D.WeightRequiresGradError: (RuntimeError,),
        D.IgnoreIndexError: (RuntimeError,),
        D.LabelSmoothingRangeError: (RuntimeError,),
        D.DeviceMismatchError: (RuntimeError,),
        D.TargetOutOfRangeError: (IndexError,),
        D.NonFiniteLogitsError: (ValueError, RuntimeError),
        D.InplaceBackwardError: (ValueError,),
        D.LogitsModifiedError: (RuntimeError,),
    }
    for cls, bases in expected_bases.items():
        assert issubclass(cls, D.ValidatedLossError), cls
        for base in bases:
            assert issubclass(cls, base), (cls, base)
    # Types torch does not raise for a misuse are not mixed in by accident.
    assert not issubclass(D.TargetShapeError, ValueError)
    assert not issubclass(D.TargetDtypeError, (ValueError, IndexError, NotImplementedError))
    assert not issubclass(D.TargetOutOfRangeError, (ValueError, RuntimeError))
    assert issubclass(D.InputDtypeError, RuntimeError)  # as NotImplementedError is, in Python
    exported = {name for name in D.__all__ if isinstance(getattr(D, name), type)}
    assert set(c.__name__ for c in expected_bases) | {"ValidatedLossError", "BatchReport"} == exported


def test_exception_attributes_survive_pickling():
    err = D.TargetOutOfRangeError("Target 9 is out of bounds.", position=(1, 2), value=9, num_classes=5,
                                  count=3, ignore_index=-100)
    back = pickle.loads(pickle.dumps(err))
    assert (back.position, back.value, back.num_classes, back.count, back.ignore_index) == ((1, 2), 9, 5, 3, -100)
    assert str(back) == str(err)
    nf = pickle.loads(pickle.dumps(D.NonFiniteLogitsError("nan", row=3, column=1, value=float("inf"))))
    assert (nf.row, nf.column, nf.value) == (3, 1, float("inf"))
    assert isinstance(nf, ValueError) and isinstance(nf, RuntimeError)


def test_requires_grad_weight_is_fine_without_grad_mode():
    inp, tgt, weight = x(4, 5), y(4), w(5, requires_grad=True)
    with torch.no_grad():
        F.cross_entropy(inp, tgt, weight=weight)
        assert D.check_inputs(inp, tgt, weight, -100, 0.0) == "index"
    with torch.inference_mode():
        assert D.check_inputs(x(4, 5), y(4), w(5).requires_grad_(), -100, 0.0) == "index"


def test_fake_tensors_are_checked_without_data():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        inp, good, bad = torch.empty(4, 5), torch.empty(4, dtype=L), torch.empty(3, dtype=L)
        assert D.check_inputs(inp, good, None, -100, 0.0) == "index"
        with pytest.raises(D.BatchSizeMismatchError):
            D.check_inputs(inp, bad, None, -100, 0.0)


# =============================================================================
# Valid inputs: check_inputs passes, gives torch's mode, and torch accepts them
# =============================================================================

INPUT_SHAPES = [(5,), (3, 5), (3, 5, 2), (2, 5, 2, 3), (2, 5, 2, 1, 2)]


def _valid_index_targets(shape):
    index_shape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    targets = [("int64", y(*index_shape, value=4))]
    if len(shape) <= 2:
        targets.append(("uint8", y(*index_shape, dtype=U8, value=4)))
    if len(shape) == 1:
        targets.append(("int64_(1,)", y(1, value=2)))
    return targets


def _valid_grid():
    for shape in INPUT_SHAPES:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for name, target in _valid_index_targets(shape):
                for weight, ignore_index, smoothing in itertools.product(
                        (None, "ok"), (-100, 1, 4), (0.0, 0.1, 1.0, -0.5, math.nan)):
                    if smoothing > 0 and (name == "uint8" and weight or name == "int64_(1,)"):
                        continue  # torch's smoothing term fails on these (see the tests below)
                    kw = dict(ignore_index=ignore_index, label_smoothing=smoothing)
                    if weight:
                        kw["weight"] = w(5, dtype=dtype)
                    yield (f"{shape}-{dtype}-{name}-{weight}-{ignore_index}-{smoothing}",
                           x(*shape, dtype=dtype), target, kw, "index")
            for tdtype in (torch.float32, torch.float16):
                for weight, ignore_index, smoothing in itertools.product(
                        (None, "ok", "double", "grad"), (-100, -1), (0.0, 0.1, 1.0)):
                    kw = dict(ignore_index=ignore_index, label_smoothing=smoothing)
                    if weight:
                        kw["weight"] = {"ok": w(5, dtype=dtype), "double": w(5, dtype=torch.float64),
                                        "grad": w(5, requires_grad=True)}[weight]
                    yield (f"{shape}-{dtype}-probs-{tdtype}-{weight}-{ignore_index}-{smoothing}",
                           x(*shape, dtype=dtype), p(*shape, dtype=tdtype), kw, "probs")
    # Accepted by torch although a misuse is likely: check_inputs must not raise either.
    yield "NTC_with_T_equal_C", x(2, 5, 5), y(2, 5), {}, "index"
    yield "column_weight_kd", x(2, 5, 3), y(2, 3), dict(weight=w(5, 1)), "index"
    yield "column_weight_4d", x(2, 5, 3, 4), y(2, 3, 4), dict(weight=w(1, 5)), "index"
    yield "negative_weight", x(3, 5), y(3), dict(weight=-w(5)), "index"
    yield "empty_batch", x(0, 5), y(0), {}, "index"
    yield "empty_spatial", x(2, 5, 0), y(2, 0), {}, "index"
    yield "empty_batch_probs", x(0, 5), p(0, 5), {}, "probs"
    yield "uint8_255_ignored", x(3, 5), y(3, dtype=U8, value=255), dict(ignore_index=255), "index"
    yield "one_dim_probs", x(5), p(5), {}, "probs"
    yield "one_class_index", x(4, 1), y(4), {}, "index"
    yield "complex_weight_probs", x(4, 5), p(4, 5), dict(weight=w(5, dtype=torch.complex64)), "probs"
    yield "empty_long_logits_probs", y(0, 5), p(0, 5), {}, "probs"
    yield "empty_uint8_weight_smoothing", x(0, 5), y(0, dtype=U8), dict(weight=w(5), label_smoothing=0.1), "index"
    yield "uint8_weight_smoothing_sum", x(3, 5), y(3, dtype=U8), dict(weight=w(5), label_smoothing=0.1,
                                                                      reduction="sum"), "index"
    yield "half_logits_bf16_probs", x(4, 5, dtype=torch.float16), p(4, 5, dtype=torch.bfloat16), {}, "probs"


VALID = list(_valid_grid())


@pytest.mark.parametrize("inp,tgt,kw,torch_text", [
    (x(3, 5), y(3, dtype=U8), dict(weight=w(5), label_smoothing=0.1), "gather()"),
    (x(2, 5, 3), y(2, 3), dict(weight=w(5, 1), label_smoothing=0.1), "Index tensor must have"),
], ids=["uint8_target", "column_weight_kd"])
def test_known_divergence_smoothing_mean_gather(inp, tgt, kw, torch_text):
    """For reduction='mean' torch's smoothing term runs weight.gather(0, target[~ignored]), which
    fails for a uint8 target or a (C, 1) weight, but only when some target is not ignored. That
    depends on values and on the reduction, which check_inputs does not see: it accepts (the
    kernel computes the loss)."""
    assert torch_text in str(_torch_raises(inp, tgt, kw))
    F.cross_entropy(inp, tgt, ignore_index=0, **kw)  # every target ignored: torch accepts
    F.cross_entropy(inp, tgt, reduction="sum", **kw)  # another reduction: torch accepts
    assert run_check_inputs(inp, tgt, kw) == "index"


def test_known_divergence_empty_uint8_target_kd():
    """An empty uint8 target with a K-dim input passes torch for 'mean'/'sum' (the kernel returns
    before reading it) but not for 'none'; check_inputs knows no reduction and always rejects
    uint8 for K-dim inputs, as torch does for every non-empty batch."""
    inp, tgt = x(0, 5, 2), y(0, 2, dtype=U8)
    F.cross_entropy(inp, tgt)
    assert "found Byte" in str(_torch_raises(inp, tgt, dict(reduction="none")))
    with pytest.raises(D.TargetDtypeError):
        run_check_inputs(inp, tgt, {})


def test_valid_grid_is_large_enough():
    assert len(VALID) > 500


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=str)
def test_valid_inputs_pass_with_torchs_mode(shape):
    checked = 0
    for name, inp, tgt, kw, mode in VALID:
        if name.startswith(str(shape)):
            torch_cross_entropy(inp, tgt, **kw)  # torch accepts it (else the grid is wrong)
            assert run_check_inputs(inp, tgt, kw) == mode, name
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("name,inp,tgt,kw,mode", [v for v in VALID if not v[0].startswith("(")],
                         ids=[v[0] for v in VALID if not v[0].startswith("(")])
def test_valid_special_cases_pass(name, inp, tgt, kw, mode):
    torch_cross_entropy(inp, tgt, **kw)
    assert run_check_inputs(inp, tgt, kw) == mode


# =============================================================================
# Random parity with torch
# =============================================================================

INPUT_DTYPES = [torch.float32] * 6 + [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool,
                                      torch.complex64]
TARGET_DTYPES = [L, L, L, torch.float32, torch.float32, U8, torch.int32, torch.float16, torch.bool, F8]


@st.composite
def cross_entropy_arguments(draw):
    rank = draw(st.integers(0, 5))
    shape = draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank))
    if rank:
        shape[0 if rank == 1 else 1] = draw(st.integers(0, 4))
    shape = tuple(shape)
    index_shape = () if rank <= 1 else (shape[0],) + shape[2:]
    kind = draw(st.sampled_from(["same", "index", "index", "mutated", "random"]))
    if kind == "same":
        tshape = shape
    elif kind == "index":
        tshape = index_shape
    elif kind == "random":
        tshape = tuple(draw(st.lists(st.integers(0, 3), max_size=5)))
    else:
        tshape = list(index_shape)
        where = draw(st.integers(0, len(tshape)))
        action = draw(st.sampled_from(["insert", "drop", "change"]))
        if action == "insert":
            tshape.insert(where, draw(st.integers(1, 3)))
        elif tshape:
            where = min(where, len(tshape) - 1)
            if action == "drop":
                tshape.pop(where)
            else:
                tshape[where] = draw(st.integers(0, 4))
        tshape = tuple(tshape)
    inp = torch.zeros(shape, dtype=draw(st.sampled_from(INPUT_DTYPES)))
    tgt = torch.zeros(tshape, dtype=draw(st.sampled_from(TARGET_DTYPES)))
    kw = dict(ignore_index=draw(st.sampled_from([-100, -1, 0, 2])),
              label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0, 1.5, -1.0, math.nan, math.inf])))
    classes = shape[0 if rank == 1 else 1] if rank else 1
    weight_shape = draw(st.sampled_from([None, None, (classes,), (classes + 1,), (classes, 1), (1, classes), ()]))
    if weight_shape is not None:
        wdtype = draw(st.sampled_from([inp.dtype, torch.float32, torch.float64, torch.float16]))
        weight = torch.ones(weight_shape, dtype=wdtype)
        if draw(st.booleans()) and wdtype.is_floating_point:
            weight.requires_grad_()
        kw["weight"] = weight
    return inp, tgt, kw


def _torch_error_or_none(inp, tgt, kw):
    try:
        torch_cross_entropy(inp, tgt, **kw)
    except Exception as exc:  # noqa: BLE001 - any torch error is compared
        return exc
    return None


# Older torch differs from 2.13 on corner cases this search finds at once (empty inputs skip its
# target dtype check; other error classes and texts for empty and one-element inputs).
@pytest.mark.skipif(not TORCH_CHECKS_AS_OURS, reason=OLDER_TORCH_CHECKS)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cross_entropy_arguments())
def test_random_arguments_raise_exactly_when_torch_does(args):
    inp, tgt, kw = args
    theirs = _torch_error_or_none(inp, tgt, kw)
    if isinstance(theirs, IndexError) and str(theirs).startswith("Target "):
        # A value error (zero classes, so class 0 is out of range) hides any later metadata
        # error: compare with every target ignored instead.
        assume(tgt.dtype == L)
        tgt = torch.full_like(tgt, kw["ignore_index"])
    # torch failures that depend on the reduction or on values (see the known-divergence tests).
    weight, smoothing = kw.get("weight"), kw["label_smoothing"]
    assume(not (weight is not None and smoothing > 0 and (tgt.dtype == U8 or weight.dim() > 1 and inp.dim() >= 3)))
    assume(not (tgt.dtype == U8 and inp.dim() >= 3 and tgt.numel() == 0))
    theirs = _torch_error_or_none(inp, tgt, kw)
    try:
        mode = run_check_inputs(inp, tgt, kw)
        ours = None
    except D.ValidatedLossError as exc:
        ours = exc
    if theirs is None:
        assert ours is None, f"torch accepts, we raised:\n{ours}"
        assert mode == ("probs" if inp.shape == tgt.shape else "index")
        return
    assert ours is not None, f"torch raised {type(theirs).__name__}: {theirs}\nwe accepted"
    assert isinstance(ours, type(theirs)), f"torch {type(theirs).__name__}, ours {type(ours).__name__}: {ours}"
    assert str(ours).startswith(str(theirs)), f"torch said:\n{theirs}\nwe said:\n{ours}"


# =============================================================================
# Out-of-range targets: the kernel's message, target_status, check_batch
# =============================================================================


def kernel_message(shape, position, value, classes, count, ignore):
    """The out-of-range message as the extension words it (the one place it is written)."""
    status = torch.tensor([position, value, count, -1, -1, -1], dtype=torch.int64)
    with pytest.raises(IndexError) as info:
        torch.ops.validated_loss.raise_for_status(status, list(shape), classes, ignore, [1, classes])
    return str(info.value)


@needs_extension
def test_out_of_range_message_exact_text():
    message = kernel_message((2, 3, 4), 20, 9, 5, 2, -100)
    assert message == (
        "Target 9 is out of bounds. target[1, 2, 0] = 9 is not a class index in [0, 5) and is not "
        "ignore_index (-100); 2 of 24 targets are invalid. Likely cause: a model head with fewer "
        "outputs (5) than the label set, or labels from another dataset or label map.")


@needs_extension
@pytest.mark.parametrize("value,classes,text", [
    (-1, 5, "pass ignore_index=-1"),
    (5, 5, "labels numbered 1..5 instead of 0..4"),
    (255, 21, "ignore_index=255"),
    (255, 21, "grey values 0..255"),
    (12, 10, "fewer outputs (10) than the label set"),
])
def test_out_of_range_message_likely_cause(value, classes, text):
    assert text in kernel_message((4,), 3, value, classes, 1, -100)


@needs_extension
def test_out_of_range_message_positions():
    assert "target[] = 7" in kernel_message((), 0, 7, 5, 1, -100)
    assert "target[0, 0] = 7" in kernel_message((2, 3), 0, 7, 5, 1, -100)
    assert "target[1, 2] = 7" in kernel_message((2, 3), 5, 7, 5, 1, -100)
    assert "1 of 6 targets" in kernel_message((2, 3), 5, 7, 5, 1, -100)


def test_target_status_finds_the_first_invalid_target():
    target = torch.tensor([[0, 1, 7], [-1, -100, 9]])
    assert D.target_status(target, 5, -100).tolist() == [2, 7, 3, -1, -1, -1]
    assert D.target_status(target, 5, -1).tolist() == [2, 7, 3, -1, -1, -1]  # -100 counts now
    assert D.target_status(target.clamp(0, 4), 5, -100).tolist() == [-1, -1, 0, -1, -1, -1]
    assert D.target_status(y(0), 5, -100).tolist() == [-1, -1, 0, -1, -1, -1]
    assert D.target_status(y(dtype=U8, value=255), 5, 255).tolist()[2] == 0


def test_check_batch_out_of_range_matches_torch():
    inp, tgt = x(2, 5, 3, 4), y(2, 3, 4)
    tgt[1, 2, 0] = 9
    tgt[1, 2, 3] = 7
    tgt[0, 0, 0] = -100
    theirs = _torch_raises(inp, tgt, {})
    report = D.check_batch(inp, tgt)
    err = report.error
    assert not report.ok and type(err) is D.TargetOutOfRangeError
    assert isinstance(err, type(theirs)) and str(err).startswith(str(theirs))  # "Target 9 is out of bounds."
    assert (err.position, err.value, err.num_classes, err.count, err.ignore_index) == ((1, 2, 0), 9, 5, 2, -100)
    assert tgt[err.position] == err.value
    assert "target[1, 2, 0] = 9" in str(err) and "2 of 24 targets are invalid" in str(err)
    assert report.problems == [str(err)]


@pytest.mark.parametrize("dtype,value,ignore_index,bad", [
    (L, -1, -100, True), (L, -1, -1, False), (U8, 255, -100, True), (U8, 255, 255, False),
    (L, 5, -100, True), (L, 5, 5, False), (L, 4, -100, False),
])
def test_check_batch_ignore_index_matches_torch(dtype, value, ignore_index, bad):
    inp, tgt = x(3, 5), y(3, dtype=dtype)
    tgt[1] = value
    report = D.check_batch(inp, tgt, ignore_index=ignore_index)
    if bad:
        theirs = _torch_raises(inp, tgt, dict(ignore_index=ignore_index))
        assert isinstance(report.error, D.TargetOutOfRangeError)
        assert str(report.error).startswith(str(theirs))
        assert report.error.position == (1,)
    else:
        F.cross_entropy(inp, tgt, ignore_index=ignore_index)
        assert report.ok and report.error is None


def test_check_batch_binary_single_logit():
    inp, tgt = x(4, 1), torch.tensor([0, 1, 1, 0])
    assert str(_torch_raises(inp, tgt, {})) == "Target 1 is out of bounds."
    report = D.check_batch(inp, tgt)
    assert report.error.value == 1 and report.error.position == (1,)
    assert "one class too few" in str(report.error)


def test_check_batch_ok_and_check_values_off():
    report = D.check_batch(x(4, 5), torch.tensor([0, 1, 2, 4]))
    assert report.ok and report.mode == "index" and report.error is None
    assert report.problems == [] and report.warnings == []
    assert str(report).startswith("cross_entropy batch check: OK")
    bad = torch.tensor([0, 1, 2, 9])
    assert not D.check_batch(x(4, 5), bad).ok
    assert D.check_batch(x(4, 5), bad, check_values=False).ok


@pytest.mark.parametrize("inp,tgt,fix", [
    (x(2, 5, 5), y(2, 5), "logits.transpose(1, 2)"),
    (x(2, 4, 4, 4), y(2, 4, 4), "logits.movedim(-1, 1)"),
])
def test_check_batch_warns_when_classes_last_would_also_fit(inp, tgt, fix):
    F.cross_entropy(inp, tgt)  # torch accepts it silently
    assert D.check_inputs(inp, tgt, None, -100, 0.0) == "index"
    report = D.check_batch(inp, tgt)
    assert report.ok and len(report.warnings) == 1
    assert fix in report.warnings[0] and str(tuple(inp.shape)) in report.warnings[0]


def test_check_batch_no_ambiguity_warning_when_shapes_decide():
    assert D.check_batch(x(2, 5, 7), y(2, 7)).warnings == []


def test_check_batch_value_warnings():
    all_ignored = D.check_batch(x(3, 5), y(3, value=-100))
    assert all_ignored.ok and "NaN" in all_ignored.warnings[0]
    not_distribution = D.check_batch(x(3, 5), torch.full((3, 5), 0.5))
    assert not_distribution.ok and "do not sum to 1" in not_distribution.warnings[0]
    negative = D.check_batch(x(3, 5), torch.tensor([[1.5, -0.5, 0, 0, 0]] * 3))
    assert any("negative" in text for text in negative.warnings)
    softmaxed = D.check_batch(torch.softmax(x(3, 5), 1), y(3))
    assert softmaxed.ok and "looks like probabilities" in softmaxed.warnings[0]
    nonfinite = x(3, 5)
    nonfinite[2, 1] = math.nan
    assert "input[2, 1]" in D.check_batch(nonfinite, y(3)).warnings[0]
    assert D.check_batch(x(3, 5), torch.softmax(x(3, 5), 1)).warnings == []


def test_check_batch_on_meta_tensors_skips_values():
    report = D.check_batch(torch.empty(4, 5, device="meta"), torch.empty(4, dtype=L, device="meta"))
    assert report.ok and report.mode == "index"


def test_compiled_check_does_not_specialise_sizes_and_still_raises_our_errors():
    import torch._dynamo.testing

    counter = torch._dynamo.testing.CompileCounter()

    @torch.compile(backend=counter, dynamic=True)
    def loss(inp, tgt, weight):
        D.check_inputs(inp, tgt, weight, -100, 0.1)
        return F.cross_entropy(inp, tgt, weight=weight, label_smoothing=0.1)

    for n, d in itertools.product((4, 7, 9), (3, 5)):
        loss(x(n, 5, d), y(n, d), w(5))
    assert counter.frame_count == 1  # one graph for every batch and sequence size
    with pytest.raises(D.BatchSizeMismatchError, match=r"batch_size \(4\) to match target batch_size \(5\)"):
        loss(x(4, 5, 3), y(5, 3), w(5))
