"""AutoAttack: fastadv against the official code (fra31/auto-attack) and torchattacks (issue #12).

An adversarially trained MNIST model (fastadv's AT, small CNN, ε = 0.3; trained here on the first
``--train`` images unless ``--model`` holds one), the first ``--points`` test images, one CPU
thread. The two AutoAttacks run the standard version in lockstep: for each attack in turn, the
official code and fastadv each attack their own still-robust points (the order alternating from one
attack to the next), so the machine's load hits both alike; the per-attack seconds, robust accuracy
and fastadv's forward/backward passes are recorded. torchattacks' ``AutoAttack`` (not the standard
version: its own settings) runs once after.

The official code is not on PyPI: install it (``pip install git+https://github.com/fra31/auto-attack``)
or put its folder on PYTHONPATH; without it the benchmark says so and times fastadv alone. On a
machine without network (the GPU check), put its ``autoattack`` package under ``.official/`` in the
repository (git-ignored; never committed): ``scripts/gpu_check.sh`` then adds it to PYTHONPATH.

    python -m benchmarks.autoattack_compare --points 1000 --out benchmarks/results/autoattack_mnist_cpu
    python -m benchmarks.autoattack_compare --points 1000 --eps 0.35 --train-eps 0.3 \
        --out benchmarks/results/autoattack_mnist_eps0.35_cpu
    python -m benchmarks.autoattack_compare --dataset cifar10 --device cuda --points 1000 \
        --train 4000 --epochs 5 --no-torchattacks --out benchmarks/results/gpu/autoattack_cifar10
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

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def _model(args, tmp: Path):
    """The AT model: loaded from ``--model`` if it exists, else trained (and saved there): one
    natural epoch, then ``--epochs`` epochs of PGD-10 AT (α = ε/4) with ε rising linearly to its
    value, SGD(lr, momentum 0.9), batch 64 (CIFAR: 128), seed 0."""
    import torch
    from fastadv.data import BatchLoader, load_dataset
    from fastadv.models import create
    from fastadv.training import Trainer
    torch.manual_seed(0)
    mnist = args.dataset == "mnist"
    model = create("small_cnn" if mnist else "preact_resnet18", num_classes=10,
                   in_channels=1 if mnist else 3).to(args.device)
    if args.model and os.path.exists(args.model):
        model.load_state_dict(torch.load(args.model, weights_only=True, map_location=args.device))
        return model.eval()
    train = load_dataset(args.dataset, data_dir=str(tmp), split="train", download=False,
                         verify=False).subset(slice(0, args.train))  # the rebuilt subset files
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    # ε grows to its value over the AT epochs (AT at ε = 0.3 from a fresh model collapses to a
    # constant classifier in a few epochs).
    ramp = [args.train_eps * (e + 1) / args.epochs for e in range(args.epochs)]
    for method, eps in [("standard", args.train_eps)] + [("at", e) for e in ramp]:
        trainer = Trainer(model, opt, method, eps=eps, alpha=eps / 4, steps=10,
                          device=args.device, progress=False)
        trainer.fit(BatchLoader(train, batch_size=64 if mnist else 128, seed=0, device=args.device),
                    epochs=1, eval_every=0)
    model.eval()
    if args.model:
        os.makedirs(os.path.dirname(os.path.abspath(args.model)), exist_ok=True)
        torch.save(model.state_dict(), args.model)
    return model


def _official(model, eps, attack, device):
    from autoattack import AutoAttack as OfficialAA
    aa = OfficialAA(model, norm="Linf", eps=eps, seed=0, device=device, version="standard", verbose=False)
    aa.attacks_to_run = [attack]  # the standard version's settings, one attack
    return aa


def write_markdown(result: dict, path: str) -> None:
    """The per-attack table of a result (official, fastadv, their ratio) as Markdown."""
    runs = result["runs"]
    have_official = bool(runs.get("official"))
    lines = [f"# AutoAttack (standard, L∞, ε = {result['eps']:.4g}): fastadv against the official code", "",
             f"{result['points']} {result.get('dataset', 'mnist')} test points, clean accuracy "
             f"{result['clean']:.2%}; torch {result['torch']}, {result['threads']} thread(s), "
             f"{result['machine']}, {result['date']}. Each attack runs on the points still robust "
             f"after the previous ones; the codes take turns going first, attack by attack.", ""]
    m = result.get("model")
    if m:
        arch = "a small CNN" if result.get("dataset", "mnist") == "mnist" else "a PreActResNet-18"
        lines += [f"The model: `{m['path']}`, {arch} trained by this benchmark on {m['train_images']} training images: one natural "
                  f"epoch, then {m['at_epochs']} epochs of PGD-10 AT with ε rising to "
                  f"{m['train_eps']:.4g}, SGD lr {m['lr']:g}.", ""]
    control = next((k for k in runs if k.startswith("official_bs") and runs[k]), None)
    bs = control[len("official_bs"):] if control else None
    lines += [f"fastadv's rows per model pass: {result.get('rows_per_pass', 'all')}; the official "
              f"code's batch size 250" + (f" (and {bs} in the control)" if control else "") + ".", ""]
    extra_head = f" official bs={bs} s | its robust |" if control else ""
    lines += [
             "| attack | points in | official s | fastadv s | ratio | official robust | fastadv robust "
             "| fastadv fwd | fastadv bwd |" + extra_head,
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if control else "")]
    for attack, f in runs["fastadv"].items():
        o = runs["official"].get(attack, {}) if have_official else {}
        ratio = f"{o['seconds'] / f['seconds']:.2f}×" if o else "-"
        c = runs[control].get(attack, {}) if control else {}
        extra = (f" {c.get('seconds', float('nan')):.1f} | {c.get('robust_after', float('nan')):.2%} |"
                 if control else "")
        lines.append(f"| {attack} | {f['points_in']} | {o.get('seconds', float('nan')):.1f} | "
                     f"{f['seconds']:.1f} | {ratio} | {o.get('robust_after', float('nan')):.2%} | "
                     f"{f['robust_after']:.2%} | {f.get('forward', 0)} | {f.get('backward', 0)} |" + extra)
    if result.get("partial"):
        lines += ["", "(Partial: written after each attack; the run had not reached the end.)"]
    if have_official and (result.get("compaction_bound") or {}).get("max_speedup"):
        b = result["compaction_bound"]
        lines += ["", f"The floor for any exact method: the official code spends {b['floor_seconds']:.1f} s "
                      f"of its {result['official_seconds']:.1f} s on points that stay robust through the "
                      f"attack at hand (every one of their iterations must run), so dropping broken "
                      f"points can make it at most {b['max_speedup']:.2f}× faster; the rest must come "
                      f"from cheaper passes."]
    if have_official:
        tot_o, tot_f = result["official_seconds"], result["fastadv_seconds"]
        lines += ["", f"Total: official {tot_o:.1f} s, fastadv {tot_f:.1f} s ({tot_o / tot_f:.2f}× faster); "
                      f"robust accuracy official {result['official_robust']:.2%}, fastadv "
                      f"{result['fastadv_robust']:.2%}; the same points robust: "
                      f"{result['agree_point_for_point']}."]
    if control and result.get(f"{control}_seconds"):
        tot_c = result[f"{control}_seconds"]
        lines += ["", f"Control: the official code with bs={bs} took {tot_c:.1f} s ({tot_c / tot_f:.2f}× "
                      f"fastadv's time; {tot_o / tot_c:.2f}× faster than itself at bs=250), robust "
                      f"accuracy {result[f'{control}_robust']:.2%} (its random starts differ with the "
                      f"batch size: the official code seeds each batch)."]
    if "torchattacks" in result:
        t = result["torchattacks"]
        lines += ["", f"torchattacks {t['version']} `AutoAttack(version='standard')`: {t['seconds']:.1f} s, "
                      f"robust accuracy {t['robust']:.2%} (its own settings, not the official ones; "
                      f"run once on all the points after the pairs above, not interleaved)."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eps", type=float, default=None, help="default: 0.3 on MNIST, 8/255 on CIFAR-10")
    p.add_argument("--train-eps", type=float, default=None,
                   help="the AT model's training eps (default: --eps); evaluating above it makes "
                        "more points break inside the attacks")
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="a state dict to load, or where to save the trained "
                                                 "one (default: benchmarks/results/.cache/aa_<dataset>_at.pt)")
    p.add_argument("--no-torchattacks", action="store_true")
    p.add_argument("--rows-per-pass", type=int, default=None,
                   help="fastadv's rows per model pass (default: its own, 64 rows of MNIST on the CPU)")
    p.add_argument("--official-control-bs", type=int, default=None,
                   help="also run the official code with this bs (a third contender, in the same "
                        "lockstep): what tuning its batch size alone gives")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "autoattack_mnist_cpu"))
    args = p.parse_args(argv)
    if args.eps is None:
        args.eps = 0.3 if args.dataset == "mnist" else 8 / 255
    if args.train_eps is None:
        args.train_eps = args.eps
    if args.model is None:
        args.model = str(REPO / "benchmarks" / "results" / ".cache"
                         / f"aa_{args.dataset}_at_eps{args.train_eps:.4g}.pt")

    import torch
    torch.set_num_threads(args.threads)
    from fastadv.attacks import AutoAttack
    from fastadv.attacks.base import default_rows_per_pass
    from fastadv.data import load_dataset
    from shared_data import build_cifar10_batches, build_mnist, shared_data_dir
    root = shared_data_dir()
    if root is None:
        print("no ../shared/data: nothing to do", file=sys.stderr)
        return 1
    try:
        import autoattack  # noqa: F401
        have_official = True
    except ImportError:
        have_official = False
        print("the official AutoAttack (fra31/auto-attack) is not installed: timing fastadv alone",
              file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.dataset == "mnist":
            build_mnist(root, tmp)
        else:
            build_cifar10_batches(root, tmp)
        model = _model(args, tmp)
        test = load_dataset(args.dataset, data_dir=str(tmp), split="test", download=False, verify=False)
    x = test.images[:args.points].float().div(255) if test.images.dtype == torch.uint8 else test.images[:args.points]
    x, y = x.to(args.device), test.labels[:args.points].long().to(args.device)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    cpu_pass = default_rows_per_pass(x)
    control = f"official_bs{args.official_control_bs}" if args.official_control_bs and have_official else None
    who_all = ["fastadv", "official"] + ([control] if control else [])
    rows = {who: {} for who in who_all}
    robust = {who: clean.clone() for who in who_all}
    print(f"clean accuracy {float(clean.float().mean()):.2%} on {args.points} points", flush=True)
    for k, attack in enumerate(STANDARD):
        order = who_all[k % len(who_all):] + who_all[:k % len(who_all)]  # rotate who goes first
        for who in order:
            if who == "official" and not have_official:
                continue
            idx = robust[who].nonzero().flatten()
            t0 = time.perf_counter()
            if who.startswith("official"):
                adv = _official(model, args.eps, attack, args.device).run_standard_evaluation(
                    x[idx], y[idx], bs=args.official_control_bs if who == control else 250)
                with torch.no_grad():
                    still = model(adv).argmax(1) == y[idx]
                if args.device != "cpu":
                    torch.cuda.synchronize()
                extra = {}
            else:
                res = AutoAttack(model, eps=args.eps, attacks=[attack],
                                 rows_per_pass=args.rows_per_pass).run(x[idx], y[idx])
                if args.device != "cpu":
                    torch.cuda.synchronize()
                still = res.robust
                extra = {"forward": int(res.forward.sum()), "backward": int(res.backward.sum())}
            sec = time.perf_counter() - t0
            robust[who][idx[~still]] = False
            rows[who][attack] = dict(seconds=sec, points_in=int(idx.numel()),
                                     robust_after=float(robust[who].float().mean()), **extra)
            print(f"{who:8s} {attack:8s} {sec:8.1f} s  robust {rows[who][attack]['robust_after']:.2%}", flush=True)
        _save(args, model_info(args, clean, rows, robust, have_official, cpu_pass), partial=True)
    result = model_info(args, clean, rows, robust, have_official, cpu_pass)
    if not args.no_torchattacks:
        try:
            import torchattacks
            t0 = time.perf_counter()
            adv = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard",
                                          n_classes=10, seed=0)(x, y)
            with torch.no_grad():
                ta_robust = model(adv).argmax(1) == y
            result["torchattacks"] = {"seconds": time.perf_counter() - t0, "version": torchattacks.__version__,
                                      "robust": float(ta_robust.float().mean())}
        except ImportError:
            print("torchattacks is not installed: skipped", file=sys.stderr)
    _save(args, result, partial=False)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


def model_info(args, clean, rows, robust, have_official, cpu_pass=None) -> dict:
    """The run's record; ``cpu_pass``: fastadv's default rows per pass on the CPU for these points."""
    import torch
    result = {"points": args.points, "eps": args.eps, "dataset": args.dataset, "device": args.device,
              "device_name": torch.cuda.get_device_name(0) if args.device != "cpu" else platform.processor(), "clean": float(clean.float().mean()),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": f"{platform.platform()} ({platform.processor() or platform.machine()})",
              "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "runs": rows,
              "model": {"path": os.path.relpath(args.model, REPO), "train_images": args.train,
                        "at_epochs": args.epochs, "lr": args.lr, "train_eps": args.train_eps},
              "rows_per_pass": args.rows_per_pass or (f"{cpu_pass} (the CPU default)"
                                                      if args.device == "cpu" else "all"),
              "agree_point_for_point": (bool((robust["fastadv"] == robust["official"]).all())
                                        if have_official else None)}
    for who in rows:
        if rows[who]:
            result[f"{who}_seconds"] = sum(r["seconds"] for r in rows[who].values())
            result[f"{who}_robust"] = float(robust[who].float().mean())
    if rows["official"]:
        result["compaction_bound"] = compaction_bound(rows["official"], args.points)
    return result


def compaction_bound(official: dict, points: int) -> dict:
    """What compaction alone can save against the official code. Each official attack runs every
    iteration on every point it gets; a point that stays robust through it needs all of them in
    any exact method too. So the time an attack spends on its robust-after points,
    ``seconds · robust_after / points_in`` (its time split evenly over its points), is a floor."""
    floor = sum(r["seconds"] * r["robust_after"] * points / max(r["points_in"], 1)
                for r in official.values())
    total = sum(r["seconds"] for r in official.values())
    return {"floor_seconds": floor, "max_speedup": total / floor if floor else None}  # None: no floor


def _save(args, result: dict, partial: bool) -> None:
    """The JSON and the table, rewritten after every attack (a run cut short keeps its figures)."""
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    result = dict(result, partial=partial)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, args.out + ".md")


if __name__ == "__main__":
    sys.exit(main())
