"""The CPU gradient cache.

A logits-sized gradient is written into memory the process has not touched for a while, and on
Linux every 4 KiB page then costs a fault and a zeroing on its first write (0.24 ms per MiB on
the project's machine, more than computing the gradient). So the CPU backward keeps the block of
a dead gradient of 4 MiB or more and gives it to the next gradient of about the same size (at
most 1/8 larger), which a training loop asks for every step. The cache holds at most 4 blocks and
2 GiB by default (VALIDATED_LOSS_GRADIENT_CACHE_MB sets the initial limit). What it holds is
memory no tensor uses: free it with empty_cache(), like torch.cuda.empty_cache().
"""

import contextlib
import operator
import threading

from .. import _ops

__all__ = ["empty_cache", "set_gradient_cache_limit", "gradient_cache_bytes", "gradient_cache_disabled"]

# The op's int64 argument: a larger limit means "no limit" and is held as this.
_MAX_LIMIT = 2**63 - 1


def empty_cache():
    """Free the gradient blocks the cache holds; returns the number of bytes released."""
    return _ops.empty_gradient_cache()


def set_gradient_cache_limit(limit_bytes):
    """Set the most bytes the cache may hold (0 disables it and frees it); returns the old limit."""
    try:
        limit = None if isinstance(limit_bytes, bool) else operator.index(limit_bytes)  # numpy integers too
    except TypeError:
        limit = None
    if limit is None or limit < 0:
        raise ValueError(f"limit_bytes must be a non-negative int, got {limit_bytes!r}")
    return _ops.set_gradient_cache_limit(min(limit, _MAX_LIMIT))


def gradient_cache_bytes():
    """Bytes the cache holds now (blocks of dead gradients, kept for the next backward)."""
    return _ops.gradient_cache_bytes()


# gradient_cache_disabled() blocks open in any thread, and whether the cache was on before the
# first: the switch is process-wide, so overlapping blocks (threads) are counted and the last to
# close restores the state the first found.
_disabled_lock = threading.Lock()
_disabled_count = 0
_enabled_before = True


@contextlib.contextmanager
def gradient_cache_disabled():
    """Within it, every gradient gets fresh memory and dead ones are freed (what torch's allocator
    does); the blocks the cache already holds stay for afterwards. The benchmark's comparison row.
    Process-wide while any such block is open (thread-safe: blocks are counted)."""
    global _disabled_count, _enabled_before
    with _disabled_lock:
        if _disabled_count == 0:
            _enabled_before = _ops.set_gradient_cache_enabled(False)
        _disabled_count += 1
    try:
        yield
    finally:
        with _disabled_lock:
            _disabled_count -= 1
            if _disabled_count == 0:
                _ops.set_gradient_cache_enabled(_enabled_before)
