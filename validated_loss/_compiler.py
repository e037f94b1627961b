"""torch.compile's markers for the package's functions, without importing torch._dynamo.

torch.compiler.disable and torch.compiler.assume_constant_result import torch._dynamo (with sympy,
inductor's config, torch.distributed: about a second) the moment they decorate a function, so
using them at module level made `import validated_loss` cost more than `import torch`. Eager code
never needs dynamo; torch.compile imports it itself before it traces anything.
tests/test_package_layout.py checks that importing the package leaves torch._dynamo unimported.
"""

import functools

import torch


def disable(fn):
    """torch.compiler.disable(fn), applied lazily. Under torch.compile (the only time dynamo traces
    this wrapper) the call goes through torch._disable_dynamo's wrapper: torch/_compile.py is on
    dynamo's skip list, so the call is a graph break, and that wrapper runs fn with dynamo disabled
    (importing torch._dynamo then: it is already loaded). Eagerly, fn is called as it is."""
    lazy = torch._disable_dynamo(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return lazy(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


# The attribute torch._dynamo.assume_constant_result sets (all it does, torch 2.0 to 2.14); dynamo
# reads it when it inlines a call. tests/test_package_layout.py compares it with dynamo's own.
CONSTANT_MARK = "_dynamo_marked_constant"


def assume_constant_result(fn):
    """torch.compiler.assume_constant_result(fn) without importing torch._dynamo."""
    setattr(fn, CONSTANT_MARK, True)
    return fn
