"""The evaluation attacks' pass size and a channels_last model, A/B (README, "Evaluating with
AutoAttack"): APGD-T (1 target, 100 steps) and Square (500 queries) at
eps = 0.3 on the first 216 correctly classified MNIST test points of the benchmark's AT model
(most stay robust, so nearly every row runs every iteration). Three variants, interleaved in
rotating order, 3 rounds, 1 thread: the whole batch in one pass (rows_per_pass=216), the CPU
default (64: passes of 54), and the default with the model and points in channels_last. The
model is the one ``benchmarks/autoattack_compare.py`` trains and caches (run it first).

    python -m benchmarks.rows_per_pass_ab benchmarks/results/rows_per_pass_ab_mnist_cpu.json
"""
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
from fastadv.attacks import APGDT, Square  # noqa: E402
from shared_data import build_mnist, shared_data_dir  # noqa: E402
from fastadv.data import load_dataset  # noqa: E402

CACHED = REPO / "benchmarks" / "results" / ".cache" / "aa_mnist_at_eps0.3.pt"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_path = args[0] if args else str(REPO / "benchmarks" / "results" / "rows_per_pass_ab_mnist_cpu.json")
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
    x = test.images[:400].float().div(255)
    x = x[:, None] if x.dim() == 3 else x
    y = test.labels[:400].long()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:216], y[ok][:216]
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    variants = {"whole": (model, x, 216), "default64": (model, x, None), "default64+channels_last": (cl, xc, None)}
    attacks = {"apgd-t": lambda m, r: APGDT(m, eps=0.3, n_target_classes=1, rows_per_pass=r),
               "square": lambda m, r: Square(m, eps=0.3, queries=500, rescale_schedule=False, rows_per_pass=r)}
    out = {"points": int(x.shape[0]), "torch": torch.__version__, "threads": 1, "machine": platform.platform(), "results": {}}
    for an, make in attacks.items():
        t, robust = {k: [] for k in variants}, {}
        names = list(variants)
        for rep in range(3):
            for k in names[rep % 3:] + names[:rep % 3]:  # the order rotates round by round
                m, xx, r = variants[k]
                t0 = time.perf_counter()
                res = make(m, r).run(xx, y)
                t[k].append(time.perf_counter() - t0)
                robust[k] = res.robust
        base = statistics.median(t["whole"])
        out["results"][an] = {k: {"seconds": t[k], "median": statistics.median(t[k]), "speedup_vs_whole": base / statistics.median(t[k]),
                                  "robust": int(robust[k].sum()), "same_robust_as_whole": bool((robust[k] == robust["whole"]).all())} for k in variants}
        for k in variants:
            r = out["results"][an][k]
            print(f"{an} {k:24s} median {r['median']:.1f} s  {r['speedup_vs_whole']:.2f}x  robust {r['robust']} same {r['same_robust_as_whole']}", flush=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
