"""Per-call overhead of the public ops on tiny tensors (where the Python layer, validation and
dispatch are the whole cost), for comparing two checkouts of fastadv in interleaved processes:

    python -m benchmarks.call_overhead --repos OLD_CHECKOUT NEW_CHECKOUT [--pairs 7]

Each pair runs one process per checkout (alternating which goes first), each timing ``--calls``
calls of every op on a 4×3×8×8 float32 batch, one thread; the report gives per op the median over
the pairs of each checkout's per-call microseconds and the ratio new/old. Without ``--repos`` it
times the checkout it runs from.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import fastadv.ops as ops
calls = int(sys.argv[2])
x_nat = torch.rand(4, 3, 8, 8); grad = torch.randn_like(x_nat); x = x_nat.clone()
logits = torch.randn(4, 10); y = torch.tensor([1, 2, 3, 4])
budget = torch.zeros(4, dtype=torch.int64); kappa = torch.zeros(4, dtype=torch.int64)
leave = torch.tensor([True, False, False, True]); dest, n = ops.compaction_plan(leave)
index = torch.arange(4); leavers = torch.zeros_like(x)
try:  # the leavers argument was called `out` before issue #11
    ops.compact_rows(x, dest, n, index, leavers=leavers); kw = "leavers"
except TypeError:
    kw = "out"
cases = {
    "linf_step_": lambda: ops.linf_step_(x, grad, x_nat, 0.03, 0.01, check=False),
    "l2_step_": lambda: ops.l2_step_(x, grad, x_nat, 0.5, 0.1, check=False),
    "random_start": lambda: ops.random_start(x_nat, 0.03, check=False),
    "early_stop_update_": lambda: ops.early_stop_update_(logits, y, budget, kappa),
    "compaction_plan": lambda: ops.compaction_plan(leave),
    "compact_rows": lambda: ops.compact_rows(x, dest, n, index, **{kw: leavers}),
    "linf_step_compact": lambda: ops.linf_step_compact(x, grad, x_nat, 0.03, 0.01, dest, n, index, leavers,
                                                       check=False),
}
out = {}
for name, fn in cases.items():
    for _ in range(200):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    out[name] = (time.perf_counter() - t0) / calls * 1e6
print(json.dumps(out))
"""


def run_once(repo: str, calls: int) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, repo, str(calls)], capture_output=True, text=True,
                         check=True, env={"FASTADV_NO_JIT": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repos", nargs=2, metavar=("OLD", "NEW"))
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)
    here = str(Path(__file__).resolve().parents[1])
    repos = args.repos or [here, here]
    runs = {0: [], 1: []}
    for p in range(args.pairs):
        order = (0, 1) if p % 2 == 0 else (1, 0)  # alternate which checkout goes first
        for i in order:
            runs[i].append(run_once(repos[i], args.calls))
    print(f"per-call µs, median of {args.pairs} interleaved process pairs, 4×3×8×8 fp32, 1 thread")
    print(f"{'op':22s} {'old':>8s} {'new':>8s} {'new/old':>8s}")
    table = {}
    for op in runs[0][0]:
        old = statistics.median(r[op] for r in runs[0])
        new = statistics.median(r[op] for r in runs[1])
        table[op] = dict(old_us=old, new_us=new, ratio=new / old)
        print(f"{op:22s} {old:8.1f} {new:8.1f} {new / old:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"repos": repos, "runs": runs, "table": table}, indent=1))


if __name__ == "__main__":
    main()
