"""Checks of the CUDA build made by scripts/cuda_check.sh (no GPU needed).

scripts/cuda_check.sh compiles the .cu sources with nvcc against the CUDA build of torch into
build/cuda/ and then runs this file (as a script, with that torch's Python, which has no pytest),
with VL_CUDA_BUILD pointing at the build. Under a plain `pytest tests` (no VL_CUDA_BUILD) every
test here is skipped: the compile takes minutes and needs nvcc.

What is checked:
  * ptxas (-Xptxas -v, kept in build.log): no kernel spills registers, for every architecture;
  * the built module imports on this GPU-less machine and registers CUDA kernels for all ops;
  * the machine code (cuobjdump -sass, shipped with the CUDA torch in triton's backends):
    16-byte global loads (LDG.E.128) in the large-vocabulary kernels, 16-byte stores in the
    backward, no local-memory traffic (LDL/STL), no device-side assert or trap.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import pytest
except ImportError:  # run as a script by cuda_check.sh, in a venv without pytest
    pytest = None

ROOT = Path(__file__).resolve().parent.parent
OPS = ("cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_bwd_", "cross_entropy_prob_fwd",
       "cross_entropy_prob_bwd", "deferred_submit")
DTYPES = {"f": "float32", "d": "float64", "NS0_8HalfBitsE": "float16", "NS0_12BFloat16BitsE": "bfloat16"}


class Skip(Exception):
    pass


def skip(reason):
    if pytest is not None:
        pytest.skip(reason)
    raise Skip(reason)


def build_dir():
    path = os.environ.get("VL_CUDA_BUILD")
    if not path:
        skip("no CUDA build to check (run scripts/cuda_check.sh, i.e. make cuda-check)")
    return Path(path)


def cuda_python():
    python = os.environ.get("VL_CUDA_PYTHON") or str(ROOT / ".venv-cuda" / "bin" / "python")
    if not Path(python).exists():
        skip(f"no Python with the CUDA build of torch at {python}")
    return python


def module_path():
    found = sorted((build_dir() / "src" / "validated_loss").glob("_C*.so"))
    assert found, f"no built module under {build_dir() / 'src' / 'validated_loss'}"
    return found[0]


def cuobjdump():
    python = cuda_python()
    site = subprocess.run([python, "-c", "import triton, os; print(os.path.dirname(triton.__file__))"],
                          capture_output=True, text=True)
    candidates = []
    if site.returncode == 0:
        candidates.append(Path(site.stdout.strip()) / "backends" / "nvidia" / "bin" / "cuobjdump")
    candidates.append(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump")
    for c in candidates:
        if c.exists():
            return str(c)
    skip(f"no cuobjdump (looked at {[str(c) for c in candidates]})")


def archs():
    spec = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    return sorted({"sm_" + a.replace("+PTX", "").replace(".", "") for a in re.split(r"[;\s]+", spec) if a})


# --------------------------------------------------------------------------------------------- ptxas


def ptxas_report():
    """{(function, arch): {"registers": int, "spill_stores": int, "spill_loads": int, "stack": int}}"""
    log = build_dir() / "build.log"
    assert log.exists(), f"no build log at {log}"
    report, current = {}, None
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'", line)
        if m:
            current = (m.group(1), m.group(2))
            report[current] = {}
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m and (current is None or current[0] != m.group(1)):
            current = (m.group(1), current[1] if current else "?")
            report.setdefault(current, {})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            report[current]["registers"] = int(m.group(1))
    return report


KERNELS = ("forward_kernel", "split_finish_kernel", "index_backward_kernel", "prob_backward_kernel", "finalize_kernel",
           "weight_sum_kernel")


def short_name(mangled):
    """forward_kernel<bfloat16, block-row, probs> style names for the report."""
    for kernel in KERNELS:
        m = re.search(r"\d" + kernel + r"I(.*)$", mangled)
        if m:
            break
    else:
        return mangled
    args = m.group(1)
    dtype = next((v for k, v in DTYPES.items() if args.startswith(k)), "")
    parts = [dtype] + [v for k, v in {"Li0E": "team", "Li1E": "block-row", "Li2E": "tiled"}.items() if k in args]
    if "Lb1E" in args:
        parts.append("probs")
    elif "Lb0E" in args:
        parts.append("index")
    return f"{kernel}<{', '.join(p for p in parts if p)}>"


def test_ptxas_no_spills():
    report = ptxas_report()
    kernels = {k: v for k, v in report.items() if "validated_loss" in k[0]}
    assert kernels, "build.log holds no ptxas report for validated_loss kernels (were the .cu files recompiled?)"
    for arch in archs():
        assert any(a == arch for _, a in kernels), f"no kernel compiled for {arch}"
    bad = {short_name(f) + " " + a: v for (f, a), v in kernels.items()
           if v.get("spill_stores", 0) or v.get("spill_loads", 0)}
    assert not bad, f"register spills: {bad}"
    lines = [f"  {short_name(f):45s} {a}  {v.get('registers', '?'):>3} registers, "
             f"{v.get('stack', 0)} bytes stack, spills {v.get('spill_stores', 0)}/{v.get('spill_loads', 0)}"
             for (f, a), v in sorted(kernels.items(), key=lambda kv: (kv[0][1], short_name(kv[0][0])))]
    print("ptxas:\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------- import


def test_imports_and_registers_cuda_kernels():
    python = cuda_python()
    src = build_dir() / "src"
    ops = ", ".join(repr(o) for o in OPS)
    code = (
        "import torch, validated_loss\n"
        "from validated_loss import _build_info\n"
        f"for op in ({ops},):\n"
        "    for key in ('CPU', 'CUDA'):\n"
        "        assert torch._C._dispatch_has_kernel_for_dispatch_key('validated_loss::' + op, key), (op, key)\n"
        "assert _build_info.CUDA, 'built without CUDA'\n"
        "print('cuda available:', torch.cuda.is_available(), '| archs:', _build_info.CUDA_ARCHS)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(src))
    result = subprocess.run([python, "-c", code], cwd=src, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"import failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    print(result.stdout.strip())
    shown = subprocess.run([python, "-m", "validated_loss"], cwd=src, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "CUDA kernels compiled for architectures" in shown.stdout, shown.stdout


# --------------------------------------------------------------------------------------------- SASS


def sass_functions():
    """{(arch, function): [(address, instruction)]} from cuobjdump -sass of the built module."""
    text = subprocess.run([cuobjdump(), "-sass", str(module_path())], capture_output=True, text=True, check=True).stdout
    functions, arch, current = {}, None, None
    for line in text.splitlines():
        m = re.search(r"arch = (sm_\d+a?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = (arch, m.group(1))
            functions[current] = []
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if current and m:
            functions[current].append((int(m.group(1), 16), m.group(2)))
    return functions


def opcode(instruction):
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split(" ")[0]


def in_loop(address, instructions):
    """Whether a backward branch jumps from after `address` to at or before it."""
    for at, ins in instructions:
        m = re.match(r"(?:@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+(?:`\()?(0x[0-9a-f]+)", ins)
        if m and at > address and int(m.group(1), 16) <= address:
            return True
    return False


def is_large_vocab_kernel(name):
    return bool(re.search(r"forward_kernelI.*Li1ELb", name) or "index_backward_kernel" in name
                or re.search(r"prob_backward_kernelI.*Li1E", name))


def test_sass_vector_loads_no_local_memory_no_traps():
    functions = sass_functions()
    ours = {k: v for k, v in functions.items() if "validated_loss" in k[1]}
    assert ours, "no validated_loss kernels in the module's machine code"
    for arch in archs():
        assert any(a == arch for a, _ in ours), f"no SASS for {arch}"
    problems, large_vocab_checked = [], 0
    for (arch, name), instructions in ours.items():
        ops = [opcode(i) for _, i in instructions]
        local = [o for o in ops if o.startswith(("LDL", "STL"))]
        if local:
            problems.append(f"{short_name(name)} {arch}: local memory {sorted(set(local))}")
        traps = [i for _, i in instructions if "BPT" in i or "assertfail" in i.lower() or "TRAP" in i]
        if traps:
            problems.append(f"{short_name(name)} {arch}: trap/assert {traps[:3]}")
        if is_large_vocab_kernel(name):
            large_vocab_checked += 1
            loads = [a for a, i in instructions if opcode(i).startswith("LDG.E.128")]
            if not any(in_loop(a, instructions) for a in loads):
                problems.append(f"{short_name(name)} {arch}: no 16-byte global load (LDG.E.128) in a loop")
        if ("index_backward_kernel" in name or "prob_backward_kernel" in name) \
                and not any(o.startswith("STG.E.128") for o in ops):
            problems.append(f"{short_name(name)} {arch}: no 16-byte global store (STG.E.128)")
    # 4 dtypes x (index forward, probability forward, index backward, probability backward)
    assert large_vocab_checked == 16 * len(archs()), f"{large_vocab_checked} large-vocabulary kernels found"
    assert not problems, "\n".join(problems)


def test_ptx_has_no_assert_or_trap():
    """The embedded PTX (JIT-compiled on GPUs newer than the SASS targets) has no trap either."""
    result = subprocess.run([cuobjdump(), "-ptx", str(module_path())], capture_output=True, text=True, check=True)
    assert ".entry" in result.stdout, "no PTX embedded (expected +PTX in TORCH_CUDA_ARCH_LIST)"
    for forbidden in ("__assertfail", "trap;", "vprintf"):
        assert forbidden not in result.stdout, f"PTX contains {forbidden}"


def test_probability_backward_reduces_one_value():
    """The probability backward needs one sum per row (sum_c w_c q_c) between its passes: its warp
    team reduction shuffles that one value, not the forward's six-field lane state (each butterfly
    step of which is 7 SHFL instructions)."""
    functions = sass_functions()
    team_variants = {k: v for k, v in functions.items()
                     if re.search(r"prob_backward_kernelI.*Li0E", k[1]) and "validated_loss" in k[1]}
    assert team_variants, "no prob_backward_kernel<T, kTeamRows> in the machine code"
    for (arch, name), instructions in team_variants.items():
        shuffles = [i for _, i in instructions if opcode(i).startswith("SHFL")]
        assert 1 <= len(shuffles) <= 5, f"{short_name(name)} {arch}: {len(shuffles)} shuffles"


if __name__ == "__main__":
    passed = failed = skipped = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                passed += 1
                print(f"PASS {name}")
            except Skip as e:
                skipped += 1
                print(f"SKIP {name}: {e}")
            except AssertionError as e:
                failed += 1
                print(f"FAIL {name}: {e}")
    print(f"cuda-check: {passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)
