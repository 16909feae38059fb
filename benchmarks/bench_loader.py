"""Throughput of fastadv.data.BatchLoader (device-resident, batched crop+flip) against a
per-sample augmentation loop (what a torchvision-transform DataLoader does per image).

    python -m pytest benchmarks/bench_loader.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

from fastadv.data import BatchLoader

N, BATCH = 5120, 128
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def cifar_like():
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (N, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (N,), generator=g))


def _throughput(benchmark, n):
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_sec"] = n / benchmark.stats.stats.median


def _epoch(loader):
    s = 0.0
    for x, y in loader:
        s += float(x[0, 0, 0, 0])  # touch each batch (forces the work on lazy/async devices)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return s


@pytest.mark.benchmark(group="loader: one epoch, CIFAR-shaped, batch 128")
@pytest.mark.parametrize("augment", [None, "crop-flip"])
def test_batch_loader_epoch(benchmark, cifar_like, augment):
    loader = BatchLoader(cifar_like, BATCH, shuffle=True, augment=augment, device=DEVICE)
    benchmark.extra_info["device"] = DEVICE
    benchmark.pedantic(_epoch, args=(loader,), rounds=5, iterations=1, warmup_rounds=1)
    _throughput(benchmark, N)


def _per_sample_epoch(images, labels, n):
    # torchvision-style: each image padded, cropped, flipped and converted on its own, then stacked.
    perm = torch.randperm(n)
    out = []
    for i in perm.tolist():
        img = F.pad(images[i], (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        img = img[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        out.append(img.float().div(255))
        if len(out) == BATCH:
            torch.stack(out)
            out = []
    return labels[perm]


@pytest.mark.benchmark(group="loader: one epoch, CIFAR-shaped, batch 128")
def test_per_sample_augmentation_baseline(benchmark, cifar_like):
    n = 1280  # a slice of the epoch: the per-sample loop is slow; images/s is what compares
    benchmark.extra_info["baseline"] = True
    benchmark.pedantic(_per_sample_epoch, args=(*cifar_like, n), rounds=3, iterations=1)
    _throughput(benchmark, n)
