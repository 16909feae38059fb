"""The demo's wall time with 1 and with 2 torch threads (`make demo`'s command, 20 epochs of FAT
on the bundled digits), as interleaved A/B pairs in fresh processes; medians and their ratio.

    python -m benchmarks.demo_threads [--pairs 3] [--threads 1 2] [--out benchmarks/results/demo_threads_cpu.json]
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


def run_demo(threads: int, out_dir: str) -> float:
    cmd = [sys.executable, "-m", "fastadv", "train", "--method", "fat", "--tau", "1", "--threads",
           str(threads), "--out-dir", out_dir, "--overwrite", "--no-progress", "--no-verbose"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int, nargs=2, default=[1, 2])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_threads_cpu.json"))
    args = p.parse_args(argv)
    import torch
    times = {t: [] for t in args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = args.threads if i % 2 == 0 else args.threads[::-1]  # alternate who goes first
            for t in order:
                times[t].append(run_demo(t, os.path.join(tmp, f"t{t}")))
                print(f"pair {i + 1}: {t} thread(s) {times[t][-1]:.1f} s", flush=True)
    a, b = args.threads
    med = {t: statistics.median(v) for t, v in times.items()}
    result = {"what": "make demo's command (FAT tau=1, 20 epochs, digits) wall seconds per process",
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
