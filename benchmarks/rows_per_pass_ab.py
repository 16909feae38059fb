"""The attacks' pass size and a channels_last model, A/B (README, "Evaluating with
AutoAttack" and "Evaluating"): at eps = 0.3 on the first correctly classified MNIST test points of
the benchmark's AT model (most stay robust, so nearly every row runs every iteration), three
variants, interleaved in rotating order, 3 rounds, 1 thread: the whole batch in one pass
(rows_per_pass = the points), the CPU default of the evaluations for MNIST (64 rows at most a pass), and
that default with the model and points in channels_last. The model is the one
``benchmarks/autoattack_compare.py`` trains and caches (run it first).

    # AutoAttack's APGD-T (1 target, 100 steps) and Square (500 queries), 216 points:
    python -m benchmarks.rows_per_pass_ab benchmarks/results/rows_per_pass_ab_mnist_cpu.json
    # fastadv.evaluate's PGD-20 and C&W-30 (alpha = eps/4), one evaluation batch of 256 points:
    python -m benchmarks.rows_per_pass_ab benchmarks/results/rows_per_pass_ab_pgd_mnist_cpu.json \
        --attacks pgd20 cw30 --points 256
"""
import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
import torch  # noqa: E402
from fastadv.models import create  # noqa: E402
from fastadv.attacks import APGDT, CW, PGD, Square  # noqa: E402
from shared_data import build_mnist, shared_data_dir  # noqa: E402
from fastadv.data import load_dataset  # noqa: E402

CACHED = REPO / "benchmarks" / "results" / ".cache" / "aa_mnist_at_eps0.3.pt"


def _still_classified(m, x_adv, y):
    with torch.no_grad():
        return m(x_adv).argmax(1) == y


# Each attack: (model, x, y, rows_per_pass) -> bool [N], the points it left robust.
ATTACKS = {
    "apgd-t": lambda m, x, y, r: APGDT(m, eps=0.3, n_target_classes=1, rows_per_pass=r).run(x, y).robust,
    "square": lambda m, x, y, r: Square(m, eps=0.3, queries=500, rescale_schedule=False,
                                        rows_per_pass=r).run(x, y).robust,
    "pgd20": lambda m, x, y, r: _still_classified(m, PGD(m, eps=0.3, alpha=0.075, steps=20, rows_per_pass=r)(x, y), y),
    "cw30": lambda m, x, y, r: _still_classified(m, CW(m, eps=0.3, steps=30, rows_per_pass=r)(x, y), y),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=str(REPO / "benchmarks" / "results" / "rows_per_pass_ab_mnist_cpu.json"))
    p.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=["apgd-t", "square"])
    p.add_argument("--points", type=int, default=216)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out_path, n = args.out, args.points
    torch.set_num_threads(1)
    if not CACHED.exists():
        print(f"no {CACHED}: run python -m benchmarks.autoattack_compare --points 20 first (it trains "
              f"and caches the model)", file=sys.stderr)
        return 1
    model = create("small_cnn", num_classes=10, in_channels=1)
    model.load_state_dict(torch.load(CACHED, weights_only=True))
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        build_mnist(shared_data_dir(), Path(tmp))
        test = load_dataset("mnist", data_dir=tmp, split="test", download=False, verify=False)
    x = test.images[:2 * n].float().div(255)
    x = x[:, None] if x.dim() == 3 else x
    y = test.labels[:2 * n].long()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:n], y[ok][:n]
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    variants = {"whole": (model, x, n), "default64": (model, x, 64), "default64+channels_last": (cl, xc, 64)}
    out = {"points": int(x.shape[0]), "torch": torch.__version__, "threads": 1, "machine": platform.platform(),
           "processor": _cpu_name(), "results": {}}
    for an in args.attacks:
        make = ATTACKS[an]
        t, robust = {k: [] for k in variants}, {}
        names = list(variants)
        for rep in range(3):
            for k in names[rep % 3:] + names[:rep % 3]:  # the order rotates round by round
                m, xx, r = variants[k]
                torch.manual_seed(0)  # PGD's and C&W's random starts (the others seed themselves)
                t0 = time.perf_counter()
                robust[k] = make(m, xx, y, r)
                t[k].append(time.perf_counter() - t0)
        base = statistics.median(t["whole"])
        out["results"][an] = {k: {"seconds": t[k], "median": statistics.median(t[k]), "speedup_vs_whole": base / statistics.median(t[k]),
                                  "robust": int(robust[k].sum()), "same_robust_as_whole": bool((robust[k] == robust["whole"]).all())} for k in variants}
        for k in variants:
            r = out["results"][an][k]
            print(f"{an} {k:24s} median {r['median']:.1f} s  {r['speedup_vs_whole']:.2f}x  robust {r['robust']} same {r['same_robust_as_whole']}", flush=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
