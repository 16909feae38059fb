# The two commands of the README:  `make demo` (set up, then train FAT on the bundled digits) and
# `make test` (set up, then run the tests). Both install what they need into the current Python.
PY ?= python3
PIP := $(PY) -m pip
# A torch that is already installed (CPU or CUDA) is kept; else the CPU wheel 2.13.0.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench cuda-check clean

setup:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	# --no-build-isolation: build the C++/CUDA extension against the torch installed above,
	# never a freshly downloaded one; so the build tools must be here first.
	$(PIP) install -q setuptools wheel ninja pybind11
	$(PIP) install -q --no-build-isolation -e ".[test]"

demo: setup
	$(PY) -m fastadv train --method fat --tau 1

test: setup cuda-check
	$(PY) -m pytest -q -ra --benchmark-disable

bench: setup
	$(PY) -m pytest --benchmark-only -q

# Compile every torch-free CUDA kernel for sm_90 with nvcc and syntax-check the ATen CUDA glue
# against torch's headers (works without a GPU or a CUDA torch).
cuda-check:
	@if command -v nvcc >/dev/null 2>&1; then bash scripts/compile_cuda.sh; \
	else echo "nvcc not found: CUDA kernels not compiled"; fi

clean:
	rm -rf build *.egg-info fastadv/_C*.so .pytest_cache
