"""Root pytest configuration: benchmark sizes and the machine facts recorded with every benchmark run.

``--fastadv-size=cpu`` (default; the whole suite finishes on 2 CPU cores in minutes) or
``--fastadv-size=gpu`` (PreActResNet-18 and WRN-34-10 on CIFAR-10-shaped data, batch 128 and 512,
fp32 and bf16). ``$FASTADV_BENCH_SIZE`` sets the default.

``$FASTADV_BENCH_THREADS=N`` sets torch's CPU threads for the session (default: torch's own
choice; ``benchmarks/bench_kernels.py`` pins 2 threads per case regardless). On a machine shared
with other busy processes, 1 thread is much faster than 2: OpenMP workers that wait for a
descheduled peer make a 2-thread training step 5-15× slower. ``$FASTADV_BENCH_NOTE`` is stored in
the benchmark JSON's ``machine_info["note"]`` (e.g. "timed under contention") and printed by
``python -m benchmarks.report``, as is the load average at the start of the run.
"""
import os
import platform

import pytest


def pytest_configure(config):
    threads = os.environ.get("FASTADV_BENCH_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    try:
        config._fastadv_loadavg = os.getloadavg()  # before the benchmarks add their own load
    except (AttributeError, OSError):
        config._fastadv_loadavg = None


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
    machine_info["cpu_count"] = os.cpu_count()
    load = getattr(config, "_fastadv_loadavg", None)
    machine_info["load_avg_at_start"] = [round(v, 2) for v in load] if load else None
    machine_info["note"] = os.environ.get("FASTADV_BENCH_NOTE") or None
