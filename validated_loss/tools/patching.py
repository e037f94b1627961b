"""Route torch's cross-entropy to validated_loss for code you cannot edit.

    import validated_loss

    with validated_loss.patched():
        trainer.fit(model)          # builds torch.nn.CrossEntropyLoss() internally

``patch()`` replaces

* ``torch.nn.CrossEntropyLoss`` (and the same name in ``torch.nn.modules`` and
  ``torch.nn.modules.loss``) by a subclass of ``validated_loss.CrossEntropyLoss``;
* ``torch.nn.functional.cross_entropy`` (which is also the ``F`` that
  ``torch.nn.modules.loss`` uses, so torch's own ``CrossEntropyLoss`` instances
  created before patching compute with validated_loss too) by
  ``validated_loss.cross_entropy``.

``unpatch()`` puts the very objects back (``torch.nn.CrossEntropyLoss is original``).

Semantics:

* ``patch()`` is idempotent: patching twice and unpatching once restores torch.
* ``patched()`` restores the state it found: nested blocks, or a block inside a
  ``patch()``/``unpatch()`` pair, leave the outer patch in place.
* While patched, ``isinstance(m, torch.nn.CrossEntropyLoss)`` is still True for
  modules that were created from torch's class before patching.
* Names bound before ``patch()`` are not reached: ``from torch.nn import
  CrossEntropyLoss`` or ``from torch.nn.functional import cross_entropy`` executed
  at import time keep torch's objects (``torch.nn.functional.cross_entropy`` looked
  up at call time, ``F.cross_entropy``, is reached). Patch before importing such
  code if it binds names that way.
* The patch is process-wide (all threads), like any monkeypatch.
* TorchScript: ``torch.jit.script`` of code that uses the patched names compiles torch's own
  cross-entropy (ours takes keyword-only arguments TorchScript cannot compile), so scripted
  models keep working and compute torch's result.
* Pickling: a criterion built while patched pickles as ``torch.nn.CrossEntropyLoss`` (a
  checkpoint loads without validated_loss; where the patch is in force it loads as ours), so do
  torch's own instances while patched (torch's class gets a ``__reduce_ex__`` for the duration),
  and a torch ``CrossEntropyLoss`` pickled elsewhere loads and runs while patched.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import threading
import warnings

import torch
import torch.nn.functional
import torch.nn.modules
import torch.nn.modules.loss

from .. import functional as _functional
from .. import loss as _loss

__all__ = ["patch", "unpatch", "patched", "is_patched", "PatchedCrossEntropyLoss"]

# torch's class, as validated_loss.CrossEntropyLoss subclasses it.
_TORCH_CROSS_ENTROPY_LOSS = _loss.CrossEntropyLoss.__mro__[1]

_lock = threading.RLock()
# While patched: [(namespace, attribute name, original value, replacement)], else None.
_saved = None
# Per-thread depth of calls into the patched function: a call that arrives while one is
# already running comes from validated_loss's own code (a torch fallback) and goes to torch.
_depth = threading.local()


def _reduce_as_torch(self, protocol):
    """Pickles a criterion under torch's name, torch.nn.modules.loss.CrossEntropyLoss, which is
    PatchedCrossEntropyLoss while patched and torch's class otherwise: written as whichever is
    there now (pickle insists), loaded as whichever is there then; checkpoints never need us."""
    cls = PatchedCrossEntropyLoss if is_patched() else _TORCH_CROSS_ENTROPY_LOSS
    # copyreg's reconstructor (object.__new__(cls), then Module.__setstate__): the standard
    # library's, and unlike __newobj__ it may name a class other than the object's own.
    return copyreg._reconstructor, (cls, object, None), self.__dict__.copy()


class _PatchedMeta(type(_TORCH_CROSS_ENTROPY_LOSS)):
    """Lets ``isinstance(m, torch.nn.CrossEntropyLoss)`` keep accepting modules created
    from torch's class before the patch (and ``issubclass`` their classes)."""

    def __instancecheck__(cls, obj):
        if super().__instancecheck__(obj):
            return True
        return cls is PatchedCrossEntropyLoss and isinstance(obj, _TORCH_CROSS_ENTROPY_LOSS)

    def __subclasscheck__(cls, sub):
        if super().__subclasscheck__(sub):
            return True
        return cls is PatchedCrossEntropyLoss and issubclass(sub, _TORCH_CROSS_ENTROPY_LOSS)


class PatchedCrossEntropyLoss(_loss.CrossEntropyLoss, metaclass=_PatchedMeta):
    """What ``torch.nn.CrossEntropyLoss`` is while patched: validated_loss's module
    (``isinstance(m, validated_loss.CrossEntropyLoss)`` is True), named
    ``CrossEntropyLoss`` in its repr like torch's."""

    # A torch CrossEntropyLoss pickled without the patch (torch.load of a whole model, a
    # multiprocessing hand-off) is unpickled as this class while patched: no __init__ runs, so
    # validated_loss's extra options come from here, at their defaults.
    validate = "sync"
    check_finite = False
    lse_square_scale = 0.0
    softcap = None
    return_lse = False
    inplace_backward = False

    __reduce_ex__ = _reduce_as_torch

    def __prepare_scriptable__(self):
        """torch.jit.script compiles torch's forward in our place (same options, same weight
        buffer): TorchScript cannot compile validated_loss's. Scripting puts the module returned
        here into the parent module; eager calls of it still reach ours through F.cross_entropy."""
        module = _TORCH_CROSS_ENTROPY_LOSS.__new__(_TORCH_CROSS_ENTROPY_LOSS)
        module.__dict__.update(self.__dict__)
        return module


# repr() and error messages show torch's name, and pickle writes torch's reference
# (torch.nn.modules.loss.CrossEntropyLoss), which is this very class while patched.
PatchedCrossEntropyLoss.__name__ = "CrossEntropyLoss"
PatchedCrossEntropyLoss.__qualname__ = "CrossEntropyLoss"
PatchedCrossEntropyLoss.__module__ = _TORCH_CROSS_ENTROPY_LOSS.__module__


def _make_cross_entropy(original):
    @functools.wraps(_functional.cross_entropy)
    def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                      reduction="mean", label_smoothing=0.0, **kwargs):
        depth = getattr(_depth, "value", 0)
        if depth:  # re-entered from inside validated_loss (a fallback to torch): torch computes
            return original(input, target, weight, size_average, ignore_index, reduce, reduction,
                            label_smoothing)
        _depth.value = depth + 1
        try:
            return _functional.cross_entropy(input, target, weight, size_average, ignore_index, reduce,
                                             reduction, label_smoothing, **kwargs)
        finally:
            _depth.value = depth

    return cross_entropy


def _script_as_torch(replacement, original):
    """Tells TorchScript's function cache that `replacement` compiles to torch's `original`:
    scripted code that looks up F.cross_entropy while patched calls torch's op. Best effort: where
    torch cannot script its own function (a build without TorchScript) nothing changes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script's deprecation warning (torch >= 2.13)
            compiled = torch.jit.script(original)
        torch.jit._state._set_jit_function_cache(replacement, compiled)
    except Exception:  # noqa: BLE001  (any failure leaves scripting as it was: unable to compile ours)
        pass


def _namespaces():
    """(namespace, name) pairs to replace, each namespace once."""
    class_spaces = (torch.nn, torch.nn.modules, torch.nn.modules.loss)
    # torch.nn.modules.loss does `from .. import functional as F`: the same module today, but
    # patch whatever object CrossEntropyLoss.forward will look cross_entropy up on.
    function_spaces = (torch.nn.functional, getattr(torch.nn.modules.loss, "F", torch.nn.functional))
    seen, pairs = set(), []
    for spaces, name in ((class_spaces, "CrossEntropyLoss"), (function_spaces, "cross_entropy")):
        for space in spaces:
            if (id(space), name) not in seen and hasattr(space, name):
                seen.add((id(space), name))
                pairs.append((space, name))
    return pairs


def is_patched() -> bool:
    """Whether ``patch()`` is in force."""
    return _saved is not None


def patch() -> None:
    """Replace torch's CrossEntropyLoss and F.cross_entropy by validated_loss's (no-op if
    already patched)."""
    global _saved
    with _lock:
        if _saved is not None:
            return
        pairs = _namespaces()
        function_original = getattr(torch.nn.functional, "cross_entropy")
        replacement_function = _make_cross_entropy(function_original)
        _script_as_torch(replacement_function, function_original)
        saved = []
        for space, name in pairs:
            replacement = PatchedCrossEntropyLoss if name == "CrossEntropyLoss" else replacement_function
            saved.append((space, name, getattr(space, name), replacement))
        for space, name, _, replacement in saved:
            setattr(space, name, replacement)
        # torch's own instances (made before the patch, or swapped in by scripting) pickle under
        # the same name too: pickle refuses to write a class reference that resolves elsewhere.
        _TORCH_CROSS_ENTROPY_LOSS.__reduce_ex__ = _reduce_as_torch
        _saved = saved


def unpatch() -> None:
    """Put torch's original objects back (no-op if not patched). An attribute that someone
    else replaced after ``patch()`` is left as it is, with a warning."""
    global _saved
    with _lock:
        if _saved is None:
            return
        saved, _saved = _saved, None
        if _TORCH_CROSS_ENTROPY_LOSS.__dict__.get("__reduce_ex__") is _reduce_as_torch:
            del _TORCH_CROSS_ENTROPY_LOSS.__reduce_ex__
        for space, name, original, replacement in saved:
            current = getattr(space, name, None)
            if current is replacement:
                setattr(space, name, original)
            else:
                warnings.warn(f"validated_loss.unpatch(): {space.__name__}.{name} was replaced by "
                              f"{current!r} after validated_loss.patch(); leaving that in place instead "
                              f"of restoring {original!r}.", RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def patched():
    """Context manager: ``patch()`` on entry; on exit, ``unpatch()`` unless it was already
    patched on entry (so nested use is safe)."""
    with _lock:
        was_patched = is_patched()
        patch()
    try:
        yield
    finally:
        if not was_patched:
            unpatch()
