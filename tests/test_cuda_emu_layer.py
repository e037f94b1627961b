"""The CUDA emulation layer itself (csrc/cuda_emu), with no torch: tests/cuda_emu_selftest.cpp
built with the host compiler and run, plain and under AddressSanitizer + UndefinedBehaviorSanitizer
(which must also catch a misaligned 16-byte vector load, as a GPU faults on one)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "csrc" / "cuda_emu"
SOURCES = [ROOT / "tests" / "cuda_emu_selftest.cpp", EMU / "block_run.cpp", EMU / "grid_run.cpp", EMU / "fiber.cpp",
           EMU / "runtime.cpp"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _build(tmp_path, name, flags):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / name
    cmd = [cxx, "-std=c++17", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
           f"-include{EMU / 'prelude.h'}", f"-I{EMU / 'include'}", f"-I{ROOT / 'csrc'}", *flags,
           *map(str, SOURCES), "-o", str(exe), "-lpthread"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in " ".join(flags) and "sanitize" in build.stderr:
        pytest.skip(f"this compiler cannot build with sanitizers: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr
    return exe


def _selftest(exe):
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " checks, 0 failures" in result.stdout, result.stdout[-2000:]


def test_emulation_layer(tmp_path):
    _selftest(_build(tmp_path, "selftest", ["-O2"]))


def test_emulation_layer_under_sanitizers(tmp_path):
    exe = _build(tmp_path, "selftest_san", ["-O1", *SANITIZE])
    _selftest(exe)
    misaligned = subprocess.run([str(exe), "misaligned"], capture_output=True, text=True, timeout=60)
    assert misaligned.returncode != 0
    assert "misaligned address" in misaligned.stderr and "float4" in misaligned.stderr, misaligned.stderr[-2000:]
