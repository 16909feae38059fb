"""Test set-up shared by every test file.

Triton kernels run on the CPU only under the interpreter, which must be switched on before any
module defining ``@triton.jit`` kernels is imported (NOTES §2): so it is set here, first.
On a machine with a GPU the real Triton backend is tested instead.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def backend(request, monkeypatch):
    """Force one backend for the test through ``FASTADV_BACKEND`` (the documented switch)."""
    name = request.param
    monkeypatch.setenv("FASTADV_BACKEND", name)
    return name
