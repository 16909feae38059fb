"""What the early-stop bookkeeping and compaction cost inside an attack, on the CPU (issue #11 §7):

    python -m benchmarks.compaction_cost [--data mnist] [--threads 1] [--rounds 5]

Runs FAT's PGD-10-τ (τ = 0, 1; compacted) on the set-up of ``benchmarks/attack_speed.py`` under the
torch profiler and sums the self time of every ``fastadv::*`` op (the steps, the early-stop update,
the compaction plan and the row moves) against the attack's wall time: the share of an attack that
is fastadv's own work rather than the model's. Medians over ``--rounds`` runs; the JSON goes to
``benchmarks/results/compaction_cost_cpu_<data>.json``. On the GPU, ``benchmarks/gpu_check.py attack``
measures the same share (``outside_model_pct``, launches and host reads included).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.attack_speed import RESULTS, build
from fastadv import attacks


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("digits", "mnist"), default="mnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = build("cpu", data=args.data)
    rows = []
    for tau in (0, 1):
        atk = attacks.EarlyStopPGD(s["model"], eps=s["eps"], alpha=s["alpha"], steps=10, tau=tau)
        atk.run(s["x"], s["y"])  # warm-up
        wall, own, checks = [], [], 0
        for _ in range(args.rounds):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                res = atk.run(s["x"], s["y"])
                wall.append(time.perf_counter() - t0)
            own.append(sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("fastadv::")) / 1e6)
            checks = int(res.checks.max())
        w, o = statistics.median(wall), statistics.median(own)
        rows.append(dict(tau=tau, attack_ms=w * 1e3, fastadv_ops_ms=o * 1e3, share_pct=100 * o / w, checks=checks,
                         us_per_check=o / checks * 1e6))
        print(f"τ = {tau}: attack {w * 1e3:.1f} ms, fastadv ops {o * 1e3:.2f} ms ({100 * o / w:.2f} %), "
              f"{checks} checks, {o / checks * 1e6:.0f} µs per check")
    out = dict(data=s["data"], model=s["model_name"], batch=s["batch"], threads=torch.get_num_threads(),
               torch=torch.__version__, rows=rows)
    path = RESULTS / f"compaction_cost_cpu_{args.data}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
