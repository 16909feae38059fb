"""One training EPOCH per method on the same data and model: the time and the BPs each method
saves against PGD-10 AT (the group's baseline).

    python -m pytest benchmarks/bench_training.py --benchmark-only                  # cpu size
    python -m pytest benchmarks/bench_training.py --benchmark-only --fastadv-size=gpu

Methods: ``at`` (PGD-10), ``fat`` with τ = 0, 1 and ``dynamic``, ``gairat``, ``gair-fat`` (τ = 1),
``trades`` and ``fat-trades`` (τ = 1); K = 10 everywhere. Each case builds a
:class:`fastadv.training.Trainer` from the same warm-started weights and times
``Trainer.train_epoch`` over a :class:`fastadv.data.BatchLoader` (pedantic mode: the model,
optimizer and RNG are reset before every round, outside the timed region).

Sizes (root ``conftest.py``: ``--fastadv-size``):

- ``cpu``: scikit-learn's bundled 8×8 digits (the first 512 training images, 4 batches of 128),
  ``small_cnn``, ε = 0.2, α = 0.05, fp32, 3 rounds. The whole file takes well under a minute on
  two cores.
- ``gpu``: CIFAR-10-shaped 3×32×32 inputs — the 4,000 real CIFAR-10 training images of
  ``../shared/data`` when that folder (and Pillow) is there, else random uint8 tensors of CIFAR
  shape with random labels (``extra_info["data"]`` says which) — ``preact_resnet18`` and
  ``wrn-34-10``, batch 128 and 512, fp32 and bf16 (``amp="bf16"``), ε = 8/255, α = 2/255; an
  "epoch" is 8 batches (1,024 or 4,096 images), 1 round after an untimed warm-up step.

Warm start: early stopping depends on how robust the model already is (a fresh model misclassifies
nearly everything, so FAT stops after τ steps on almost every image). Every case therefore starts
from the same weights: a few epochs of plain AT from seed 0 over all the size's images (cpu: 2
epochs of the 512 digits; gpu: 5 epochs of the 4,000 real or 4,096 random images, bf16), computed
once per model — a model early in adversarial training rather than at its first step. On the
random-tensor fallback there is nothing to generalise, so its BPs say little about real data.

``extra_info``: ``bp`` (the epoch's ``bp_avg``: PGD updates per image, PGD-10 = 10.00),
``bp_executed`` (``bp_executed_avg``: backward passes actually run per image), ``bp_saved`` (%),
``images_per_sec`` (images / median epoch time), ``tau``, ``device``, ``model``, ``dtype``,
``data``, ``n_images`` and ``baseline`` (true for ``at``). ``fat τ=dynamic``: each round is one
epoch in one phase of the FAT paper's schedule (τ = 0, 1, 2: epochs 1, 71 and 101 of 120), so its
``bp`` is the mean over the three phases and ``bp_by_round`` lists them.

``test_bp_curve_tiny`` runs ``benchmarks/bp_curve.py`` (the BP-per-epoch curve of FAT vs AT) at a
tiny size, so CI (``--benchmark-disable``) exercises it; ``python -m benchmarks.bp_curve`` draws
the real one.
"""
from __future__ import annotations

import copy

import pytest
import torch

from fastadv import models
from fastadv.data import BatchLoader, load_dataset
from fastadv.training import Trainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 10
WARM_EPOCHS = 2      # cpu size
WARM_EPOCHS_GPU = 5  # gpu size
DYNAMIC_EPOCHS = (0, 70, 100)  # one epoch in each phase of FAT's dynamic τ (0/1/2) over 120 epochs

# (case id, method, tau); "at" is the baseline of every group.
METHODS = [
    ("at", "at", None),
    ("fat-tau0", "fat", 0),
    ("fat-tau1", "fat", 1),
    ("fat-dynamic", "fat", "dynamic"),
    ("gairat", "gairat", None),
    ("gair-fat-tau1", "gair-fat", 1),
    ("trades", "trades", None),
    ("fat-trades-tau1", "fat-trades", 1),
]

CPU_SIZE = dict(dataset="digits", n=512, model="small_cnn", batch=128, eps=0.2, alpha=0.05,
                dtypes=("fp32",), rounds=3)
GPU_SIZE = dict(dataset="cifar10", batches_per_epoch=8, models=("preact_resnet18", "wrn-34-10"),
                batches=(128, 512), eps=8 / 255, alpha=2 / 255, dtypes=("fp32", "bf16"), rounds=1)


def _configs(size):
    """(model, batch, dtype) of a size."""
    if size == "cpu":
        return [(CPU_SIZE["model"], CPU_SIZE["batch"], "fp32")]
    return [(m, b, d) for m in GPU_SIZE["models"] for b in GPU_SIZE["batches"] for d in GPU_SIZE["dtypes"]]


def pytest_generate_tests(metafunc):
    if {"case", "config"} <= set(metafunc.fixturenames):
        size = metafunc.config.getoption("--fastadv-size")
        params = []
        for model, batch, dtype in _configs(size):
            for case, method, tau in METHODS:
                params.append(pytest.param((model, batch, dtype), (case, method, tau),
                                           id=f"{model}-b{batch}-{dtype}-{case}"))
        metafunc.parametrize("config,case", params)


# ----------------------------------------------------------------------------------- data
def _cifar_images():
    """uint8 [N, 3, 32, 32] and labels: the real CIFAR-10 subset when available, else random."""
    try:
        import sys
        from pathlib import Path
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from shared_data import cifar10_lossless, shared_data_dir
        root = shared_data_dir()
        if root is not None:
            train, labels, _, _ = cifar10_lossless(root)
            x = torch.from_numpy(train).permute(0, 3, 1, 2).contiguous()
            return x, torch.from_numpy(labels).long(), "CIFAR-10 (real, ../shared/data)"
    except Exception:  # no Pillow, no folder, unreadable sprite: fall back to random pixels
        pass
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (4096, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (4096,), generator=g), "random tensors of CIFAR-10 shape")


@pytest.fixture(scope="module")
def data(bench_size):
    """{"x": uint8 images, "y": labels, "name": str, "eps", "alpha", "in_channels"}."""
    if bench_size == "gpu" and DEVICE != "cuda":
        pytest.skip("--fastadv-size=gpu needs a CUDA device (WRN-34-10 epochs on a CPU take hours)")
    if bench_size == "cpu":
        ds = load_dataset("digits", split="train")
        n = CPU_SIZE["n"]
        return dict(x=ds.images[:n], y=ds.labels[:n], name=f"digits (first {n} train images)",
                    eps=CPU_SIZE["eps"], alpha=CPU_SIZE["alpha"], in_channels=1)
    x, y, name = _cifar_images()
    return dict(x=x, y=y, name=name, eps=GPU_SIZE["eps"], alpha=GPU_SIZE["alpha"], in_channels=3)


def _loader(data, n, batch):
    x, y = data["x"], data["y"]
    if n > x.shape[0]:  # repeat the images to fill the epoch (random fallback has 4,096)
        reps = -(-n // x.shape[0])
        x, y = x.repeat(reps, 1, 1, 1), y.repeat(reps)
    # augment=None: the loader's cost is benchmarks/bench_loader.py's business.
    return BatchLoader((x[:n], y[:n]), batch_size=batch, shuffle=True, augment=None, device=DEVICE,
                       seed=0)


def _epoch_images(bench_size, batch):
    return CPU_SIZE["n"] if bench_size == "cpu" else GPU_SIZE["batches_per_epoch"] * batch


# ----------------------------------------------------------------------------------- models
_WARM: dict = {}


def _new_model(name, in_channels):
    torch.manual_seed(0)
    return models.create(name, num_classes=10, in_channels=in_channels).to(DEVICE)


def warm_state(name, data, bench_size):
    """The weights after a few epochs of plain AT from seed 0 over all of ``data`` (cpu: 2 epochs
    of the 512 digits, lr 0.05; gpu: 5 epochs of the 4,000/4,096 CIFAR-shaped images, lr 0.1,
    bf16 autocast for speed), batch 128; computed once per model."""
    if name not in _WARM:
        cpu = bench_size == "cpu"
        model = _new_model(name, data["in_channels"])
        opt = torch.optim.SGD(model.parameters(), lr=0.05 if cpu else 0.1, momentum=0.9)
        tr = Trainer(model, opt, "at", eps=data["eps"], alpha=data["alpha"], steps=STEPS,
                     amp=None if cpu or DEVICE != "cuda" else "bf16", device=DEVICE)
        loader = _loader(data, data["x"].shape[0], 128)
        for e in range(WARM_EPOCHS if cpu else WARM_EPOCHS_GPU):
            tr.train_epoch(loader, e)
        _WARM[name] = copy.deepcopy(model.state_dict())
    return _WARM[name]


def _make_trainer(model_name, data, bench_size, method, tau, dtype):
    model = _new_model(model_name, data["in_channels"])
    model.load_state_dict(warm_state(model_name, data, bench_size))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return Trainer(model, opt, method, eps=data["eps"], alpha=data["alpha"], steps=STEPS, tau=tau,
                   epochs=120 if tau == "dynamic" else None,
                   gair_start=0 if method in ("gairat", "gair-fat") else None,  # reweight now
                   amp="bf16" if dtype == "bf16" else None, device=DEVICE)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- the epochs
def test_train_epoch(benchmark, bench_size, data, config, case):
    model_name, batch, dtype = config
    case_id, method, tau = case
    n = _epoch_images(bench_size, batch)
    loader = _loader(data, n, batch)
    rounds = CPU_SIZE["rounds"] if bench_size == "cpu" else GPU_SIZE["rounds"]
    if tau == "dynamic":
        rounds = len(DYNAMIC_EPOCHS)
    state = {"round": 0, "rows": []}

    def setup():
        torch.manual_seed(0)
        tr = _make_trainer(model_name, data, bench_size, method, tau, dtype)
        if DEVICE == "cuda":  # untimed warm-up (cuDNN algorithm choice, allocator), then reset
            x, y = next(iter(loader))
            tr.train_step(x, y)
            tr = _make_trainer(model_name, data, bench_size, method, tau, dtype)
            torch.manual_seed(0)
        epoch = DYNAMIC_EPOCHS[state["round"] % len(DYNAMIC_EPOCHS)] if tau == "dynamic" else 0
        state["round"] += 1
        _sync()
        return (tr, epoch), {}

    def epoch_fn(tr, epoch):
        row = tr.train_epoch(loader, epoch)  # synchronises CUDA itself
        state["rows"].append(row)
        return row

    benchmark.group = (f"train_epoch {data['name'].split(' (')[0]}: {model_name}, batch {batch}, "
                       f"{dtype}, {n} images, K={STEPS}, {DEVICE}")
    row = benchmark.pedantic(epoch_fn, setup=setup, rounds=rounds, iterations=1)
    rows = state["rows"]
    bp = sum(r["bp_avg"] for r in rows) / len(rows)
    bp_exec = sum(r["bp_executed_avg"] for r in rows) / len(rows)
    benchmark.extra_info.update(
        method=method, tau=tau if tau is not None else "", model=model_name,
        device=DEVICE if DEVICE == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        dtype=dtype, batch=batch, data=data["name"], n_images=n, baseline=case_id == "at",
        bp=round(bp, 4), bp_executed=round(bp_exec, 4), bp_saved=round(100 * (1 - bp / STEPS), 2))
    if tau == "dynamic":
        benchmark.extra_info["bp_by_round"] = [round(r["bp_avg"], 4) for r in rows]
        benchmark.extra_info["tau_by_round"] = [r["tau"] for r in rows]
    if benchmark.stats is not None:  # None under --benchmark-disable (one plain call)
        benchmark.extra_info["images_per_sec"] = round(n / benchmark.stats.stats.median, 1)
    # The counts are right: PGD-K does K updates per image, FAT at most K, never more.
    assert row["bp_avg"] <= STEPS + 1e-9 and row["bp_executed_avg"] <= STEPS + 1e-9
    if method in ("at", "trades"):
        assert row["bp_avg"] == pytest.approx(STEPS)
    if method == "gairat":
        assert row["bp_avg"] == pytest.approx(STEPS)  # GA-PGD runs all K steps (κ counts them)
    if tau == 0 or tau == 1:
        assert row["bp_avg"] < STEPS  # a half-trained model: some images do stop early


# ----------------------------------------------------------------------------------- the BP curve
@pytest.mark.benchmark(group="bp_curve: digits, tiny (CI smoke run of benchmarks/bp_curve.py)")
def test_bp_curve_tiny(benchmark, tmp_path, bench_size):
    from benchmarks import bp_curve

    png = tmp_path / "bp_curve.png"
    result = benchmark.pedantic(bp_curve.run, kwargs=dict(epochs=2, train_samples=128,
                                                          eval_samples=32, out_png=png,
                                                          device="cpu", verbose=False),
                                rounds=1, iterations=1)
    assert (tmp_path / "bp_curve.json").is_file()
    curves = result["runs"]
    assert [c["label"] for c in curves] == [label for label, _, _ in bp_curve.RUNS]
    at = next(c for c in curves if c["method"] == "at")
    assert all(b == pytest.approx(10.0) for b in at["bp_avg"])
    for c in curves:
        assert len(c["bp_avg"]) == 2
        if c["method"] == "fat":
            assert all(b < 10.0 for b in c["bp_avg"])
    if result.get("png"):
        assert png.is_file() and png.stat().st_size > 0
    benchmark.extra_info.update({f"bp_{c['label']}": round(c["mean_bp"], 3) for c in curves})
    benchmark.extra_info["device"] = "cpu"
