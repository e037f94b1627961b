"""Shows that the emulated-CUDA suite catches broken kernels: each mutant below is a copy of csrc/
with one deliberate defect, built by scripts/build_cuda_emu.py and run against a part of
tests/test_cuda_emu.py, which must fail. Exit status 1 if any mutant survives.

    python scripts/cuda_emu_mutants.py [NAME ...]     (make test-cuda-emu-mutants: all of them)
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "cuda-emu" / "mutants"

# name -> (file under csrc/, what is replaced (regex, exactly one match), replacement, what it breaks)
MUTANTS = {
    "shuffle-returns-own-value": (
        "cuda/team_reduce.cuh", r"(shfl_xor_state\(.*?\n}\n)", lambda m: m.group(1).replace(", offset)", ", 0)"),
        "every __shfl_xor_sync of the team reduction reads the calling lane's own value"),
    "block-reduce-barrier-removed": (
        "cuda/team_reduce.cuh", r"if \(threadIdx\.x == 0\) s\.sum_result = r;\n    __syncthreads\(\);",
        lambda m: "if (threadIdx.x == 0) s.sum_result = r;",
        "the __syncthreads() between thread 0's write of the block's sum and the others' read (every thread "
        "of the probability backward scales its gradients by it)"),
    "vector-tail-drops-last-element": (
        "cuda/launch_plan.h", r"c = s\.tail_begin \+ lane; c < s\.num_classes;",
        lambda m: "c = s.tail_begin + lane; c < s.num_classes - 1;",
        "the scalar tail after a row's 16-byte vectors stops one element early"),
    "status-written-by-every-row": (
        "cuda/row_scan.h", r"t\.invalid = invalid_merge\(a\.invalid, b\.invalid\);",
        lambda m: ("t.invalid = b.invalid.position >= 0 ? b.invalid : a.invalid; "
                   "t.invalid.count = a.invalid.count + b.invalid.count;"),
        "every partial status with an invalid row overwrites the merged record instead of the first keeping it"),
    "tile-fold-skips-last-warp": (
        "cuda/team_reduce.cuh", r"for \(int lane = 1; lane < team; \+\+lane\) st = lane_combine",
        lambda m: "for (int lane = 1; lane < team - 1; ++lane) st = lane_combine",
        "a tile's row state leaves out its last warp's share of the classes (kTiledRows)"),
    "split-merge-drops-last-split": (
        "cuda/forward_kernels.cu", r"sp < split_plan\.splits; \+\+sp",
        lambda m: "sp < split_plan.splits - 1; ++sp",
        "the merge of a split row's states leaves out its last class range"),
}

TESTS = ["tests/test_cuda_emu.py", "-x", "-q", "-p", "no:cacheprovider", "-k",
         "status_record or every_schedule or parity_probabilities or "
         "(parity_class and (tiny or c1025 or c4097 or bvt) and contig and (plain or all))"]


def mutate(name):
    path, pattern, replacement, _ = MUTANTS[name]
    tree = OUT / name / "csrc"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(ROOT / "csrc", tree)
    target = tree / path
    text = target.read_text()
    matches = list(re.finditer(pattern, text, flags=re.S))
    if len(matches) != 1:
        raise SystemExit(f"mutant {name}: expected one match of {pattern!r} in csrc/{path}, found {len(matches)}")
    mutated = re.sub(pattern, replacement, text, count=1, flags=re.S)
    if mutated == text:
        raise SystemExit(f"mutant {name}: the replacement changed nothing")
    target.write_text(mutated)
    return tree


def build(name, tree):
    out = OUT / name
    # Only the kernel translation units are compiled again: the rest comes from the plain build.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_cuda_emu.py"), "--kernels-from", str(tree),
                             "--out", str(out), "--temp", str(ROOT / "build" / "cuda-emu" / "plain" / "temp")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"mutant {name} did not build:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def main():
    names = sys.argv[1:] or list(MUTANTS)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise SystemExit(f"unknown mutants {unknown}; known: {list(MUTANTS)}")
    survivors = []
    for name in names:
        path, _, _, what = MUTANTS[name]
        start = time.time()
        library = build(name, mutate(name))
        env = dict(os.environ, VALIDATED_LOSS_C_LIBRARY=library)
        run = subprocess.run([sys.executable, "-m", "pytest", *TESTS], cwd=ROOT, env=env, capture_output=True,
                             text=True)
        caught = run.returncode not in (0, 5)
        failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
        print(f"{name:32s} {'caught' if caught else 'SURVIVED':8s} {time.time() - start:5.0f} s  csrc/{path}: {what}"
              + (f"\n    first failure: {failed[0][7:][:150]}" if failed else ""), flush=True)
        if not caught:
            survivors.append(name)
    print(f"cuda_emu_mutants: {len(names) - len(survivors)} of {len(names)} broken kernels caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
