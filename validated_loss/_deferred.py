"""Deferred validation: bad targets found on a GPU are reported later, without ever waiting on it.

The CUDA forward op queues its own status record (csrc/validation/deferred.h, validation/deferred_cuda.cu): a copy to
pinned memory behind an event, or, while a CUDA graph is being captured, a slot that every replay
of the graph publishes a bad record into. It is the op that does it because under torch.compile
this Python code runs once, at trace time, not per call; for the same reason the CUDA ops check
the queue themselves at their start. What is left here: naming the call a check comes from (the
caller's file:line, which only eager Python knows) and the eager checks at the next loss call and
at backward. Nothing here synchronizes with the device.
"""

import traceback

import torch

from . import _compiler, _ops
from ._library import _C

# validate= as users spell it -> the ops' Validate codes (_ops.py mirrors csrc/ops.cpp).
VALIDATE_MODES = _ops.VALIDATE_NAMES
SYNC, DEFERRED = int(_ops.Validate.SYNC), int(_ops.Validate.DEFERRED)


def _caller():
    """The user's frame that called the loss (first frame outside this package and torch)."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        if "/validated_loss/" not in frame.filename and "/torch/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "an unknown caller"


def may_queue(validate, device):
    """Whether an eager op call on `device` with this validate code queues a check: 'deferred' on
    CUDA, and 'sync' while the stream is being captured (the op cannot wait there)."""
    if device.type != "cuda":
        return False
    return validate == DEFERRED or (validate == SYNC and torch.cuda.is_current_stream_capturing())


def policy(validate, device):
    """The validate code one call's op gets, decided here once per call (the op acts on it):
    off, sync or deferred as asked; under torch.compile 'sync' becomes 'deferred' (a compiled graph
    never waits: the CUDA op queues its status and checks it at the next call or backward; the CPU
    op raises at once in every mode); under CUDA-graph capture the op itself turns 'sync' into a
    graph slot. An eager call that will queue (may_queue) is named after the user's line first."""
    if torch.compiler.is_compiling():
        return DEFERRED if validate == SYNC else validate
    if may_queue(validate, device):
        name_next_call()
    return validate


def host_check(validate, device):
    """What becomes of a status record made with torch ops (linear_cross_entropy's check of the
    whole target), decided here once per call: "skip" (validate 'off' off the CPU: bad rows are then
    NaN with zero gradient), "queue" (CUDA 'deferred', and 'sync' where the host cannot wait:
    torch.compile, CUDA-graph capture) or "raise" (read on the host now: the CPU in every mode, as
    cross_entropy; CUDA 'sync' with one wait)."""
    if device.type != "cpu" and validate == int(_ops.Validate.OFF):
        return "skip"
    if device.type == "cuda" and (validate == DEFERRED or torch.compiler.is_compiling()
                                  or torch.cuda.is_current_stream_capturing()):
        return "queue"
    return "raise"


def name_next_call():
    """The next check this thread queues comes from the user's line calling the loss now. Only for
    eager calls that queue (may_queue): finding the caller costs more than the check."""
    _C.set_call_origin(_caller())


def check_pending():
    """Raise the first error found by an earlier loss call (TargetOutOfRangeError or
    NonFiniteLogitsError, naming that call), if its status has reached the host; never waits.

    Called at every eager loss call and backward; call it yourself (validated_loss.check_deferred)
    where neither runs, e.g. between replays of a CUDA graph that contains the whole step. Skipped
    while the current stream is being captured: CUDA forbids querying events there."""
    if not _C.pending_checks():
        return
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    _ops.check_deferred()


@_compiler.disable  # names the caller: eager Python (linear_cross_entropy breaks the graph anyway)
def submit(status, target_shape, num_classes, ignore_index, logits_shape):
    """Queue a status record made outside the loss ops (linear_cross_entropy checks the whole
    target with torch ops) for the same non-blocking check."""
    name_next_call()
    _ops.deferred_submit(status, target_shape, num_classes, ignore_index, logits_shape)


def pending_count():
    return _C.pending_checks()


def clear():
    """Forget every queued check and unread graph record (tests; after handling an error elsewhere)."""
    _C.clear_checks()
