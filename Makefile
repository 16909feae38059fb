# The two commands of the README:  `make demo` (set up, then train FAT on the bundled digits) and
# `make test` (set up, then run the tests). Both install what they need into the current Python.
PY ?= python3
# A torch that is already installed (CPU or CUDA) is kept; else the CPU wheel 2.13.0.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup setup-demo setup-test demo test bench cuda-leg clean

# Idempotent: scripts/setup_env.py installs and builds only what is missing or stale (a second
# `make demo` or `make test` makes no pip call). The demo installs what the demo needs (torch, the
# extension, scikit-learn); the tests add theirs (pytest, triton, ...; see the script).
setup: setup-test

setup-demo:
	TORCH_SPEC="$(TORCH_SPEC)" $(PY) scripts/setup_env.py demo

setup-test:
	TORCH_SPEC="$(TORCH_SPEC)" $(PY) scripts/setup_env.py test

# --overwrite: a second `make demo` replaces the first demo's run folder (a plain re-run refuses).
demo: setup-demo
	$(PY) -m fastadv train --method fat --tau 1 --overwrite

test: setup-test
	$(PY) -m pytest -q -ra --benchmark-disable

bench: setup-test
	$(PY) -m pytest --benchmark-only -q

# CI's second leg: build and check the CUDA kernels against the CUDA build of torch (no GPU needed;
# installs torch==2.14.1 with its nvidia packages, about 5.5 GB, into .venv-cuda once).
cuda-leg:
	bash scripts/ci_cuda_leg.sh

clean:
	rm -rf build *.egg-info fastadv/_C*.so .pytest_cache  # build/ holds the set-up stamp
