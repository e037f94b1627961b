"""Build of validated_loss._C: the C++ kernels always, the CUDA kernels when they can be compiled.

Environment:
  FORCE_CUDA=1      build the .cu sources (fail if nvcc or a CUDA build of torch is missing)
  FORCE_ONLY_CPU=1  never build them
  otherwise         build them when nvcc and a CUDA build of torch are both present. Whether a
                    GPU is visible plays no part: CI compiles the CUDA path on machines without one.
  TORCH_CUDA_ARCH_LIST  the GPU architectures (torch's own variable; required when no GPU is visible)
  VALIDATED_LOSS_SANITIZE=address  build with AddressSanitizer (make asan)
"""

import os
import platform
import shutil
from pathlib import Path

from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent
CSRC = "csrc"

# The CPU kernels are compiled once per instruction set and chosen at run time (as ATen does),
# instead of -march=native, which would build a module that crashes on an older CPU.
CPU_CAPABILITY_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
        "-mavx512dq", "-mfma", "-mf16c",
    ],
}
X86 = platform.machine().lower() in ("x86_64", "amd64")
CAPABILITIES = list(CPU_CAPABILITY_FLAGS) if X86 else ["default"]


def kernel_source(capability):
    return f"{CSRC}/cpu/kernels_{capability}.cpp"


def want_cuda():
    if os.environ.get("FORCE_ONLY_CPU") == "1":
        return False
    cuda_torch = cpp_extension.CUDA_HOME is not None and __import__("torch").version.cuda is not None
    if os.environ.get("FORCE_CUDA") == "1":
        if not cuda_torch:
            raise RuntimeError("FORCE_CUDA=1 but nvcc (CUDA_HOME) or a CUDA build of torch is missing")
        return True
    return cuda_torch


def nvidia_include_dirs():
    """The CUDA build of torch ships the CUDA library headers (cublas_v2.h, cusparse.h, ...) in
    site-packages/nvidia/cu13/include; ATen's CUDA headers include them."""
    import torch

    site = Path(torch.__file__).parent.parent / "nvidia"
    return [str(p) for p in site.glob("*/include") if p.is_dir()]


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus per-file flags for the per-capability CPU kernel files
    (setuptools has one flag set per extension)."""

    def build_extension(self, ext):
        common = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
        kernel_objects = []
        for capability in CAPABILITIES:
            source = kernel_source(capability)
            if source not in ext.sources:
                continue
            ext.sources.remove(source)
            flags = common + CPU_CAPABILITY_FLAGS[capability]
            objects = self.compiler.compile(
                [source], output_dir=self.build_temp, include_dirs=ext.include_dirs,
                extra_postargs={"cxx": flags} if self.use_ninja else flags,
            )
            kernel_objects += objects
        # Objects of the narrowest width come first at link time (CAPABILITIES is in that order):
        # where two kernel files share an inline helper outside at::vec, the linker keeps the
        # first copy, the portable one.
        ext.extra_objects = kernel_objects + list(ext.extra_objects or [])
        super().build_extension(ext)


def write_build_info(cuda, archs):
    (ROOT / "validated_loss" / "_build_info.py").write_text(
        "# Written by setup.py at build time: what this build of validated_loss._C contains.\n"
        f"TORCH_VERSION = {__import__('torch').__version__!r}\n"
        f"CPU_CAPABILITIES = {[c.upper() for c in CAPABILITIES]!r}\n"
        f"CUDA = {cuda!r}\n"
        f"CUDA_ARCHS = {archs!r}\n"
        f"SANITIZE = {os.environ.get('VALIDATED_LOSS_SANITIZE', '')!r}\n"
    )


def extension():
    # at::parallel_for is inline: with torch's OpenMP backend it only runs in parallel when the
    # extension itself is compiled with -fopenmp (without it the pragma is ignored: one thread).
    cxx = ["-O3", "-Wall", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized", "-fopenmp"]
    link = ["-fopenmp"]
    if X86:
        cxx.append("-DVALIDATED_LOSS_X86_KERNELS")
    sanitize = os.environ.get("VALIDATED_LOSS_SANITIZE")
    if sanitize:
        cxx += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-O1", "-g"]
        link += [f"-fsanitize={sanitize}"]
    sources = [f"{CSRC}/ops.cpp", f"{CSRC}/op_common.cpp", f"{CSRC}/cpu/cross_entropy.cpp",
               f"{CSRC}/cpu/gradient_buffer.cpp", f"{CSRC}/python_errors.cpp", f"{CSRC}/deferred_queue.cpp",
               f"{CSRC}/graph_slots.cpp", f"{CSRC}/deferred.cpp", f"{CSRC}/deferred_python.cpp"]
    sources += [kernel_source(c) for c in CAPABILITIES]
    cuda = want_cuda()
    archs = None
    if not cuda:
        write_build_info(False, None)
        return cpp_extension.CppExtension(
            "validated_loss._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no GPU is visible: set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0+PTX') to build the CUDA kernels")
    write_build_info(True, archs)
    nvcc = ["-O3", "-lineinfo", "-Xptxas=-v", "--expt-relaxed-constexpr", "-Werror=all-warnings"]
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC / "cuda").glob("*.cu"))
    return cpp_extension.CUDAExtension(
        "validated_loss._C", sources, include_dirs=nvidia_include_dirs(),
        extra_compile_args={"cxx": cxx + ["-DVALIDATED_LOSS_CUDA"], "nvcc": nvcc}, extra_link_args=link,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
