"""The pass size on the CPU, at the level of one attack step (README, "Evaluating with AutoAttack";
``fastadv.attacks.base.default_rows_per_pass``): forward + input gradient of 256 random rows,
split into equal passes of ``cap`` rows whose logits are joined, as an evaluation attack runs
them. Randomly initialised models, eval mode: the digits CNN on 1×8×8, the MNIST CNN on 1×28×28
and PreActResNet-18 on 3×32×32. The caps run interleaved in rotating order; medians.

    python -m benchmarks.pass_size_micro benchmarks/results/pass_size_micro_cpu.json
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fastadv.attacks.base import default_rows_per_pass  # noqa: E402
from fastadv.models import create  # noqa: E402

ROWS = 256
# name: (model factory, one row's shape, rounds)
CASES = {
    "digits": (lambda: create("small_cnn", num_classes=10, in_channels=1), (1, 8, 8), 6),
    "mnist": (lambda: create("small_cnn", num_classes=10, in_channels=1), (1, 28, 28), 4),
    "cifar": (lambda: create("preact_resnet18", num_classes=10), (3, 32, 32), 5),
}


def step(model, x, y, cap: int) -> None:
    """One attack step's model work: the passes' logits joined, the loss's input gradient."""
    xr = x.clone().requires_grad_(True)
    logits = torch.cat([model(part) for part in xr.tensor_split(-(-x.shape[0] // cap))])
    F.cross_entropy(logits, y, reduction="sum").backward()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=str(REPO / "benchmarks" / "results" / "pass_size_micro_cpu.json"))
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = {"rows": ROWS, "torch": torch.__version__, "machine": platform.platform(), "results": {}}
    for name in args.cases:
        make, shape, rounds = CASES[name]
        torch.manual_seed(0)
        model = make().eval()
        x, y = torch.rand(ROWS, *shape), torch.randint(0, 10, (ROWS,))
        default = default_rows_per_pass(x)
        caps = sorted({ROWS, 64, 16, min(default, ROWS)}, reverse=True)
        for threads in args.threads:
            torch.set_num_threads(threads)
            step(model, x, y, ROWS)  # warm-up
            t = {c: [] for c in caps}
            for r in range(rounds):
                for c in caps[r % len(caps):] + caps[:r % len(caps)]:  # the order rotates
                    t0 = time.perf_counter()
                    step(model, x, y, c)
                    t[c].append(time.perf_counter() - t0)
            one = statistics.median(t[ROWS])
            res = {str(c): {"seconds": v, "median": statistics.median(v),
                            "speedup_vs_one_pass": one / statistics.median(v)} for c, v in t.items()}
            out["results"][f"{name}/threads={threads}"] = {"default_rows_per_pass": default, "caps": res}
            print(f"{name} {threads} thread(s), default {default}: "
                  + ", ".join(f"{c} rows {r['median']:.3f} s ({r['speedup_vs_one_pass']:.2f}x)"
                              for c, r in res.items()), flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
