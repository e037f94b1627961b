"""Build of validated_loss._C: the C++ kernels always, the CUDA kernels when they can be compiled.

Install (README, "Install"):  pip install --no-build-isolation <this directory, a git URL or an sdist>
The extension is compiled against the torch of the environment it is installed into, so the build
must run in that environment. pip's default build runs in an isolated one, which has no torch
(installing one there would mean a multi-GB download and an extension compiled for another torch
than the one that loads it); such a build stops at once with the command to type (no_torch_message).

Environment:
  FORCE_CUDA=1      build the .cu sources (fail if nvcc or a CUDA build of torch is missing)
  FORCE_ONLY_CPU=1  never build them
  otherwise         build them when a CUDA build of torch and nvcc of the same CUDA major version are
                    both present; else build CPU-only (the reason is kept in _build_info.CUDA_NOTE).
                    Whether a GPU is visible decides only the architectures.
  TORCH_CUDA_ARCH_LIST  the GPU architectures (torch's own variable). Unset: those of the visible GPUs,
                    or DEFAULT_CUDA_ARCHS (validated_loss/_torch_support.py) when none is visible.
  VALIDATED_LOSS_SANITIZE=address  build with AddressSanitizer (make asan)
"""

import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"


def load_torch_support():
    """validated_loss/_torch_support.py by path: importing the package would load the extension."""
    spec = importlib.util.spec_from_file_location("_vl_torch_support", ROOT / "validated_loss" / "_torch_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUPPORT = load_torch_support()

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

# setup.py commands that compile, or (dist_info) write the wheel's metadata, which names the torch.
COMMANDS_NEEDING_TORCH = {"build", "build_ext", "bdist_wheel", "dist_info", "editable_wheel", "develop", "install",
                          "bdist_egg"}


def fail(message):
    """Stop the build with a message and no traceback (pip shows a backend's output on failure)."""
    print(f"\nvalidated_loss: {message}\n", file=sys.stderr)
    sys.exit(1)


def notice(message):
    print(f"validated_loss: {message}", file=sys.stderr)


def command_without_isolation(argv):
    """argv of the pip / uv pip / python -m build run that started this build, with isolation turned
    off; None when argv is none of those."""
    for k, arg in enumerate(argv):
        name = os.path.basename(arg)
        # Shown from the interpreter for `python -m pip`, from uv for `uv pip`, else from the script.
        start = 0 if k == 0 or argv[k - 1] == "-m" or os.path.basename(argv[k - 1]) == "uv" else k
        if re.fullmatch(r"pip(3(\.\d+)?)?", name):
            sub = next((i for i in range(k + 1, len(argv)) if argv[i] in ("install", "wheel", "download")), None)
            if sub is None:
                return None
            return shlex.join(argv[start:sub + 1] + ["--no-build-isolation"] + argv[sub + 1:])
        if name == "pyproject-build" or (name == "build" and k > 0 and argv[k - 1] == "-m"):
            return shlex.join(argv[start:k + 1] + ["--no-isolation"] + argv[k + 1:])
    return None


def no_torch_message():
    try:  # pip, uv and build run the build backend as their child process
        argv = [a.decode() for a in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if a]
    except (OSError, UnicodeDecodeError):
        argv = []
    command = command_without_isolation(argv)
    commands = (f"    {command}" if command else
                "    pip install --no-build-isolation <the same path, git URL or sdist>\n"
                "or  python -m build --no-isolation")
    return (
        "this build cannot import torch.\n"
        "validated_loss is compiled against the torch of the environment it is installed into, so it must be\n"
        "built in that environment; an isolated build environment (pip's and build's default) has no torch.\n"
        f"Type instead:\n\n{commands}\n\n"
        "If the environment has no torch yet, install torch first: https://pytorch.org/get-started/locally/"
    )


def check_build_tools():
    """Fail early, with what to type, where the build cannot work (instead of a setuptools traceback)."""
    if {"bdist_wheel", "dist_info"} & set(sys.argv) and not (importlib.util.find_spec("setuptools.command.bdist_wheel")
                                                              or importlib.util.find_spec("wheel")):
        # setuptools < 70.1 (as in a Python 3.10/3.11 venv) makes wheels, and their metadata
        # (dist_info), only with the wheel package: "invalid command 'bdist_wheel'" otherwise.
        fail("this setuptools cannot make wheels: pip install 'setuptools>=70.1', then run the same command again")
    if importlib.util.find_spec("torch") is None:
        if COMMANDS_NEEDING_TORCH & set(sys.argv[1:]):
            fail(no_torch_message())
        return None
    import torch

    if SUPPORT.release(torch.__version__) < SUPPORT.release(SUPPORT.TESTED_OLDEST):
        fail(f"torch {torch.__version__} is older than the oldest supported, {SUPPORT.TESTED_OLDEST}: "
             f"pip install 'torch>={SUPPORT.TESTED_OLDEST}' first")
    if not SUPPORT.in_tested_range(torch.__version__):
        notice(f"torch {torch.__version__} is newer than the newest tested, {SUPPORT.TESTED_NEWEST}")
    return torch


def torch_requirement(torch):
    """The wheel's dependency on torch: the minor release it is compiled against (torch keeps no C++
    ABI across minor releases), so its metadata names it. An sdist, or a build that cannot see torch,
    keeps the supported range."""
    if torch is None or "sdist" in sys.argv:
        return f"torch>={SUPPORT.TESTED_OLDEST}"
    major, minor, _ = SUPPORT.release(torch.__version__)
    return f"torch=={major}.{minor}.*"


def kernel_source(capability):
    return f"{CSRC}/cpu/kernels_{capability}.cpp"


def nvcc_version(cuda_home):
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not nvcc.is_file():
        return None
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def is_cuda_toolkit(path):
    return (bool(path) and (Path(path) / "bin" / "nvcc").is_file()
            and (Path(path) / "include" / "cuda_runtime.h").is_file())


def cuda_toolkit(torch_guess):
    """The CUDA toolkit to build with, or None. torch takes the directory above the first nvcc on
    PATH, which is wrong where that nvcc is a wrapper script or a link (/usr/local/bin/nvcc gives
    /usr/local: no headers, and -lcudart fails at the final link, after minutes of compiling)."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:  # the user's choice, taken as given (an invalid one is reported by cuda_plan)
        return explicit
    on_path = shutil.which("nvcc")
    candidates = [torch_guess, on_path and str(Path(on_path).resolve().parent.parent), "/usr/local/cuda"]
    return next((c for c in candidates if is_cuda_toolkit(c)), None)


def cuda_plan(torch, cuda_home):
    """(build the CUDA kernels?, why not): environment first, then what is installed."""
    if os.environ.get("FORCE_ONLY_CPU") == "1":
        return False, "FORCE_ONLY_CPU=1"
    missing = None
    nvcc = nvcc_version(cuda_home) if cuda_home else None
    if torch.version.cuda is None:
        missing = f"torch {torch.__version__} is a CPU-only build"
    elif nvcc is None or not is_cuda_toolkit(cuda_home):
        missing = (f"CUDA_HOME={cuda_home} is not a CUDA toolkit (no bin/nvcc and include/cuda_runtime.h)"
                   if cuda_home else "no CUDA toolkit found (nvcc; set CUDA_HOME to one)")
    elif SUPPORT.cuda_major(nvcc) != SUPPORT.cuda_major(torch.version.cuda):
        missing = (f"nvcc in {cuda_home} is CUDA {nvcc} but torch {torch.__version__} is built for CUDA "
                   f"{torch.version.cuda} (set CUDA_HOME to a CUDA {SUPPORT.cuda_major(torch.version.cuda)} toolkit)")
    if missing and os.environ.get("FORCE_CUDA") == "1":
        fail(f"FORCE_CUDA=1 but {missing}")
    if missing:
        notice(f"building without CUDA kernels: {missing}")
        return False, missing
    return True, None


def cuda_archs(torch):
    """TORCH_CUDA_ARCH_LIST, else the visible GPUs' (torch's own default), else DEFAULT_CUDA_ARCHS.
    Set in the environment, so torch compiles for exactly what _build_info records."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs and torch.cuda.is_available():
        found = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = ";".join(f"{major}.{minor}" for major, minor in found) + "+PTX"
    if not archs:
        archs = SUPPORT.DEFAULT_CUDA_ARCHS
        notice(f"no GPU visible: CUDA kernels built for {archs} (TORCH_CUDA_ARCH_LIST chooses others, "
               "FORCE_ONLY_CPU=1 builds none)")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


def nvidia_include_dirs(torch):
    """The CUDA build of torch ships the CUDA library headers (cublas_v2.h, cusparse.h, ...) in
    site-packages/nvidia/cu13/include; ATen's CUDA headers include them."""
    site = Path(torch.__file__).parent.parent / "nvidia"
    return [str(p) for p in site.glob("*/include") if p.is_dir()]


def build_info_text(torch, cuda, archs, cuda_note):
    return (
        "# Written by setup.py at build time: what this build of validated_loss._C contains.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"TORCH_CUDA = {torch.version.cuda!r}\n"
        f"CPU_CAPABILITIES = {[c.upper() for c in CAPABILITIES]!r}\n"
        f"CUDA = {cuda!r}\n"
        f"CUDA_ARCHS = {archs!r}\n"
        f"CUDA_NOTE = {cuda_note!r}\n"
        f"SANITIZE = {os.environ.get('VALIDATED_LOSS_SANITIZE', '')!r}\n"
    )


def extension(torch):
    from torch.utils import cpp_extension

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
               f"{CSRC}/cpu/gradient_buffer.cpp", f"{CSRC}/python_errors.cpp", f"{CSRC}/autograd.cpp",
               f"{CSRC}/meta.cpp"]
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC / "validation").glob("*.cpp"))
    sources += [kernel_source(c) for c in CAPABILITIES]
    cuda_home = cuda_toolkit(cpp_extension.CUDA_HOME)
    cuda, cuda_note = cuda_plan(torch, cuda_home)
    if cuda:  # torch's extension builder reads its module-level guess when it compiles and links
        cpp_extension.CUDA_HOME = cuda_home
    archs = cuda_archs(torch) if cuda else None
    info = build_info_text(torch, cuda, archs, cuda_note)
    (ROOT / "validated_loss" / "_build_info.py").write_text(info)
    if not cuda:
        ext = cpp_extension.CppExtension(
            "validated_loss._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    else:
        nvcc = ["-O3", "-lineinfo", "-Xptxas=-v", "--expt-relaxed-constexpr", "-Werror=all-warnings"]
        # The ops and kernels, and validation's CUDA side (the status queue's events, graph slots).
        for folder in ("cuda", "validation"):
            sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC / folder).glob("*.cu"))
        ext = cpp_extension.CUDAExtension(
            "validated_loss._C", sources, include_dirs=nvidia_include_dirs(torch),
            extra_compile_args={"cxx": cxx + ["-DVALIDATED_LOSS_CUDA"], "nvcc": nvcc}, extra_link_args=link,
        )
    return ext, info


def build_extension_class(info):
    from torch.utils import cpp_extension

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's BuildExtension, plus per-file flags for the per-capability CPU kernel files
        (setuptools has one flag set per extension), and a rebuild whenever the torch changes."""

        def build_extensions(self):
            # setuptools skips an extension whose built file is newer than its sources, whatever
            # torch it was built against: compare what this build is for with the last one's.
            stamp = Path(self.build_temp) / "validated_loss_build_info.py"
            if not stamp.is_file() or stamp.read_text() != info:
                self.force = True
            super().build_extensions()
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(info)

        def build_extension(self, ext):
            args = ext.extra_compile_args
            common = args["cxx"] if isinstance(args, dict) else args
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

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


if __name__ == "__main__":  # also under pip and build: setuptools runs this file as __main__
    TORCH = check_build_tools()
    if TORCH is None:  # sdist / egg_info without torch: the sources only (MANIFEST.in)
        setup(install_requires=[torch_requirement(None)])
    else:
        EXT, INFO = extension(TORCH)
        setup(install_requires=[torch_requirement(TORCH)], ext_modules=[EXT],
              cmdclass={"build_ext": build_extension_class(INFO)})
