# Every target creates the virtual environment and builds the extension when needed, so a fresh
# clone needs nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
# torch 2.13.0's CPU build; the CUDA sources are compiled separately by cuda-check.
TORCH_SPEC ?= torch==2.13.0
TEST_DEPS := numpy hypothesis pytest ninja matplotlib tqdm expecttest setuptools wheel

.PHONY: build test test-isa bench bench-full cuda-check asan test-cuda-emu test-cuda-emu-mutants test-install gpu-check clean

$(DEPS): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TEST_DEPS)
	touch $@

build: $(DEPS)
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest tests

# The kernels are compiled for three CPU capabilities and the machine runs the widest; this runs
# the kernel suites on the two narrower builds too (ATen honours ATEN_CPU_CAPABILITY).
ISA_TESTS := tests/test_parity.py tests/test_properties.py tests/test_kernel_paths.py tests/test_llm_options.py \
	tests/test_gradient_cache.py tests/test_inplace_backward.py tests/test_exp_accuracy.py tests/test_wrong_numbers.py \
	tests/test_nonfinite_corners.py
test-isa: build
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest $(ISA_TESTS) -p no:cacheprovider
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest $(ISA_TESTS) -p no:cacheprovider

bench: build
	$(PY) benchmarks/bench.py

bench-full: build
	$(PY) benchmarks/bench.py --full

# Compiles the CUDA kernels with nvcc against the CUDA build of torch (no GPU needed), checks
# ptxas spills and the machine code, and imports the result.
cuda-check:
	bash scripts/cuda_check.sh

# The C++ kernels built with AddressSanitizer, in a copy of the tree so the normal build is
# untouched, and the CPU test suite run under it.
ASAN_TREE := build/asan-tree
# The suites that drive the kernels (multi-process and build tests stay outside the sanitizer).
ASAN_TESTS := tests/test_parity.py tests/test_properties.py tests/test_validation.py tests/test_gradcheck.py \
	tests/test_deferred.py tests/test_diagnostics.py tests/test_module.py
asan: $(DEPS)
	rm -rf $(ASAN_TREE) && mkdir -p $(ASAN_TREE)
	cp -r setup.py pyproject.toml csrc validated_loss tests $(ASAN_TREE)/
	rm -f $(ASAN_TREE)/validated_loss/_C*.so
	cd $(ASAN_TREE) && FORCE_ONLY_CPU=1 VALIDATED_LOSS_SANITIZE=address $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	# libstdc++ is preloaded too: python itself does not link it, and ASan must find __cxa_throw at start-up.
	cd $(ASAN_TREE) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:abort_on_error=1 \
		$(CURDIR)/$(PY) -m pytest $(ASAN_TESTS) -p no:cacheprovider -x -m "not slow"

# The CUDA kernels executed on the CPU: csrc/cuda/*.cu compiled a second time as host C++ against
# the project's CUDA emulation (csrc/cuda_emu), loaded in place of validated_loss._C for CPU tensors
# (validated_loss/_library.py), and run through the public API: the emulation layer's self-test,
# the GPU grid (tests/cuda_grid.py) under seeded random schedules, then a reduced grid with the
# library built under AddressSanitizer + UndefinedBehaviorSanitizer.
# Besides its own suite, the CPU suites that compare the public API with torch on corner cases run
# through the emulated CUDA kernels too (the CPU-kernel-specific suites do not apply there).
CUDA_EMU_TESTS := tests/test_cuda_emu.py tests/test_wrong_numbers.py tests/test_nonfinite_corners.py
test-cuda-emu: $(DEPS)
	$(PY) -m pytest tests/test_cuda_emu_layer.py -p no:cacheprovider
	$(PY) scripts/build_cuda_emu.py
	VALIDATED_LOSS_C_LIBRARY=$$(ls build/cuda-emu/plain/_C*.so) $(PY) -m pytest $(CUDA_EMU_TESTS) -p no:cacheprovider
	$(PY) scripts/build_cuda_emu.py --sanitize
	VALIDATED_LOSS_C_LIBRARY=$$(ls build/cuda-emu/sanitize/_C*.so) VL_CUDA_EMU_REDUCED=1 \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:abort_on_error=1 \
		$(PY) -m pytest tests/test_cuda_emu.py -p no:cacheprovider -x

# Each deliberately broken kernel of scripts/cuda_emu_mutants.py must make the emulated suite fail.
test-cuda-emu-mutants: $(DEPS)
	$(PY) scripts/cuda_emu_mutants.py

# Installs as a user does (tests/test_install.py): pip into new virtual environments, from a fresh
# clone of the committed tree and from an sdist, then imports that build with another torch: the
# torch 2.14.1 of .venv-cuda, made here as cuda-check makes it when missing. The in-tree build is
# not what is tested, but tests/conftest.py imports the package (free after make test).
test-install: build
	test -x .venv-cuda/bin/python || { $(PYTHON) -m venv .venv-cuda && \
		.venv-cuda/bin/python -m pip install -q torch==2.14.1 ninja setuptools wheel; }
	VL_INSTALL_TEST=1 $(PY) -m pytest tests/test_install.py -p no:cacheprovider -s

clean:
	rm -rf build validated_loss/_C*.so validated_loss/_build_info.py

# One command on a GPU machine (issue 14): builds the extension in place for the GPU present, runs the
# GPU tests (validation modes, sync-debug mode, the GPU grid, the parity suites on CUDA tensors),
# compute-sanitizer over a small grid, and the GPU benchmark, within about 8 minutes; logs, JUnit XML,
# the benchmark's files and a summary under OUT (default build/gpu-check). Uses the machine's own
# Python and torch ($(PYTHON); no venv, nothing installed). FAST=1: reduced grid, first benchmark
# shape. ONLY=bench,...: some steps. Refuses (exit status 2) without a CUDA device or nvcc.
gpu-check:
	OUT="$(OUT)" FAST="$(FAST)" ONLY="$(ONLY)" $(PYTHON) scripts/gpu_check.py
