"""validate="deferred": bad targets found on a GPU are reported later, without ever waiting on it.

The forward kernel writes its status record (csrc/status.h) on the device. Here it is copied to
pinned host memory behind an event, on the same stream, and the check runs without blocking at
the next call of the loss and at backward: whichever comes first after the copy has landed raises
the error, naming the call it came from. Nothing here synchronizes with the device.
"""

import itertools
import threading
import traceback
from dataclasses import dataclass

import torch

from . import diagnostics
from ._ops import ops
from ._status import STATUS_INVALID_COUNT, STATUS_NONFINITE_COUNT, STATUS_SIZE

_call_numbers = itertools.count(1)
_lock = threading.Lock()
_pending = []


@dataclass
class PendingCheck:
    host_status: torch.Tensor  # int64[STATUS_SIZE] in pinned memory, filled asynchronously
    ready: object              # has .query(): True once the copy has landed (a torch.cuda.Event)
    target_shape: list
    num_classes: int
    ignore_index: int
    logits_shape: list
    origin: str                # "call #12 (train.py:57 in step)"


def _caller():
    """The user's frame that called the loss (first frame outside this package and torch)."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        if "/validated_loss/" not in frame.filename and "/torch/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "an unknown caller"


def submit(status, target_shape, num_classes, ignore_index, logits_shape):
    """Queue the status of a forward for a later, non-blocking check."""
    host = torch.empty(STATUS_SIZE, dtype=torch.int64, pin_memory=torch.cuda.is_available())
    host.copy_(status, non_blocking=True)
    if status.is_cuda:
        ready = torch.cuda.Event()
        ready.record()
    else:
        ready = _Landed()
    origin = f"call #{next(_call_numbers)} ({_caller()})"
    with _lock:
        _pending.append(PendingCheck(host, ready, list(target_shape), num_classes, ignore_index,
                                     list(logits_shape), origin))


class _Landed:
    """The event of a copy that was synchronous (a CPU status)."""

    def query(self):
        return True


def check_pending():
    """Raise the first error among the queued checks whose copies have landed; keep the rest."""
    with _lock:
        landed = [p for p in _pending if p.ready.query()]
        _pending[:] = [p for p in _pending if p not in landed]
    for check in landed:
        status = check.host_status
        if int(status[STATUS_INVALID_COUNT]) <= 0 and int(status[STATUS_NONFINITE_COUNT]) <= 0:
            continue
        with _lock:
            _pending.clear()  # the first error is the one to fix; later ones would repeat it
        _raise(check)


def _raise(check):
    try:
        ops.raise_for_status(check.host_status, check.target_shape, check.num_classes, check.ignore_index,
                             check.logits_shape)
    except IndexError as error:
        found = diagnostics.target_error_from(error, check.ignore_index)
    except ValueError as error:
        found = diagnostics.nonfinite_error_from(error)
    else:
        return
    found.args = (f"{found.args[0]}\n(found by validate='deferred' in the loss of {check.origin}; "
                  "raised at the next loss call or backward)",) + found.args[1:]
    raise found


def pending_count():
    with _lock:
        return len(_pending)
