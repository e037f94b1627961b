"""The exception classes of validated_loss, and nothing else.

Every exception is a ``ValidatedLossError`` and also an instance of each built-in type torch 2.13
raises for some variant of the same misuse, so an existing ``except ValueError`` / ``except
RuntimeError`` clause keeps working. When torch raises different types for variants of one misuse
(a 0-dim target gets ValueError, IndexError or RuntimeError depending on the batch size and rank),
the class inherits all of them.

Each message starts with torch's own text for the same check (so a search for torch's message still
finds it), then lists the tensors involved, then a ``Likely cause:`` and a ``Fix:`` line when the
shapes allow a guess (checks.py words them, hints.py guesses the cause).

The ops raise TargetOutOfRangeError and NonFiniteLogitsError themselves, with their fields (position,
value, count, classes, ignore_index; row, class, count) passed as keyword arguments by
csrc/python_errors.cpp: no Python of ours runs per call inside a torch.compile graph. The
out-of-range message (``invalid_target_message`` in csrc/op_common.cpp, the one place it is worded)::

    Target {value} is out of bounds. target[{i}, {j}, ...] = {value} is not a
    class index in [0, {C}) and is not ignore_index ({ii}); {count} of {numel}
    targets are invalid. Likely cause: {cause}

This module imports nothing from the package: the C++ side looks the classes up here.
"""

__all__ = [
    "ValidatedLossError", "BatchSizeMismatchError", "TargetShapeError", "TargetSizeError", "ScalarTargetError",
    "ProbabilityTargetShapeError", "TargetDtypeError", "LowPrecisionTargetError", "InputDtypeError",
    "InputShapeError", "WeightShapeError", "ScalarWeightError", "WeightDtypeError", "WeightRequiresGradError",
    "IgnoreIndexError", "LabelSmoothingRangeError", "DeviceMismatchError", "TargetOutOfRangeError",
    "NonFiniteLogitsError", "InplaceBackwardError", "LogitsModifiedError",
]


class ValidatedLossError(Exception):
    """Base of every misuse error raised by validated_loss."""


class BatchSizeMismatchError(ValidatedLossError, ValueError, RuntimeError):
    """Input and target hold different numbers of samples.

    torch raises ValueError; RuntimeError is added because much user code
    catches that for any torch error.
    """


class TargetShapeError(ValidatedLossError, RuntimeError):
    """A class-index target of the wrong rank or spatial size."""


class TargetSizeError(TargetShapeError, ValueError):
    """A target shape error that torch reports as a ValueError: logits flattened
    but not the target (or the reverse), or a 1-D input with several targets."""


class ScalarTargetError(TargetSizeError, IndexError):
    """A 0-dim target for a batched input. Depending on the batch size and the
    input rank torch raises ValueError, IndexError or RuntimeError."""


class ProbabilityTargetShapeError(TargetShapeError, ValueError):
    """A floating target meant as class probabilities whose shape differs from
    the input's. ValueError too: a transposed one trips torch's batch check."""


class TargetDtypeError(ValidatedLossError, RuntimeError):
    """The target dtype does not fit the mode chosen by its shape."""


class LowPrecisionTargetError(TargetDtypeError, NotImplementedError):
    """A float8 probability target (RuntimeError, or NotImplementedError with
    label smoothing)."""


class InputDtypeError(ValidatedLossError, NotImplementedError):
    """Integer, bool, complex or float8 logits."""


class InputShapeError(ValidatedLossError, IndexError, RuntimeError):
    """Logits with no usable class dimension: 0-dim (torch: IndexError), or zero
    classes with a K-dim target (torch: RuntimeError)."""


class WeightShapeError(ValidatedLossError, RuntimeError):
    """The class weight does not have one entry per class."""


class ScalarWeightError(WeightShapeError, IndexError):
    """A 0-dim weight that torch only rejects with an IndexError (label
    smoothing with a K-dimensional input and one class)."""


class WeightDtypeError(ValidatedLossError, RuntimeError):
    """The class weight dtype differs from the logits' (class-index path) or
    cannot be promoted (probability path)."""


class WeightRequiresGradError(ValidatedLossError, RuntimeError):
    """A weight that requires grad, on the class-index path."""


class IgnoreIndexError(ValidatedLossError, RuntimeError):
    """ignore_index >= 0 with class-probability targets."""


class LabelSmoothingRangeError(ValidatedLossError, RuntimeError):
    """label_smoothing > 1 (or inf)."""


class DeviceMismatchError(ValidatedLossError, RuntimeError):
    """Input, target and weight are not all on one device."""


class TargetOutOfRangeError(ValidatedLossError, IndexError):
    """A class index outside [0, C) that is not ignore_index.

    ``position`` is the full index of the first invalid target, a tuple
    (``target[position] == value``); ``count`` is how many targets are invalid.
    """

    def __init__(self, message, *, position=None, value=None, num_classes=None,
                 count=None, ignore_index=None):
        super().__init__(message)
        self.position = position
        self.value = value
        self.num_classes = num_classes
        self.count = count
        self.ignore_index = ignore_index


class NonFiniteLogitsError(ValidatedLossError, ValueError, RuntimeError):
    """A NaN or infinite logit (only with check_finite=True).

    ``row`` is the flat row of the first one, ``column`` its class, ``count`` how many rows hold
    one (``value`` is None when the kernel found it: it keeps no logit value).
    """

    def __init__(self, message, *, row=None, column=None, value=None, count=None):
        super().__init__(message)
        self.row = row
        self.column = column
        self.value = value
        self.count = count


class InplaceBackwardError(ValidatedLossError, ValueError):
    """inplace_backward=True for logits the gradient must not be written over (a leaf that
    requires grad, or a view of one)."""


class LogitsModifiedError(ValidatedLossError, RuntimeError):
    """Backward found the logits modified in place after the loss. validated_loss keeps the logits
    themselves for the backward (torch keeps their log-softmax, a second logits-sized tensor), so
    an edit made after the loss (logits.div_(T) for sampling) is refused where torch's backward
    would not notice it."""


# Their public home stays validated_loss.diagnostics (which re-exports them): tracebacks print
# validated_loss.diagnostics.TargetOutOfRangeError as docs/errors.md shows, and pickles made
# before this module existed load.
for _name in __all__:
    globals()[_name].__module__ = "validated_loss.diagnostics"
del _name
