# The two commands of the README:  `make demo` (set up, then train FAT on the bundled digits) and
# `make test` (set up, then run the tests). Both install what they need into the current Python.
PY ?= python3
PIP := $(PY) -m pip
# A torch that is already installed (CPU or CUDA) is kept; else the CPU wheel 2.13.0.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench cuda-leg clean

setup:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	# --no-build-isolation: build the C++/CUDA extension against the torch installed above,
	# never a freshly downloaded one; so the build tools must be here first.
	$(PIP) install -q setuptools wheel ninja pybind11
	$(PIP) install -q --no-build-isolation -e ".[test]"
	# torchattacks: the benchmarks' baseline. --no-deps: its torchvision requirement would pull in a
	# torch of its own choosing; what it imports (numpy, scipy, tqdm) the test extras already bring.
	$(PIP) install -q --no-deps "torchattacks==3.5.1"

# --overwrite: a second `make demo` replaces the first demo's run folder (a plain re-run refuses).
demo: setup
	$(PY) -m fastadv train --method fat --tau 1 --overwrite

test: setup
	$(PY) -m pytest -q -ra --benchmark-disable

bench: setup
	$(PY) -m pytest --benchmark-only -q

# CI's second leg: build and check the CUDA kernels against the CUDA build of torch (no GPU needed;
# installs torch==2.14.1 with its nvidia packages, about 5.5 GB, into .venv-cuda once).
cuda-leg:
	bash scripts/ci_cuda_leg.sh

clean:
	rm -rf build *.egg-info fastadv/_C*.so .pytest_cache
