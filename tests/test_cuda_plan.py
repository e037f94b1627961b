"""The CUDA kernels' index arithmetic, checked on the host (no GPU, no nvcc).

Compiles tests/cuda_plan_test.cpp with the plain host C++ compiler against the torch-free headers
csrc/cuda/launch_plan.h, row_scan.h and row_ops.h (the very functions the kernels call to map
(block, thread) to rows and elements, to scan a lane's share of a row, and to finish a row and form
each gradient element), runs it, and requires every check to pass: each logit read exactly once,
each gradient element written exactly once, 16-byte vectors aligned, offsets equal to
row_geometry.h's, N*C past 2^31 handled in 64 bits, the rows' loss, lse, status and gradients equal
to float64 references. A second build runs the same program under
UndefinedBehaviorSanitizer and AddressSanitizer, so a signed 64-bit overflow in the index
arithmetic is an error, not a wrap.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "cuda_plan_test.cpp"
HEADERS = [ROOT / "csrc" / "cuda" / "launch_plan.h", ROOT / "csrc" / "cuda" / "row_scan.h",
           ROOT / "csrc" / "cuda" / "row_ops.h", ROOT / "csrc" / "row_geometry.h", ROOT / "csrc" / "xent_row.h"]


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(tmp_path, name, flags):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / name
    cmd = [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}", *flags, str(SOURCE), "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    return exe, result


def _run(exe, timeout):
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{exe.name} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    assert " 0 failures" in result.stdout, result.stdout
    return result.stdout


def test_headers_are_torch_free():
    for header in HEADERS:
        text = header.read_text()
        for forbidden in ("#include <torch", "#include <ATen", "#include <c10", "#include <cuda"):
            assert forbidden not in text, f"{header.name} includes {forbidden[10:]}: it must stay host-compilable"


def test_launch_plan_every_thread(tmp_path):
    exe, build = _build(tmp_path, "cuda_plan_test", ["-O2"])
    assert build.returncode == 0, build.stderr
    out = _run(exe, timeout=300)
    assert "simulated launches" in out


def test_launch_plan_under_sanitizers(tmp_path):
    exe, build = _build(tmp_path, "cuda_plan_test_san",
                        ["-O1", "-fsanitize=undefined,address", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"])
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip(f"this compiler cannot build with sanitizers: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr
    _run(exe, timeout=600)
