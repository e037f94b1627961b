#!/usr/bin/env bash
# The CUDA compile gate (no GPU needed): builds the .cu sources with nvcc against the CUDA build of
# torch, then checks the result (tests/test_cuda_build.py): no ptxas register spills, the module
# imports and registers CUDA kernels, and the machine code has 16-byte loads in the
# large-vocabulary kernels, no local-memory traffic and no device-side assert traps.
#
# The build works on a copy of the sources under build/cuda/, so the in-place CPU build of the
# working tree (validated_loss/_C*.so, validated_loss/_build_info.py) is never touched.
#
# Environment:
#   CUDA_VENV             virtualenv with the CUDA build of torch (default .venv-cuda; created when
#                         missing, with TORCH_CUDA_SPEC)
#   TORCH_CUDA_SPEC       default torch==2.14.1 (the PyPI wheel for Linux x86_64 is the CUDA build)
#   CUDA_HOME             default /usr/local/cuda
#   TORCH_CUDA_ARCH_LIST  default "8.0;9.0+PTX"
#   MAX_JOBS              parallel nvcc jobs, default 2
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

CUDA_VENV="${CUDA_VENV:-$ROOT/.venv-cuda}"
TORCH_CUDA_SPEC="${TORCH_CUDA_SPEC:-torch==2.14.1}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
export MAX_JOBS="${MAX_JOBS:-2}"
export FORCE_CUDA=1
unset FORCE_ONLY_CPU

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda_check: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi
PY="$CUDA_VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$CUDA_VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "$TORCH_CUDA_SPEC" ninja setuptools wheel
fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else "cuda_check: " + torch.__version__ + " is not a CUDA build of torch")'

OUT="$ROOT/build/cuda"
SRC="$OUT/src"
mkdir -p "$SRC" "$OUT/temp"
# A mirror of what the build reads; timestamps kept, so ninja recompiles only what changed.
rm -rf "$SRC/csrc"
cp -a setup.py pyproject.toml csrc "$SRC/"
[ -f README.md ] && cp -a README.md "$SRC/"
# The package's Python, subpackages included (validated_loss/tools), as git lists it; the module
# is linked again below anyway (the CUDA objects are always rebuilt).
rm -rf "$SRC/validated_loss"
git ls-files -z --cached --others --exclude-standard -- 'validated_loss/*.py' | tar --null -T - -cf - | tar -xf - -C "$SRC"

echo "cuda_check: nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), torch $("$PY" -c 'import torch; print(torch.__version__)'), archs $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs"
# The CUDA objects are always rebuilt, so that build.log holds ptxas's report for every kernel
# (the CPU objects are reused when unchanged).
rm -f "$OUT"/temp/csrc/cuda/*.o "$OUT"/temp/csrc/validation/deferred_cuda.o "$OUT"/temp/csrc/validation/status_publish.o
start=$(date +%s)
# The log keeps every ptxas report (register counts, spills) for the checks below.
( cd "$SRC" && "$PY" setup.py build_ext --inplace --build-temp "$OUT/temp" ) > "$OUT/build.log" 2>&1 || {
  grep -E "error|Error" "$OUT/build.log" | head -50 >&2
  echo "cuda_check: build failed, full log in $OUT/build.log" >&2
  exit 1
}
echo "cuda_check: built in $(( $(date +%s) - start )) s"

VL_CUDA_BUILD="$OUT" VL_CUDA_PYTHON="$PY" "$PY" tests/test_cuda_build.py
