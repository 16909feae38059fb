"""Evidence for issue #13 item 8: every training method on real MNIST, on the CPU.

One row per method (natural and PGD-20 accuracy after the last epoch, BPs, training seconds) and
the per-epoch BP curves of AT, FAT and DAT (DAT's FOSC threshold falls over the run, so its BPs
rise; FAT's τ = 1 stops early; AT pays K = 10). MNIST from ``../shared/data``; small CNN, ε, α =
ε/4, K = 10, SGD 0.9 with a constant lr, the same data order for every method (seed 0).

    python -m benchmarks.methods_evidence [--train 4000 --epochs 4 --test 500 --eps 0.1]
    python -m benchmarks.methods_evidence --dataset cifar10 --device cuda --train 4000 \
        --epochs 2 --test 500 --eps 0.031 --out benchmarks/results/gpu/methods_cifar10

(CIFAR-10: the 4,000 lossless training images and 1,000 test images of ``../shared/data``,
PreActResNet-18.) Writes ``benchmarks/results/methods_mnist_cpu.md``, ``.json`` (every epoch's row) and ``.png``
(the BP curves). Methods whose schedules act over tens of epochs (CAT's curriculum, NoiLIn's rate:
a 10-epoch window) show only their first stage in a short run; the table says so.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

RUNS = [("standard", {}), ("at", {}), ("fat", {"tau": 1}), ("dat", {}), ("cat", {}),
        ("trades", {}), ("fat-trades", {"tau": 1}), ("mart", {}), ("fat-mart", {"tau": 1}),
        ("gairat", {}), ("gair-fat", {"tau": 1}), ("gair-rst", {}), ("noilin-at", {}),
        ("noilin-trades", {})]
TIMING = ("seconds", "images_per_sec", "eval_seconds")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=4000, help="training images (first N)")
    p.add_argument("--test", type=int, default=500, help="test images evaluated")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--methods", nargs="*", default=None, help="a subset, e.g. at fat dat")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "methods_mnist_cpu"))
    args = p.parse_args(argv)

    import torch
    import fastadv
    from fastadv.reports import pyplot
    from shared_data import build_cifar10_batches, build_mnist, shared_data_dir

    root = shared_data_dir()
    if root is None:
        print("no ../shared/data: nothing to do", file=sys.stderr)
        return 1
    runs = [r for r in RUNS if not args.methods or r[0] in args.methods]
    results = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        (build_mnist if args.dataset == "mnist" else build_cifar10_batches)(root, Path(tmp))
        for method, extra in runs:
            r = fastadv.train(method, dataset=args.dataset, data_dir=tmp, download=False,
                              verify_data=False,  # rebuilt files: not the official checksums
                              epochs=args.epochs, train_samples=args.train,
                              eval_samples=args.test, eval_every=args.epochs, lr=args.lr,
                              lr_schedule="constant", eps=args.eps, alpha=args.eps / 4,
                              batch_size=args.batch_size, seed=0, device=args.device,
                              out_dir=os.path.join(tmp, f"run-{method}"), progress=False,
                              verbose=False, **extra)
            h = r.history
            row = {"method": method + "".join(f" {k}={v}" for k, v in extra.items()),
                   "nat": h[-1]["test_nat_acc"], "pgd20": h[-1]["test_pgd20_acc"],
                   "bp": sum(x["bp_avg"] for x in h) / len(h),
                   "bp_exec": sum(x["bp_executed_avg"] for x in h) / len(h),
                   "train_s": sum(x["seconds"] for x in h),
                   "history": [{k: v for k, v in x.items() if k not in TIMING} for x in h]}
            results.append(row)
            print(f"{row['method']}: nat {row['nat']:.2f} pgd20 {row['pgd20']:.2f} bp {row['bp']:.2f} "
                  f"({row['train_s']:.0f} s)", flush=True)
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.platform()} ({platform.machine()})",
            "command": "python -m benchmarks.methods_evidence " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "settings": vars(args), "wall_s": round(time.perf_counter() - t_all, 1)}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in results:
        if row["method"].split()[0] in ("at", "fat", "dat", "cat", "gair-fat"):
            ax.plot([x["epoch"] for x in row["history"]], [x["bp_avg"] for x in row["history"]],
                    marker="o", label=row["method"])
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel("BP: PGD updates per training image")
    ax.set_title(f"{args.dataset}, {args.train} images, ε = {args.eps:g}, K = 10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    lines = [
        f"# Every training method on {args.dataset}, {args.device} (issue #13 item 8)", "",
        f"Real {args.dataset} (`../shared/data`), the first {args.train} training images, "
        f"{args.epochs} epochs, {'small CNN' if args.dataset == 'mnist' else 'PreActResNet-18'}, ε = {args.eps:g}, α = ε/4, K = 10, batch {args.batch_size}, SGD lr "
        f"{args.lr} (constant) momentum 0.9, seed 0; natural and PGD-20 (α = ε/4) accuracy on the "
        f"first {args.test} test images after the last epoch. BP = PGD updates per training image "
        f"per epoch, averaged over the epochs (PGD-10 = 10.00); executed = forward/backward passes "
        f"of the attack. torch {meta['torch']}, {meta['threads']} CPU threads, {meta['machine']}, "
        f"{meta['date']}. Command: `{meta['command']}`. Per-epoch rows: `{Path(args.out).name}.json`;"
        f" BP curves: `{Path(args.out).name}.png`.", "",
        "| method | natural % | PGD-20 % | BP avg | BP executed avg | BP per epoch | train s |",
        "|---|---:|---:|---:|---:|---|---:|"]
    for row in results:
        per_epoch = " ".join(f"{x['bp_avg']:.2f}" for x in row["history"])
        lines.append(f"| {row['method']} | {row['nat']:.2f} | {row['pgd20']:.2f} | {row['bp']:.2f} | "
                     f"{row['bp_exec']:.2f} | {per_epoch} | {row['train_s']:.0f} |")
    lines += ["", f"Total wall time {meta['wall_s']:.0f} s. BP counts are exact; the seconds are "
                  f"wall time" + (" on a shared 2-core machine (noisy)." if args.device == "cpu"
                                   else ".")]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
