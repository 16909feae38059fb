"""The demo's wall time with 1 and with 2 torch threads (`make demo`'s command, 20 epochs of FAT
on the bundled digits), as interleaved A/B pairs in fresh processes; medians and their ratio.

    python -m benchmarks.demo_threads [--pairs 3] [--threads 1 2] [--out benchmarks/results/demo_threads_cpu.json]
    python -m benchmarks.demo_threads --busy 1 --epochs 5 --pairs 2 --out benchmarks/results/demo_threads_busy_cpu.json

``--busy N`` keeps N other processes spinning on the CPU meanwhile (a machine busy with other
work: on 2 cores, one busy process leaves one core to the demo).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_demo(threads: int, out_dir: str, epochs=None) -> float:
    cmd = [sys.executable, "-m", "fastadv", "train", "--method", "fat", "--tau", "1", "--threads",
           str(threads), "--out-dir", out_dir, "--overwrite", "--no-progress", "--no-verbose"]
    cmd += ["--epochs", str(epochs)] if epochs else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int, nargs=2, default=[1, 2])
    p.add_argument("--epochs", type=int, default=None, help="default: the demo's 20")
    p.add_argument("--busy", type=int, default=0,
                   help="other processes kept spinning on the CPU meanwhile (default 0: idle)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_threads_cpu.json"))
    args = p.parse_args(argv)
    import torch
    times = {t: [] for t in args.threads}
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.pairs):
                order = args.threads if i % 2 == 0 else args.threads[::-1]  # alternate the first
                for t in order:
                    times[t].append(run_demo(t, os.path.join(tmp, f"t{t}"), args.epochs))
                    print(f"pair {i + 1}: {t} thread(s) {times[t][-1]:.1f} s", flush=True)
    finally:
        for proc in spin:
            proc.kill()
    a, b = args.threads
    med = {t: statistics.median(v) for t, v in times.items()}
    result = {"what": f"make demo's command (FAT tau=1, {args.epochs or 20} epochs, digits) wall "
                      f"seconds per process, {args.busy} other busy process(es) meanwhile",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "seconds": {str(t): v for t, v in times.items()},
              "median_seconds": {str(t): m for t, m in med.items()},
              f"ratio_{b}_over_{a}": med[b] / med[a]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
