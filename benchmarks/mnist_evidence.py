"""Evidence for issue #4: AT vs FAT (τ = 0, 1, 2) vs GAIRAT vs GAIR-FAT on real MNIST, on the CPU.

MNIST comes from ``../shared/data`` (rebuilt into official idx files by ``tests/shared_data.py``).
Small CNN, ε = 0.3, α = 0.075, K = 10, SGD(0.9), a few epochs on a training subset (2 shared CPU
cores); natural and PGD-20 accuracy on the first ``--test`` test images, and the training BPs.

    python benchmarks/mnist_evidence.py [--epochs 3 --train 10000 --test 1000 --out FILE.md]
    python -m benchmarks.mnist_evidence --epochs 3 --train 6000 --test 500 \
        --out benchmarks/results/mnist_evidence_cpu.md

The Markdown table records the date, torch version, machine and CPU threads; ``train s`` is wall
time of the training epochs only (no evaluation), so it is noisy on a shared machine. The last
line checks FAT's claim: every FAT run's average BP is below AT's (10.00 for PGD-10).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

RUNS = [("at", None), ("fat", 0), ("fat", 1), ("fat", 2), ("gairat", None), ("gair-fat", 1)]


def _command(argv) -> str:
    """The command line that reproduces the run (without --note's text)."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "--note" in args:
        i = args.index("--note")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--note=")]
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + \
        "python -m benchmarks.mnist_evidence " + " ".join(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train", type=int, default=10000, help="training images (first N)")
    p.add_argument("--test", type=int, default=1000, help="test images evaluated")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-schedule", default="piecewise", help="constant | piecewise | cosine | fat")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", default=None, help="e.g. at fat:1 gairat")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mnist_evidence_cpu.md"))
    p.add_argument("--note", default="", help="a sentence added under the table (e.g. machine load)")
    args = p.parse_args(argv)

    import torch
    import fastadv
    from shared_data import build_mnist, shared_data_dir

    root = shared_data_dir()
    if root is None:
        print("no ../shared/data: nothing to do", file=sys.stderr)
        return 1
    runs = RUNS if not args.methods else [
        (m.split(":")[0], int(m.split(":")[1]) if ":" in m else None) for m in args.methods]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_mnist(root, Path(tmp))
        for method, tau in runs:
            t0 = time.perf_counter()
            r = fastadv.train(method=method, tau=tau, dataset="mnist", data_dir=tmp, download=False,
                              epochs=args.epochs, train_samples=args.train, eval_samples=args.test,
                              eval_every=args.epochs, lr=args.lr, lr_schedule=args.lr_schedule,
                              eps=args.eps, alpha=args.eps / 4,
                              batch_size=args.batch_size, seed=args.seed, device="cpu",
                              out_dir=os.path.join(tmp, f"run-{method}-{tau}"), progress=False)
            h = r.history
            rows.append({
                "method": method + (f" τ={tau}" if tau is not None else ""),
                "nat": h[-1]["test_nat_acc"], "pgd20": h[-1]["test_pgd20_acc"],
                "bp": sum(x["bp_avg"] for x in h) / len(h),
                "bp_exec": sum(x["bp_executed_avg"] for x in h) / len(h),
                "bp_last": h[-1]["bp_avg"],
                "train_s": sum(x["seconds"] for x in h), "wall_s": time.perf_counter() - t0})
    lines = [
        "# MNIST on the CPU: AT vs FAT vs GAIRAT (issue #4 evidence)", "",
        f"Real MNIST (`../shared/data`, rebuilt to idx files), first {args.train} training images, "
        f"{args.epochs} epochs, small CNN, ε = {args.eps:g}, α = ε/4, K = 10, batch {args.batch_size}, "
        f"SGD lr {args.lr} momentum 0.9 "
        f"({args.lr_schedule} schedule), seed {args.seed}. Test: natural and PGD-20 (α = ε/4, uniform start) "
        f"accuracy on the first {args.test} MNIST test images after the last epoch. "
        f"BP = PGD updates per training image per epoch (PGD-10 = 10.00), averaged over epochs; "
        f"executed = backward passes run. torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {platform.platform()} "
        f"({platform.processor() or platform.machine()}), "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}. Command: `{_command(argv)}`.", "",
        "| method | natural % | PGD-20 % | BP avg | BP executed avg | BP last epoch | train s |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['nat']:.2f} | {r['pgd20']:.2f} | {r['bp']:.2f} | "
                     f"{r['bp_exec']:.2f} | {r['bp_last']:.2f} | {r['train_s']:.0f} |")
    at = next((r for r in rows if r["method"] == "at"), None)
    fat = [r for r in rows if r["method"].startswith("fat")]
    if at is not None and fat:
        ok = all(r["bp"] < at["bp"] for r in fat)
        each = ", ".join(f"{r['method']}: {r['bp']:.2f}" for r in fat)
        lines += ["", f"FAT's BP avg below AT's ({at['bp']:.2f}): **{'yes' if ok else 'NO'}** ({each})."]
    total = sum(r["wall_s"] for r in rows)
    lines += ["", f"Total wall time {total:.0f} s (training + evaluation)."]
    if args.note:
        lines += ["", args.note]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
