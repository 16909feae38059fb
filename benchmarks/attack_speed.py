"""Does compaction turn saved backward passes into saved time? (issue #3)

    python -m benchmarks.attack_speed                 # CPU: small CNN on digits, batch 128
    python -m benchmarks.attack_speed --size gpu      # CUDA: PreActResNet-18, CIFAR-10-shaped, batch 512

Times, with ``time.perf_counter`` (warm-up, then the median of ``--repeats`` runs, the cases
interleaved round-robin so that a noisy machine slows them alike; CUDA synchronised inside the timed
region): PGD-10; FAT's early-stopped PGD-10-τ for τ = 0 and 1, compacted and masked
(``compact=False``); the port of the official per-sample loop (``benchmarks/official_loop.py``)
for the same τ; and torchattacks' PGD-10 (when installed: the baseline users would pick). For each early-stopped case it prints

- ``time ratio``  = t(case) / t(PGD-10),
- ``bp_exec ratio`` = bp_executed(case) / bp_executed(PGD-10) (backward passes actually run),
- ``time/bp_exec`` = the first over the second: the issue's target is ≤ 1.15 for the compacted
  attack (a masked attack runs every row and stays near time ratio 1: the point of comparison),
- the speed-up of fastadv's attack over the official loop at the same τ,
- the same ratios from each case's fastest run (``@min``: the steadier figure on a shared machine),

and writes everything (with torch/triton versions, the device and the thread count) to
``benchmarks/results/attack_speed_<size>.json``. This is a script, not a test: timings are
reported, never asserted in the test suite.

The model is trained briefly (seeded) so that early stops happen as in training; the trained
weights are cached in the system temp folder (``fastadv-bench/``). ``build()`` and ``cases()`` are
shared with ``benchmarks/bench_attacks.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from fastadv import attacks, models
from benchmarks.official_loop import official_earlystop

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


# ---------------------------------------------------------------------------- the set-up
def _train(model, x, y, steps, lr, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=g)
        xb, yb = x[idx].to(device), y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def _cached(model, key, train_fn):
    path = Path(tempfile.gettempdir()) / "fastadv-bench" / f"{key}.pt"
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu"))
            return model.eval()
        except Exception:  # a stale or partial cache: retrain
            pass
    train_fn(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


def _cifar_shaped():
    """CIFAR-10 lossless train/test images from the shared folder, or random CIFAR-shaped data."""
    try:
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from shared_data import cifar10_lossless, shared_data_dir
        root = shared_data_dir()
        if root is None:
            raise FileNotFoundError
        train, ytr, test, yte = cifar10_lossless(root)
        f = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255)
        return f(train), torch.from_numpy(ytr), f(test), torch.from_numpy(yte), "cifar10-lossless"
    except Exception:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1024, 3, 32, 32, generator=g)
        return x, torch.randint(0, 10, (1024,), generator=g), x, torch.randint(0, 10, (1024,), generator=g), "random"


def _mnist_test():
    from fastadv.data import load_dataset
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from shared_data import shared_data_dir
    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("MNIST needs the shared data folder (../shared/data)")
    return load_dataset("mnist", data_dir=str(root), split="test", download=False)


def build(size: str = "cpu", device: str = None, data: str = "digits") -> Dict:
    """The model, one batch, the attack budget and a description, for ``size`` ``cpu`` or ``gpu``
    (``data="mnist"``: the CPU size on MNIST 28×28, trained on test images 1000…9999, attacked on
    0…127, ε = 0.2, α = 0.05)."""
    device = device or ("cuda" if size == "gpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if size == "cpu" and data == "mnist":
        ds = _mnist_test()
        xs, ys = ds.float_images(), ds.labels
        model = models.create("small_cnn", in_channels=1, num_classes=10)
        model = _cached(model, "small_cnn_mnist_adam1e-3_60",
                        lambda m: _train(m, xs[1000:], ys[1000:], 60, 1e-3, 128, "cpu"))
        x, y = xs[:128], ys[:128]
        eps, alpha, data = 0.2, 0.05, "mnist (t10k 0..127)"
        name = "small_cnn"
    elif size == "cpu":
        from fastadv.data import load_dataset
        tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
        model = models.create("small_cnn", in_channels=1, num_classes=10)
        model = _cached(model, "small_cnn_digits_adam3e-3_40",
                        lambda m: _train(m, tr.float_images(), tr.labels, 40, 3e-3, 128, "cpu"))
        x, y = te.float_images()[:128], te.labels[:128]
        eps, alpha, data = 0.2, 0.05, "digits (test 0..127)"
        name = "small_cnn"
    else:
        xtr, ytr, xte, yte, data = _cifar_shaped()
        model = models.create("preact_resnet18", in_channels=3, num_classes=10).to(device)
        model = _cached(model, f"preact_resnet18_{data}_adam1e-3_300",
                        lambda m: _train(m, xtr, ytr, 300, 1e-3, 256, device))
        x, y = xte[:512], yte[:512]
        eps, alpha = 8 / 255, 2 / 255
        name = "preact_resnet18"
    model = model.to(device).eval()
    return dict(model=model, x=x.to(device), y=y.to(device), eps=eps, alpha=alpha, steps=K,
                device=device, size=size, model_name=name, data=data, batch=len(y))


def cases(s: Dict) -> Dict[str, Callable[[], Dict]]:
    """name → a callable running one attack on the set-up's batch and returning its counts."""
    m, x, y, eps, alpha = s["model"], s["x"], s["y"], s["eps"], s["alpha"]

    def fastadv_case(atk):
        def run():
            torch.manual_seed(0)
            r = atk.run(x, y)
            return dict(bp=r.bp, bp_executed=r.bp_executed, rows_computed=r.rows_computed)
        return run

    def official_case(tau):
        def run():
            r = official_earlystop(m, x, y, eps=eps, alpha=alpha, steps=K, tau=tau,
                                   random_start="uniform", generator=torch.Generator().manual_seed(0))
            # The official loop runs forward + backward at every check on every active row
            # (leavers included): rows_computed = Σ checks (its extra clean forward not counted).
            checks = torch.clamp(r.updates + 1, max=K)
            be = int(checks.sum())
            return dict(bp=r.bp, bp_executed=be, rows_computed=be)
        return run

    out = {"pgd10": fastadv_case(attacks.PGD(m, eps=eps, alpha=alpha, steps=K))}
    for tau in (0, 1, 2, 3):
        for compact in (True, False):
            tag = "compact" if compact else "masked"
            out[f"es_tau{tau}_{tag}"] = fastadv_case(
                attacks.EarlyStopPGD(m, eps=eps, alpha=alpha, steps=K, tau=tau, compact=compact))
    for tau in (0, 1):
        out[f"official_tau{tau}"] = official_case(tau)
    try:  # the library users would pick instead (PyPI; installed by `make setup`)
        import torchattacks
    except ImportError:
        return out
    baseline = torchattacks.PGD(m, eps=eps, alpha=alpha, steps=K, random_start=True)

    def torchattacks_case():
        torch.manual_seed(0)
        baseline(x, y)
        n = len(y)  # every sample: K updates, K forward/backward passes
        return dict(bp=n * K, bp_executed=n * K, rows_computed=n * K)
    out["torchattacks_pgd10"] = torchattacks_case
    return out


def timed(fn: Callable, device: str) -> Callable[[], Dict]:
    """``fn`` with a CUDA synchronisation inside (so that its time is the work's)."""
    if device.startswith("cuda"):
        def f():
            r = fn()
            torch.cuda.synchronize()
            return r
        return f
    return fn


# ---------------------------------------------------------------------------- the script
SPEED_CASES = ["pgd10", "es_tau0_compact", "es_tau0_masked", "es_tau1_compact", "es_tau1_masked",
               "official_tau0", "official_tau1"]


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("cpu", "gpu"), default=os.environ.get("FASTADV_BENCH_SIZE", "cpu"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the CPU target is for 2)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/attack_speed_<size>.json)")
    ap.add_argument("--data", choices=("digits", "mnist"), default="digits",
                    help="CPU size: the bundled 8×8 digits (default) or MNIST 28×28 from ../shared/data")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = build(args.size, data=args.data)
    all_cases = cases(s)
    fns = {k: timed(all_cases[k], s["device"]) for k in SPEED_CASES + ["torchattacks_pgd10"] if k in all_cases}
    counts = {k: fn() for k, fn in fns.items()}  # also the first warm-up
    for _ in range(args.warmup - 1):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():  # round-robin: drift on a shared machine hits every case alike
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base_t, base_be = med["pgd10"], counts["pgd10"]["bp_executed"]
    rows = []
    for k in fns:
        c = counts[k]
        row = dict(case=k, median_s=med[k], min_s=min(times[k]), times_s=times[k],
                   images_per_sec=s["batch"] / med[k], **c,
                   time_ratio=med[k] / base_t, bp_executed_ratio=c["bp_executed"] / base_be)
        row["time_over_bp_ratio"] = row["time_ratio"] / row["bp_executed_ratio"]
        # The same from the fastest run of each case: on a shared, loaded machine the minimum is the
        # steadier estimate of the work's own cost (other processes only ever add time).
        row["time_ratio_min"] = min(times[k]) / min(times["pgd10"])
        row["time_over_bp_ratio_min"] = row["time_ratio_min"] / row["bp_executed_ratio"]
        if k.startswith("es_") and k.endswith("_compact"):
            tau = k.split("_")[1]
            row["speedup_over_official"] = med[f"official_{tau}"] / med[k]
            row["speedup_over_official_min"] = min(times[f"official_{tau}"]) / min(times[k])
            row["meets_target_1.15"] = row["time_over_bp_ratio"] <= 1.15
            row["meets_target_1.15_min"] = row["time_over_bp_ratio_min"] <= 1.15
        if k == "torchattacks_pgd10":  # fastadv's PGD-10 against the library's (same work)
            row["fastadv_pgd10_speedup"] = med[k] / base_t
            row["fastadv_pgd10_speedup_min"] = min(times[k]) / min(times["pgd10"])
        rows.append(row)
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = None
    result = dict(
        size=args.size, device=s["device"],
        device_name=(torch.cuda.get_device_name(0) if s["device"].startswith("cuda")
                     else platform.processor() or platform.machine()),
        torch=torch.__version__, triton=triton_v, threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), load_avg=os.getloadavg() if hasattr(os, "getloadavg") else None,
        platform=platform.platform(), model=s["model_name"], data=s["data"], batch=s["batch"],
        eps=s["eps"], alpha=s["alpha"], steps=K, repeats=args.repeats, warmup=args.warmup,
        target="time ratio / bp_executed ratio <= 1.15 for the compacted early-stopped attack",
        cases=rows)
    print(f"{s['model_name']} on {s['data']}, batch {s['batch']}, {s['device']}, "
          f"{torch.get_num_threads()} threads, eps={s['eps']:.4g}, alpha={s['alpha']:.4g}, K={K}")
    print(f"{'case':16s} {'median s':>9s} {'min s':>7s} {'img/s':>7s} {'bp':>5s} {'bp_exec':>7s} "
          f"{'rows':>5s} {'bp ratio':>8s} {'t ratio':>7s} {'t/bp':>6s} {'t/bp@min':>8s} "
          f"{'vs official':>11s} {'@min':>6s}")
    for r in rows:
        vs = f"{r['speedup_over_official']:.2f}x" if "speedup_over_official" in r else ""
        vsm = f"{r['speedup_over_official_min']:.2f}x" if "speedup_over_official" in r else ""
        print(f"{r['case']:16s} {r['median_s']:9.4f} {r['min_s']:7.4f} {r['images_per_sec']:7.1f} "
              f"{r['bp']:5d} {r['bp_executed']:7d} {r['rows_computed']:5d} "
              f"{r['bp_executed_ratio']:8.3f} {r['time_ratio']:7.3f} {r['time_over_bp_ratio']:6.3f} "
              f"{r['time_over_bp_ratio_min']:8.3f} {vs:>11s} {vsm:>6s}")
    if result["load_avg"] and result["load_avg"][0] > 1.5 * result["cpu_count"]:
        print(f"note: load average {result['load_avg'][0]:.1f} on {result['cpu_count']} CPUs: "
              "other processes share this machine; the medians are noisy, compare the @min columns")
    ta = next((r for r in rows if r["case"] == "torchattacks_pgd10"), None)
    if ta is not None:
        print(f"fastadv PGD-10 vs torchattacks PGD-10: {ta['fastadv_pgd10_speedup']:.3f}x faster "
              f"(@min {ta['fastadv_pgd10_speedup_min']:.3f}x)")
    out = Path(args.out) if args.out else RESULTS / f"attack_speed_{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
