"""Root pytest configuration: benchmark sizes and the machine facts recorded with every benchmark run.

``--fastadv-size=cpu`` (default; the whole suite finishes on 2 CPU cores in minutes) or
``--fastadv-size=gpu`` (PreActResNet-18 and WRN-34-10 on CIFAR-10-shaped data, batch 128 and 512,
fp32 and bf16). ``$FASTADV_BENCH_SIZE`` sets the default.
"""
import os
import platform

import pytest


def pytest_addoption(parser):
    parser.addoption("--fastadv-size", choices=("cpu", "gpu"),
                     default=os.environ.get("FASTADV_BENCH_SIZE", "cpu"),
                     help="benchmark sizes: 'cpu' (small, default) or 'gpu' (paper-sized models)")


@pytest.fixture(scope="session")
def bench_size(request):
    return request.config.getoption("--fastadv-size")


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch
    machine_info["torch"] = torch.__version__
    try:
        import triton
        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
    machine_info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["cpu_threads"] = torch.get_num_threads()
    machine_info["platform"] = platform.platform()
    machine_info["fastadv_size"] = config.getoption("--fastadv-size")
