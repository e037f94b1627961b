"""Loads the compiled library: validated_loss._C, or the build named by VALIDATED_LOSS_C_LIBRARY.

The second is how the tests run the CUDA kernels on a machine without a GPU: `make test-cuda-emu`
builds the same library with csrc/cuda/*.cu compiled as host C++ against the project's CUDA
emulation (csrc/cuda_emu), registered for CPU tensors, and points this variable at it. Loading it
under the name validated_loss._C means every module of the package uses it unchanged.
"""

import importlib.util
import os
import sys

_path = os.environ.get("VALIDATED_LOSS_C_LIBRARY")
# Lazy binding: a function of torch's the library names but never calls is not looked up. A build for
# another torch minor release then still loads (and __init__ warns) when only such a function changed:
# the C++ autograd's torch internals, which _autograd.py registers only for the torch of the build.
_flags = sys.getdlopenflags()
sys.setdlopenflags((_flags & ~os.RTLD_NOW) | os.RTLD_LAZY)
try:
    if _path:
        _spec = importlib.util.spec_from_file_location(f"{__package__}._C", _path)
        _C = importlib.util.module_from_spec(_spec)
        sys.modules[_spec.name] = _C
        _spec.loader.exec_module(_C)
    else:
        from . import _C  # noqa: F401
finally:
    sys.setdlopenflags(_flags)

EMULATED_CUDA = bool(_path)


def register_cpp_autograd():
    """cross_entropy_fwd's C++ autograd (csrc/autograd.cpp); _autograd.py decides whether."""
    _C.register_autograd()
