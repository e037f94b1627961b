"""What the tests need to know about the installed torch.

validated_loss implements torch 2.13's cross_entropy on every supported torch (2.6 on): its
results, its argument checks, their order and their words (diagnostics.py). Where an older torch
differs, the tests compare with what torch 2.13 does, or with what holds on every version:
  * torch 2.6 rejects a (C,) input with a (1,) class-index target ("size mismatch"); 2.11 and
    later treat it as the () target it holds. torch_cross_entropy() gives the later behaviour.
  * torch before 2.13 words several argument errors differently and raises RuntimeError where 2.13
    raises its subclass NotImplementedError (unsupported dtypes). There the tests check that our
    error is still an instance of the class the installed torch raised (so `except` clauses
    written against it still catch ours) and explains itself, not the exact text.
"""

import torch
import torch.nn.functional as F

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])

# Our error texts start with the installed torch's own (checked exactly) from torch 2.13 on; before,
# torch may also take another of two failing checks first.
TORCH_CHECKS_AS_OURS = TORCH_VERSION >= (2, 13)
OLDER_TORCH_CHECKS = (f"torch {torch.__version__} words (or types) this check differently from torch 2.13, "
                      "whose checks validated_loss implements")


def _accepts_one_target_for_one_row():
    try:
        F.cross_entropy(torch.zeros(2), torch.zeros(1, dtype=torch.long))
        return True
    except RuntimeError:
        return False


TORCH_ACCEPTS_ONE_TARGET_FOR_ONE_ROW = _accepts_one_target_for_one_row()


def torch_cross_entropy(input, target, *args, **kwargs):
    """F.cross_entropy, with torch 2.11's handling of a (C,) input and a (1,) class-index target on
    torch 2.6: the loss of the one row, as for a () target; with label smoothing an error
    (2.11-2.14 raise one there too: "output with shape [] doesn't match the broadcast shape [1]")."""
    smoothing = kwargs.get("label_smoothing", args[5] if len(args) > 5 else 0.0)
    if (not TORCH_ACCEPTS_ONE_TARGET_FOR_ONE_ROW and input.dim() == 1 and tuple(target.shape) == (1,)
            and not target.is_floating_point() and not smoothing > 0):
        target = target.reshape(())
    return F.cross_entropy(input, target, *args, **kwargs)

# torch 2.13 added F.linear_cross_entropy and nn.LinearCrossEntropyLoss/Options; on an older torch
# validated_loss has its own module and options, and comparisons with torch's own function (its
# chunked path, its options, its exact error texts) cannot run. Elsewhere tests compare with
# F.cross_entropy(input @ weight.T + bias), which every torch has.
TORCH_LINEAR = hasattr(F, "linear_cross_entropy")
NO_TORCH_LINEAR = (f"torch {torch.__version__} has no F.linear_cross_entropy / nn.LinearCrossEntropyLoss "
                   "(torch 2.13 added them)")
