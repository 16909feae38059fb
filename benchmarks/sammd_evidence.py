"""SAMMD against plain MMD: can a two-sample test tell adversarial data from natural? (issue #14)

A naturally trained classifier (MNIST: the small CNN, one epoch on the 60,000 training images;
CIFAR-10: PreAct ResNet-18, or ``--arch``, on the 4,000-image subset), its test split shuffled: 2n images are
attacked (PGD-20 with step ε/10 and a uniform start, as the SAMMD paper's data; FGSM), the others
form the natural pool. For each attack, ``fastadv.detect.detection_trials``: per trial each
detector is fitted on n natural + n adversarial images and tested on ``--test-sets`` fresh draws of
n held-out natural + n held-out adversarial images (power), and a second fit on natural vs natural
gives the type-I error, at α = 0.05. SAMMD (features + inputs, wild bootstrap) beside MMD-G (a
Gaussian kernel on the inputs, median bandwidth, permutation test).

    python -m benchmarks.sammd_evidence --out benchmarks/results/sammd_mnist_cpu
    python -m benchmarks.sammd_evidence --dataset cifar10 --arch small_cnn --epochs 30 --n 150 \
        --out benchmarks/results/sammd_cifar10_cpu
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


def _model(args, tmp: Path):
    """The natural classifier, loaded from ``--model`` or trained there (SGD 0.05, momentum 0.9)."""
    import torch
    from fastadv.data import BatchLoader, load_dataset
    from fastadv.models import create
    from fastadv.training import Trainer
    torch.manual_seed(0)
    mnist = args.dataset == "mnist"
    model = create(args.arch, num_classes=10, in_channels=1 if mnist else 3).to(args.device)
    if os.path.exists(args.model):
        model.load_state_dict(torch.load(args.model, weights_only=True, map_location=args.device))
        return model.eval()
    train = load_dataset(args.dataset, data_dir=str(tmp), split="train", download=False, verify=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    Trainer(model, opt, "standard", device=args.device, progress=False).fit(
        BatchLoader(train, batch_size=128, seed=0, device=args.device, augment=not mnist),
        epochs=args.epochs, eval_every=0)
    os.makedirs(os.path.dirname(os.path.abspath(args.model)), exist_ok=True)
    torch.save(model.state_dict(), args.model)
    return model.eval()


def write_markdown(result: dict, path: str) -> None:
    lines = [f"# SAMMD against plain MMD on {result['dataset']} (ε = {result['eps']:.4g})", "",
             f"Classifier: {result['model']} trained naturally, clean accuracy "
             f"{result['clean_accuracy']:.2%} on the attacked images. n = {result['n']} images per "
             f"sample; {result['trials']} fits per detector, each tested on {result['test_sets']} "
             f"fresh draws; rejection rates at α = {result['alpha']}. torch {result['torch']}, "
             f"{result['threads']} thread(s), {result['machine']}, {result['date']}; "
             f"{result['seconds']:.0f} s in all.", "",
             "| data | attack fools | detector | power (natural vs adversarial) | per fit |",
             "|---|---:|---|---:|---|"]
    for attack, r in result["attacks"].items():
        for name, d in r["detectors"].items():
            per = ", ".join(f"{v:.2f}" for v in d["power_per_trial"])
            lines.append(f"| {attack} | {r['fooled']:.1%} | {name} | {d['power']:.3f} | {per} |")
    lines += ["", "| detector | type-I error (natural vs natural) | per fit |", "|---|---:|---|"]
    for name, d in result["type_i"].items():
        per = ", ".join(f"{v:.2f}" for v in d["type_i_per_trial"])
        lines.append(f"| {name} | {d['type_i']:.3f} | {per} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eps", type=float, default=None, help="default: 0.3 on MNIST, 8/255 on CIFAR-10")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--test-sets", type=int, default=100)
    p.add_argument("--fit-steps", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=None, help="default: 1 on MNIST, 15 on CIFAR-10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arch", default=None, help="default: small_cnn on MNIST, preact_resnet18 on CIFAR-10")
    p.add_argument("--model", default=None, help="a state dict to load, or where to save the trained one")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sammd_mnist_cpu"))
    args = p.parse_args(argv)
    mnist = args.dataset == "mnist"
    args.eps = args.eps if args.eps is not None else (0.3 if mnist else 8 / 255)
    args.epochs = args.epochs or (1 if mnist else 15)
    args.arch = args.arch or ("small_cnn" if mnist else "preact_resnet18")
    args.model = args.model or str(REPO / "benchmarks" / "results" / ".cache" /
                                   f"sammd_{args.dataset}_{args.arch}_standard.pt")
    import torch
    torch.set_num_threads(args.threads)
    from fastadv.attacks import FGSM, PGD
    from fastadv.data import load_dataset
    from fastadv.detect import GaussianMMD, SAMMD, detection_trials
    from shared_data import build_cifar10_batches, build_mnist, shared_data_dir
    root = shared_data_dir()
    if root is None:
        print("no ../shared/data: nothing to do", file=sys.stderr)
        return 1
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (build_mnist if mnist else build_cifar10_batches)(root, tmp)
        model = _model(args, tmp)
        test = load_dataset(args.dataset, data_dir=str(tmp), split="test", download=False, verify=False)
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    x = test.images[order].float().div(255).to(args.device)
    y = test.labels[order].long().to(args.device)
    k = 2 * args.n
    x_att, y_att, natural = x[:k], y[:k], x[k:]
    with torch.no_grad():
        clean = float((model(x_att).argmax(1) == y_att).float().mean())
    attacks = {"PGD-20": PGD(model, eps=args.eps, alpha=args.eps / 10, steps=20),
               "FGSM": FGSM(model, eps=args.eps)}
    result = {"dataset": args.dataset, "eps": args.eps, "n": args.n, "trials": args.trials,
              "test_sets": args.test_sets, "alpha": 0.05, "model": args.arch, "clean_accuracy": clean, "attacks": {}, "type_i": {},
              "torch": torch.__version__, "threads": args.threads,
              "machine": f"{platform.machine()} {os.cpu_count()} cores" if args.device == "cpu"
              else torch.cuda.get_device_name(), "date": datetime.date.today().isoformat()}
    detectors = {"SAMMD": lambda: SAMMD(model, steps=args.fit_steps),
                 "MMD-G": lambda: GaussianMMD()}
    for i, (name, atk) in enumerate(attacks.items()):
        torch.manual_seed(0)
        x_adv = torch.cat([atk(x_att[j:j + 250], y_att[j:j + 250]) for j in range(0, k, 250)])
        with torch.no_grad():
            fooled = float((model(x_adv).argmax(1) != y_att).float().mean())
        res = detection_trials(detectors, natural, x_adv, n=args.n, trials=args.trials,
                               test_sets=args.test_sets, type_i=i == 0, seed=0, progress=False)
        result["attacks"][name] = {"fooled": fooled, "detectors": {
            d: {"power": r["power"], "power_per_trial": r["power_per_trial"]} for d, r in res.items()}}
        if i == 0:
            result["type_i"] = {d: {"type_i": r["type_i"], "type_i_per_trial": r["type_i_per_trial"]}
                                for d, r in res.items()}
        print(name, f"fooled {fooled:.1%}", {d: round(r["power"], 3) for d, r in res.items()},
              flush=True)
    result["seconds"] = time.time() - start
    print("type-I", {d: r["type_i"] for d, r in result["type_i"].items()})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, args.out + ".md")
    print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
