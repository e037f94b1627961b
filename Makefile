# Every target creates the virtual environment and builds the extension when needed, so a fresh
# clone needs nothing installed by hand.
PYTHON ?= python3
# torch 2.13.0's CPU build; the CUDA sources are compiled separately by cuda-check.
DEFAULT_TORCH_SPEC := torch==2.13.0
TORCH_SPEC ?= $(DEFAULT_TORCH_SPEC)
TEST_DEPS := numpy hypothesis pytest ninja matplotlib tqdm expecttest setuptools wheel
# Another torch (`make test TORCH_SPEC=torch==2.6.0`) gets its own venv (.venv-torch-2.6.0) and its
# own copy of the tree (build/torch-2.6.0), built there CPU-only: the in-place module of the
# working tree is built against the default torch and is never touched (a module built against one
# torch does not load in another, and setup.py would not notice the change and rebuild it).
ifeq ($(TORCH_SPEC),$(DEFAULT_TORCH_SPEC))
VENV := .venv
TREE := .
else
TORCH_TAG := $(subst ==,-,$(TORCH_SPEC))
VENV := .venv-$(TORCH_TAG)
TREE := build/$(TORCH_TAG)
endif
PY := $(CURDIR)/$(VENV)/bin/python
DEPS := $(VENV)/.deps-installed

# The supported range: the oldest torch (pyproject's lower bound) and the newest pip serves here.
# `make test-torch-range` runs the full suite on both (CI does).
OLDEST_TORCH_SPEC := torch==2.6.0
NEWEST_TORCH_SPEC := torch==2.14.1

.PHONY: build test test-torch-range test-isa bench bench-full cuda-check asan test-cuda-emu test-cuda-emu-mutants test-install \
	gpu-check lint format clean

$(DEPS): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TEST_DEPS)
	touch $@

# Another torch's tree: the working tree's files (tracked and new, as git lists them) over a fresh
# copy; the copy's build/ stays, and tar keeps the timestamps, so ninja recompiles only what changed.
build: $(DEPS)
ifneq ($(TREE),.)
	mkdir -p $(TREE)
	find $(TREE) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(TREE)
	cd $(TREE) && FORCE_ONLY_CPU=1 $(PY) setup.py -q build_ext --inplace
else
	$(PY) setup.py -q build_ext --inplace
endif

test: build
	cd $(TREE) && $(PY) -m pytest tests

test-torch-range:
	$(MAKE) test TORCH_SPEC=$(OLDEST_TORCH_SPEC)
	$(MAKE) test TORCH_SPEC=$(NEWEST_TORCH_SPEC)

# The kernels are compiled for three CPU capabilities and the machine runs the widest; this runs
# the kernel suites on the two narrower builds too (ATen honours ATEN_CPU_CAPABILITY).
ISA_TESTS := tests/test_parity.py tests/test_properties.py tests/test_kernel_paths.py tests/test_llm_options.py \
	tests/test_gradient_cache.py tests/test_inplace_backward.py tests/test_exp_accuracy.py tests/test_wrong_numbers.py \
	tests/test_nonfinite_corners.py tests/test_check_finite_paths.py
test-isa: build
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest $(ISA_TESTS) -p no:cacheprovider
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest $(ISA_TESTS) -p no:cacheprovider

bench: build
	$(PY) benchmarks/bench.py

bench-full: build
	$(PY) benchmarks/bench.py --full

# Compiles the CUDA kernels with nvcc against the CUDA build of torch (no GPU needed), checks
# ptxas spills and the machine code, and imports the result. Against the newest torch, in the venv
# `make test TORCH_SPEC=$(NEWEST_TORCH_SPEC)` uses (torch's PyPI wheel is its CUDA build), so CI
# installs it once; CUDA_VENV and TORCH_CUDA_SPEC override both.
NEWEST_VENV := $(CURDIR)/.venv-$(subst ==,-,$(NEWEST_TORCH_SPEC))
cuda-check:
	CUDA_VENV="$${CUDA_VENV:-$(NEWEST_VENV)}" TORCH_CUDA_SPEC="$${TORCH_CUDA_SPEC:-$(NEWEST_TORCH_SPEC)}" \
		bash scripts/cuda_check.sh

# The C++ kernels built with AddressSanitizer, in a copy of the tree so the normal build is
# untouched, and the CPU test suite run under it.
ASAN_TREE := build/asan-tree
# The suites that drive the kernels (multi-process and build tests stay outside the sanitizer).
ASAN_TESTS := tests/test_parity.py tests/test_properties.py tests/test_validation.py tests/test_gradcheck.py \
	tests/test_deferred.py tests/test_diagnostics.py tests/test_module.py tests/test_check_finite_paths.py
asan: $(DEPS)
	rm -rf $(ASAN_TREE) && mkdir -p $(ASAN_TREE)
	cp -r setup.py pyproject.toml csrc validated_loss tests $(ASAN_TREE)/
	rm -f $(ASAN_TREE)/validated_loss/_C*.so
	cd $(ASAN_TREE) && FORCE_ONLY_CPU=1 VALIDATED_LOSS_SANITIZE=address $(PY) setup.py -q build_ext --inplace
	# libstdc++ is preloaded too: python itself does not link it, and ASan must find __cxa_throw at start-up.
	cd $(ASAN_TREE) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:abort_on_error=1 \
		$(PY) -m pytest $(ASAN_TESTS) -p no:cacheprovider -x -m "not slow"

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
# newest, in the venv test-torch-range and cuda-check use (made here when missing). The in-tree
# build is not what is tested, but tests/conftest.py imports the package (free after make test).
test-install: build
	test -x $(NEWEST_VENV)/bin/python || { $(PYTHON) -m venv $(NEWEST_VENV) && \
		$(NEWEST_VENV)/bin/python -m pip install -q $(NEWEST_TORCH_SPEC) ninja setuptools wheel; }
	VL_INSTALL_TEST=1 VL_OTHER_TORCH_PYTHON=$(NEWEST_VENV)/bin/python $(PY) -m pytest tests/test_install.py -p no:cacheprovider -s

# Style: ruff (pyproject.toml's [tool.ruff]) over the Python, clang-format (.clang-format) over
# csrc/; `make format` rewrites the C++ and applies ruff's safe fixes. Pinned, so every machine
# formats the same way.
LINT_TOOLS := ruff==0.17.6 clang-format==23.1.5
LINT_DEPS := $(VENV)/.lint-installed
PY_SOURCES := validated_loss tests scripts benchmarks examples setup.py
CXX_SOURCES = $(shell git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'tests/*.cpp' 'tests/*.h')
$(LINT_DEPS): $(DEPS)
	$(PY) -m pip install -q $(LINT_TOOLS)
	touch $@

lint: $(LINT_DEPS)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(LINT_DEPS)
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

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
