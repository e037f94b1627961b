"""Hints: given shapes (and dtypes) that torch rejects, guess the likely cause and the fix.

Each hint looks at the tensors' metadata only and returns a Diagnosis (cause, fix, and the kind of
mistake, which picks the exception class) or None. checks.py words the errors with them; data.py
and distributed.py reuse the batch-size explanation (batch_size_diagnosis, ONE_DATASET_FIX).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._text import (class_count, class_dim, index_shapes, numel_of, shape_text, target_batch_size, without_dim)


@dataclass(frozen=True)
class Diagnosis:
    # kind picks the exception class: "scalar" (0-dim target), "probs" (a
    # probability target of the wrong shape), "layout" (a fixable layout
    # mistake), "batch" (genuinely different numbers of samples).
    kind: str
    cause: str
    fix: Optional[str] = None




def probability_dtype_hint(input, target):
    if target.is_complex():
        return "complex targets are not supported.", "pass real class probabilities."
    if input.dim() == 0:
        return ("the input is a 0-dim scalar: it has no class dimension.",
                "pass logits of shape (N, C) with class indices of shape (N,).")
    if class_count(input) == 1:
        return ("the logits have a single class, so softmax is constant and the loss "
                "is always 0; this looks like binary classification.",
                "F.binary_cross_entropy_with_logits(input, target.float()), or give "
                "the model 2 outputs and pass class indices.")
    if input.dim() == 1:
        return ("a 1-D input is one sample; a target of the same size looks like a "
                "one-hot vector.",
                "pass the class index: target.argmax() (0-dim), or target.float() "
                "for probabilities.")
    index_shape = shape_text(index_shapes(input)[0])
    return ("the target looks like one-hot labels stored as integers.",
            f"target.argmax(1) gives class indices of shape {index_shape}; or use "
            f"target.float() to treat them as probabilities.")


def index_dtype_hint(input, target):
    if target.is_floating_point():
        return ("class indices stored as floats (from a float array or DataFrame, or "
                "torch.Tensor(list), which makes float32). A floating target is read as "
                f"class probabilities only when its shape equals the input's "
                f"{shape_text(input.shape)}.",
                "target.long()")
    if target.dtype == torch.bool:
        return ("bool labels: binary classification?",
                "target.long() with 2-class logits, or "
                "F.binary_cross_entropy_with_logits(logit, target.float()) with one logit.")
    if target.is_complex():
        return "complex targets are not supported.", "pass int64 class indices."
    if target.dtype == torch.int32:
        return ("int32 labels, typically from a numpy int32 array (numpy's default "
                "integer on Windows before numpy 2) through torch.from_numpy.",
                "target.long()")
    return (f"{target.dtype} labels; torch needs int64 class indices.", "target.long()")


def weight_shape_hint(input, weight):
    classes, size = class_count(input), int(weight.numel())
    if size == classes:
        return (f"the weight has the right {classes} entries but shape "
                f"{shape_text(weight.shape)}; it must be 1-D.", "weight.flatten()")
    head = f"the weight has {size} entries but the input has {classes} classes (dim {class_dim(input)})"
    # The batch size equalling the weight length is usually a coincidence: look at dims >= 2.
    other_dims = [d for d in range(2, input.dim()) if int(input.shape[d]) == size]
    if other_dims:
        return (f"{head}; {size} is the size of input dim {other_dims[0]}, so the class "
                "dimension may be in the wrong place (it must be dim 1).", None)
    if size < classes:
        return (f"{head}: weights computed from the labels present in the data (np.unique, "
                "compute_class_weight, bincount without minlength) miss classes that never "
                "occur.", f"torch.bincount(labels, minlength={classes}) to count every class.")
    return (f"{head}: the model's output layer has fewer classes than the label set.",
            f"give the model {size} outputs, or a weight of {classes} entries.")


def diagnose_target_shape(input, target, at_batch_check) -> Diagnosis:
    for hint in _SHAPE_HINTS:
        diagnosis = hint(input, target)
        if diagnosis is not None:
            return diagnosis
    if at_batch_check:
        return batch_size_diagnosis(input, target)
    return Diagnosis("layout", "the target shape fits neither the class-index nor the "
                                "probability layout (see 'expected').")


def _hint_scalar_target(input, target):
    if target.dim() != 0:
        return None
    n = int(input.shape[0])
    wanted = shape_text(index_shapes(input)[0])
    if input.dim() == 2 and n == 1:
        fix = "target.view(1)"
    else:
        fix = f"pass one class index per position, shape {wanted}."
    return Diagnosis("scalar", f"the target is a single number (0-dim) but the input "
                                f"holds a batch of {n}.", fix)


def _hint_squeeze(input, target):
    # A size-1 dim too many: (N, 1) labels, (N, 1, H, W) masks, (N, C, 1) probabilities.
    wanted = index_shapes(input)
    for dim in reversed(range(target.dim())):
        if int(target.shape[dim]) != 1:
            continue
        squeezed = without_dim(target.shape, dim)
        if squeezed in wanted:
            return Diagnosis("layout", _extra_dim_cause(input, target, dim), f"target.squeeze({dim})")
        if squeezed == tuple(int(s) for s in input.shape) and target.is_floating_point():
            return Diagnosis("probs", f"the probability target has an extra dimension of size 1 "
                                       f"at dim {dim}.", f"target.squeeze({dim})")
    return None


def _extra_dim_cause(input, target, dim):
    if input.dim() == 4 and dim == 1:
        return "masks loaded as single-channel images keep a channel dimension (N, 1, H, W)."
    if target.dim() == 2 and dim == 1:
        return "labels stored as a column (N, 1), e.g. from a DataFrame column or a (N, 1) array."
    return f"the target has an extra dimension of size 1 at dim {dim}."


def _hint_channel_last_logits(input, target):
    # (N, T, C) or (N, H, W, C) logits with a matching (N, T) / (N, H, W) target.
    if input.dim() < 3:
        return None
    if tuple(int(s) for s in target.shape) != tuple(int(s) for s in input.shape[:-1]):
        return None
    classes = int(input.shape[-1])
    if input.dim() == 3:
        n, t = int(input.shape[0]), int(input.shape[1])
        cause = (f"the logits are (batch, sequence, classes) = {shape_text(input.shape)} with "
                 f"{classes} classes last, but torch takes dim 1 as the class dimension.")
        fix = (f"logits.transpose(1, 2) (shape ({n}, {classes}, {t})), or flatten both: "
               f"logits.flatten(0, 1) and target.flatten() (shapes ({n * t}, {classes}) "
               f"and ({n * t},)).")
    else:
        order = ", ".join(["0", str(input.dim() - 1)] + [str(d) for d in range(1, input.dim() - 1)])
        cause = (f"the logits are channels-last {shape_text(input.shape)} with {classes} "
                 f"classes last, but torch takes dim 1 as the class dimension.")
        fix = (f"logits.permute({order}) (or logits.movedim(-1, 1)); or flatten both: "
               f"logits.reshape(-1, {classes}) and target.reshape(-1).")
    return Diagnosis("layout", cause, fix)


def _hint_channel_last_target(input, target):
    # (N, d..., C) one-hot / probabilities, or (N, H, W, 3) colour masks.
    if input.dim() < 3 or target.dim() != input.dim():
        return None
    if tuple(int(s) for s in target.shape[:-1]) != index_shapes(input)[0]:
        return None
    last, classes = int(target.shape[-1]), class_count(input)
    rgb = input.dim() >= 4 and last in (3, 4)
    rgb_fix = ("map each colour to its class index (compare against the palette) to get "
               f"an int64 mask of shape {shape_text(index_shapes(input)[0])}")
    if last == classes and target.is_floating_point():
        return Diagnosis("probs", "class probabilities stored channels-last (classes in "
                                   "the last dim).", "target.movedim(-1, 1)")
    if last == classes:
        fix = "target.argmax(-1) for class indices"
        return Diagnosis("layout", "one-hot labels with the classes in the last dim.",
                          fix + (f"; if it is an RGB mask, {rgb_fix}." if rgb else "."))
    if rgb:
        return Diagnosis("layout", f"the target looks like an RGB{'A' if last == 4 else ''} "
                                    f"colour mask (last dim {last}).", rgb_fix + ".")
    return None


def _hint_probability_shape(input, target):
    # A floating target of the input's rank was meant as class probabilities.
    if not target.is_floating_point() or target.dim() != input.dim():
        return None
    ins = tuple(int(s) for s in input.shape)
    tgt = tuple(int(s) for s in target.shape)
    if sorted(ins) == sorted(tgt):
        if len(ins) == 2 and tgt == ins[::-1]:
            return Diagnosis("probs", f"the probability target is transposed: {shape_text(tgt)} "
                                       f"instead of {shape_text(ins)}.", "target.t()")
        return Diagnosis("probs", "the probability target has the input's sizes in another "
                                   "order.", f"permute the target to {shape_text(ins)}.")
    diffs = [f"dim {d}: input {ins[d]}, target {tgt[d]}" for d in range(len(ins)) if ins[d] != tgt[d]]
    cause = "the probability target's shape differs from the input's (" + "; ".join(diffs) + ")."
    if len(diffs) == 1 and ins[class_dim(input)] != tgt[class_dim(input)]:
        cause = (f"the probability target has {tgt[class_dim(input)]} classes but the logits "
                 f"have {ins[class_dim(input)]}: the one-hot / soft labels and the model "
                 "disagree on the number of classes.")
    if input.dim() == 4 and tgt[1] in (3, 4):
        cause += " Or it is an RGB mask loaded with ToTensor: convert colours to class indices."
    return Diagnosis("probs", cause)


def _hint_flattened_logits(input, target):
    # Logits flattened to (N*T, C), target still (N, T).
    if input.dim() != 2 or target.dim() < 2 or numel_of(target.shape) != int(input.shape[0]):
        return None
    rows, classes = int(input.shape[0]), int(input.shape[1])
    sizes = ", ".join(str(int(s)) for s in target.shape)
    return Diagnosis(
        "layout",
        f"the logits were flattened to {shape_text(input.shape)} but the target is still "
        f"{shape_text(target.shape)}.",
        f"target.flatten() (shape ({rows},)); or keep both unflattened: "
        f"logits.view({sizes}, {classes}).movedim(-1, 1) with the {shape_text(target.shape)} target.")


def _hint_flattened_target(input, target):
    # Target flattened to (N*T,), logits still (N, T, C) or (N, C, d...).
    if input.dim() < 3 or target.dim() != 1:
        return None
    size = int(target.shape[0])
    n = int(input.shape[0])
    if input.dim() == 3 and n * int(input.shape[1]) == size:
        classes = int(input.shape[2])
        return Diagnosis(
            "layout",
            f"the target was flattened to ({size},) = {n} x {int(input.shape[1])} but the "
            f"logits are still (batch, sequence, classes) = {shape_text(input.shape)}.",
            f"logits.flatten(0, 1) (shape ({size}, {classes})).")
    if n * numel_of(input.shape[2:]) == size:
        classes = int(input.shape[1])
        spatial = ", ".join(str(int(s)) for s in input.shape[2:])
        return Diagnosis(
            "layout",
            f"the target was flattened to ({size},) but the logits are still "
            f"{shape_text(input.shape)}.",
            f"logits.movedim(1, -1).reshape(-1, {classes}) (shape ({size}, {classes})), "
            f"or target.view({n}, {spatial}).")
    return None


def _hint_flattened_one_hot(input, target):
    # (N*C,) target for (N, C) logits: one-hot rows flattened.
    if input.dim() != 2 or target.dim() != 1:
        return None
    n, classes = int(input.shape[0]), int(input.shape[1])
    if n == 0 or classes < 2 or int(target.shape[0]) != n * classes:
        return None
    return Diagnosis(
        "layout",
        f"the target has {n * classes} = {n} x {classes} entries: one-hot label rows "
        "flattened into one vector.",
        f"target.view({n}, {classes}).argmax(1) for class indices.")


def _hint_spatial_sizes(input, target):
    # Right rank, right batch, some spatial sizes differ.
    wanted = index_shapes(input)[0]
    if input.dim() < 3 or target.dim() != len(wanted) or int(target.shape[0]) != wanted[0]:
        return None
    got = tuple(int(s) for s in target.shape)
    diffs = [f"target dim {d} has size {got[d]} but input dim {d + 1} has size {wanted[d]}"
             for d in range(1, len(wanted)) if got[d] != wanted[d]]
    cause = "spatial sizes differ: " + "; ".join(diffs) + "."
    if sorted(got[1:]) == sorted(wanted[1:]):
        if len(got) == 3:
            return Diagnosis("layout", cause + " Height and width are swapped.", "target.transpose(1, 2)")
        return Diagnosis("layout", cause + " The same sizes in another order.",
                          f"permute the target to {shape_text(wanted)}.")
    factor = _common_scale(got[1:], wanted[1:])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(got) - 1)
    if factor is not None and mode is not None:
        return Diagnosis(
            "layout", cause + f" All differ by the factor {factor:g}: the model output is "
                              "downsampled, or masks and images were resized differently.",
            f"F.interpolate(logits, size={tuple(got[1:])}, mode='{mode}') "
            "(or resize the masks with mode='nearest').")
    return Diagnosis("layout", cause + " Images and masks were resized or cropped "
                                        "differently; apply the same transform to both.")


def _common_scale(got, wanted) -> Optional[float]:
    ratios = {g / w for g, w in zip(got, wanted) if w > 0}
    if len(ratios) == 1 and all(w > 0 for w in wanted):
        return ratios.pop()
    return None


def _hint_missing_dims(input, target):
    # (N,) target for (N, C, T) logits: one label per sample, per-position logits.
    wanted = index_shapes(input)[0]
    if input.dim() < 3 or not 0 < target.dim() < len(wanted):
        return None
    if tuple(int(s) for s in target.shape) != wanted[:target.dim()]:
        return None
    extra = wanted[target.dim():]
    if all(e == 1 for e in extra):
        shape = (wanted[0], class_count(input)) + wanted[1:target.dim()]
        return Diagnosis("layout", f"the logits have trailing size-1 dims {shape_text(extra)}.",
                          f"logits.reshape{shape_text(shape)}")
    return Diagnosis(
        "layout",
        f"one label per sample, but the logits have extra dims {shape_text(extra)} "
        "(per-token or per-pixel outputs).",
        "reduce the logits over those dims first (e.g. logits.mean(2), or the last step "
        f"logits[:, :, -1]), or give one label per position, shape {shape_text(wanted)}.")


def _hint_multi_label(input, target):
    # (N, K) integer target for (N, C) logits, K != C.
    if input.dim() != 2 or target.dim() != 2 or int(target.shape[0]) != int(input.shape[0]):
        return None
    k, classes = int(target.shape[1]), int(input.shape[1])
    return Diagnosis(
        "layout",
        f"the target has {k} columns per sample while the logits have {classes} classes: "
        "one-hot labels built for another number of classes, or multi-label targets.",
        "for one-hot labels target.argmax(1) (with a model of matching width); for "
        "several labels per sample use F.binary_cross_entropy_with_logits.")


def looks_like_batch_size(n: int) -> bool:
    """The only evidence two counts give: batch sizes are nearly always chosen round, a power of
    two from 8 or a multiple of 10. Two final partial batches (1000 % 32 = 8 against
    1010 % 32 = 18) give counts that are not, and then nothing is said about a batch size."""
    return (n >= 8 and n & (n - 1) == 0) or (n >= 10 and n % 10 == 0)


# The fix for inputs and targets batched apart (cross_entropy, check_loader, the ranks of a group).
ONE_DATASET_FIX = "batch inputs and targets together: one Dataset returning (input, target) pairs, one DataLoader"


def per_row_ratio(n_input: int, n_target: int, unit: str) -> Optional[str]:
    """How many entries one side has per entry of the other, when one count divides the other:
    "the target has 4 entries per input {unit}", or None. (The batch-size explanation of
    cross_entropy and of check_loader.)"""
    small, large = min(n_input, n_target), max(n_input, n_target)
    if not small or large == small or large % small:
        return None
    if n_target > n_input:
        return f"the target has {large // small} entries per input {unit}"
    return f"the input has {large // small} rows per target entry"


def batch_size_diagnosis(input, target) -> Diagnosis:
    n_in, n_tgt = int(input.shape[0]), int(target_batch_size(target))
    small, large = min(n_in, n_tgt), max(n_in, n_tgt)
    sentences = [f"the input has {n_in} samples but the target has {n_tgt}."]
    if small == 0:
        return Diagnosis("batch", sentences[0] + " One of them is empty.")
    per = per_row_ratio(n_in, n_tgt, "sample")
    if per:
        sentences.append(f"{per[0].upper()}{per[1:]}: a reshape, view(-1) or flatten merged a dimension into the "
                         "batch, or the two come from loaders with different batch_size.")
    if looks_like_batch_size(large):
        sentences.append(f"If {large} is the batch size, {small} looks like a final partial batch: "
                         "inputs and targets are batched by different DataLoaders or datasets of "
                         "different lengths (drop_last=True on one side only, or an uneven "
                         "train/validation split).")
    return Diagnosis("batch", " ".join(sentences), ONE_DATASET_FIX + ".")


# Tried in order; the first that recognises the shapes wins.
_SHAPE_HINTS = (
    _hint_scalar_target,
    _hint_squeeze,
    _hint_channel_last_logits,
    _hint_channel_last_target,
    _hint_flattened_logits,
    _hint_probability_shape,
    _hint_missing_dims,
    _hint_flattened_target,
    _hint_flattened_one_hot,
    _hint_spatial_sizes,
    _hint_multi_label,
)
