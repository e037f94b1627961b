"""Builds the emulated-CUDA library: validated_loss._C with csrc/cuda/*.cu and csrc/validation/*.cu
compiled as host C++ against csrc/cuda_emu, registered for CPU tensors (see validated_loss/_library.py).

    python scripts/build_cuda_emu.py [--out DIR] [--sanitize] [--kernels-from DIR] [--temp DIR]

Prints the path of the built library. --sanitize builds with AddressSanitizer and
UndefinedBehaviorSanitizer; --kernels-from takes the .cu files (and the headers they include)
from another copy of csrc (the deliberately broken kernels of scripts/cuda_emu_mutants.py), the
rest from this tree; --temp shares object files with another build (the mutants reuse the plain
build's). Incremental: ninja rebuilds only what changed.
"""

import argparse
import os
import sys
from pathlib import Path

from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent

# The host code every build shares, the CUDA ops and kernels, the emulation.
HOST_SOURCES = ["ops.cpp", "op_common.cpp", "meta.cpp", "python_errors.cpp", "autograd.cpp",
                "validation/deferred_queue.cpp",
                "validation/graph_slots.cpp", "validation/deferred.cpp", "validation/deferred_python.cpp",
                "cpu/gradient_buffer.cpp"]
# The CUDA source: the ops and kernels, and validation's CUDA side.
CU_DIRS = ["cuda", "validation"]
EMU_SOURCES = ["cuda_emu/block_run.cpp", "cuda_emu/grid_run.cpp", "cuda_emu/fiber.cpp", "cuda_emu/runtime.cpp",
               "cuda_emu/emu_ops.cpp"]


def wrapper_sources(csrc, out):
    """The .cu files as .cpp translation units (setuptools sends .cu to nvcc): one file each that
    includes the original, rewritten only when its text changes so ninja keeps what is built."""
    wrappers = out / "cu_as_cpp"
    wrappers.mkdir(parents=True, exist_ok=True)
    paths = []
    for cu in sorted(cu for d in CU_DIRS for cu in (csrc / d).glob("*.cu")):
        path = wrappers / (cu.stem + ".cpp")
        text = f'#include "{cu}"\n'
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        paths.append(str(path))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kernels-from", type=Path, default=ROOT / "csrc")
    parser.add_argument("--temp", type=Path, default=None)
    parser.add_argument("--sanitize", action="store_true")
    args = parser.parse_args()
    out = (args.out or ROOT / "build" / "cuda-emu" / ("sanitize" if args.sanitize else "plain")).resolve()
    csrc = ROOT / "csrc"
    temp = (args.temp or out / "temp").resolve()
    out.mkdir(parents=True, exist_ok=True)

    flags = ["-O2", "-g1", "-Wall", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized",
             f"-include{csrc / 'cuda_emu' / 'prelude.h'}", f"-I{csrc / 'cuda_emu' / 'include'}"]
    link = ["-lpthread"]
    if args.sanitize:
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        flags = [f for f in flags if f != "-O2"] + ["-O1"] + sanitize
        link += sanitize
    sources = [str(csrc / s) for s in HOST_SOURCES + EMU_SOURCES] + wrapper_sources(args.kernels_from.resolve(), out)
    ext = cpp_extension.CppExtension("_C", sources, include_dirs=[str(csrc)], extra_compile_args={"cxx": flags},
                                     extra_link_args=link)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    setup(name="validated_loss_cuda_emu", ext_modules=[ext], script_args=[
        "-q", "build_ext", "--build-lib", str(out), "--build-temp", str(temp)],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)})
    library = next(out.glob("_C*.so"))
    print(library)


if __name__ == "__main__":
    sys.exit(main())
