"""The BP curve: PGD updates per training image in every epoch of FAT (τ = dynamic and τ = 1)
against PGD-10 AT on the bundled digits — the FAT paper's "BPs saved" figure, on the CPU.

    python -m benchmarks.bp_curve                       # 12 epochs, all 1,438 training digits
    python -m benchmarks.bp_curve --epochs 6 --train-samples 512 --out /tmp/bp.png

Each run is ``fastadv.train(method=..., dataset="digits", epochs=E, seed=0, progress=False)``
(small CNN, ε = 0.2, α = 0.05, K = 10, the digits defaults); ``TrainResult.history[e]["bp_avg"]``
is epoch e's BP (Σ PGD updates / N: AT = 10.00) and ``bp_executed_avg`` the backward passes run
(FAT's last, stopping check costs a gradient that updates nothing). τ = dynamic is the official
0 → 1 → 2 schedule scaled to E epochs. The PNG (default ``benchmarks/results/bp_curve_cpu.png``)
has the BP per epoch (solid: updates, dotted: executed) and the PGD-20 test accuracy per epoch; the
raw numbers go to a JSON beside it (same name, ``.json``).
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
DEFAULT_PNG = REPO / "benchmarks" / "results" / "bp_curve_cpu.png"

# (label, method, tau)
RUNS = [("AT (PGD-10)", "at", None), ("FAT τ=dynamic", "fat", "dynamic"), ("FAT τ=1", "fat", 1)]
COLORS = {"at": "tab:red", "dynamic": "tab:blue", 1: "tab:green"}


def run(epochs: int = 12, train_samples=None, eval_samples: int = 359, out_png=DEFAULT_PNG,
        device: str = "cpu", seed: int = 0, verbose: bool = True) -> dict:
    """Train the three runs, write ``out_png`` and its ``.json``; return the JSON's content
    (``runs``: one dict per run with per-epoch lists; ``png``: the path, or None without
    matplotlib)."""
    import fastadv
    import torch

    out_png = Path(out_png)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, tau in RUNS:
            t0 = time.perf_counter()
            r = fastadv.train(method=method, tau=tau, dataset="digits", epochs=epochs,
                              train_samples=train_samples, eval_samples=eval_samples, seed=seed,
                              device=device, progress=False, verbose=False,
                              out_dir=os.path.join(tmp, f"{method}-{tau}"))
            h = r.history
            runs.append({
                "label": label, "method": method, "tau": tau,
                "epoch": [row["epoch"] for row in h],
                "tau_by_epoch": [row["tau"] for row in h],
                "bp_avg": [row["bp_avg"] for row in h],
                "bp_executed_avg": [row["bp_executed_avg"] for row in h],
                "test_nat_acc": [row.get("test_nat_acc") for row in h],
                "test_pgd20_acc": [row.get("test_pgd20_acc") for row in h],
                "seconds": [row["seconds"] for row in h],
                "mean_bp": sum(row["bp_avg"] for row in h) / len(h),
                "mean_bp_executed": sum(row["bp_executed_avg"] for row in h) / len(h),
                "wall_s": time.perf_counter() - t0,
            })
            if verbose:
                c = runs[-1]
                print(f"{label:>14}: BP per epoch {' '.join(f'{b:.2f}' for b in c['bp_avg'])} "
                      f"(mean {c['mean_bp']:.2f}, executed {c['mean_bp_executed']:.2f}); final "
                      f"natural {c['test_nat_acc'][-1]}, PGD-20 {c['test_pgd20_acc'][-1]}; "
                      f"{c['wall_s']:.0f} s", flush=True)
    result = {
        "what": "BP (PGD updates per training image) per epoch, digits, small CNN, K=10",
        "epochs": epochs, "train_samples": train_samples, "eval_samples": eval_samples,
        "seed": seed, "device": device, "torch": torch.__version__,
        "machine": f"{platform.platform()} ({platform.processor() or platform.machine()}), "
                   f"{torch.get_num_threads()} threads",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": runs,
    }
    out_png.parent.mkdir(parents=True, exist_ok=True)
    result["png"] = str(out_png) if plot(result, out_png) else None
    out_png.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for c in result["runs"]:
        color = COLORS.get("at" if c["method"] == "at" else c["tau"], None)
        ax.plot(c["epoch"], c["bp_avg"], "-o", ms=3, color=color,
                label=f"{c['label']} (mean {c['mean_bp']:.2f})")
        if c["method"] != "at":
            ax.plot(c["epoch"], c["bp_executed_avg"], ":", color=color)
        accs = [(e, a) for e, a in zip(c["epoch"], c["test_pgd20_acc"]) if a is not None]
        if accs:
            ax2.plot(*zip(*accs), "-o", ms=3, color=color, label=c["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("BP: PGD updates per image (dotted: executed)")
    ax.set_ylim(0, 10.8)
    ax.set_title("BPs per epoch (PGD-10 AT = 10)", fontsize=10)
    ax.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("PGD-20 test accuracy %")
    ax2.set_title("robust accuracy", fontsize=10)
    ax2.legend(fontsize=8)
    n = result["train_samples"] or "all"
    fig.suptitle(f"digits ({n} train images), small CNN, K=10 · torch {result['torch']} · "
                 f"{result['device']} · {result['date'][:10]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bp_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-samples", type=int, default=None, help="first N training digits (default all)")
    p.add_argument("--eval-samples", type=int, default=359, help="test digits for PGD-20 (359 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_PNG, help="PNG path (the JSON goes beside it)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    r = run(args.epochs, args.train_samples, args.eval_samples, args.out, args.device, args.seed)
    print(f"wrote {args.out.with_suffix('.json')}" + (f" and {r['png']}" if r["png"] else
                                                       " (no matplotlib: no PNG)"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
