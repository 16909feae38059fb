"""Evidence for issue #13 item 6: does κ find mislabelled training examples? Real MNIST, CPU.

The first ``--train`` MNIST training images (``../shared/data``) get ``--flip`` of their labels
moved to another class (exactly that share, uniformly), a small CNN is adversarially trained on
them (``--method``, default AT; ε, α = ε/4, K = 10), and :func:`fastadv.audit.kappa_audit` ranks the
noisy training set by κ. Reported: the precision and recall of the lowest-κ ``--flip`` share
against the flipped examples (base rate = ``--flip``), the same for a ranking by the clean margin
alone (the usual small-loss baseline), and the κ histograms of flipped and clean examples.

    python -m benchmarks.label_audit_mnist [--train 10000 --epochs 3 --eps 0.1 --flip 0.1]

Writes ``benchmarks/results/label_audit_mnist_cpu.json`` and ``.png`` (``--out`` prefix).
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=10000, help="training images (first N)")
    p.add_argument("--flip", type=float, default=0.1, help="share of labels flipped")
    p.add_argument("--method", default="at")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "label_audit_mnist_cpu"))
    args = p.parse_args(argv)

    import torch
    from fastadv import models
    from fastadv.audit import flip_labels, kappa_audit
    from fastadv.data import BatchLoader, ImageDataset, load_dataset
    from fastadv.training import Trainer
    from shared_data import build_mnist, shared_data_dir

    root = shared_data_dir()
    if root is None:
        print("no ../shared/data: nothing to do", file=sys.stderr)
        return 1
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        build_mnist(root, Path(tmp))
        clean = load_dataset("mnist", data_dir=tmp, download=False, split="train")
        clean = clean.subset(slice(0, args.train))
    noisy_labels, flipped = flip_labels(clean.labels, args.flip, clean.num_classes, seed=args.seed)
    noisy = ImageDataset(clean.images, noisy_labels, clean.num_classes, name="mnist-noisy",
                         split="train")
    torch.manual_seed(args.seed)
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(model, opt, args.method, eps=args.eps, alpha=args.eps / 4, steps=10,
                      epochs=args.epochs)
    loader = BatchLoader(noisy, batch_size=args.batch_size, shuffle=True, augment=None,
                         device="cpu", seed=args.seed)
    t0 = time.perf_counter()
    history = trainer.fit(loader, None, args.epochs)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    audit = kappa_audit(model, noisy, eps=args.eps, alpha=args.eps / 4, steps=10, seed=args.seed)
    audit_s = time.perf_counter() - t0
    by_kappa = audit.precision_recall(flipped)
    # The baseline: the same ranking without κ (clean margin of the given label only).
    margin_only = type(audit)(audit.labels, torch.zeros_like(audit.kappa), audit.margin,
                              audit.steps).precision_recall(flipped)
    result = {
        "what": "kappa label audit on MNIST with flipped labels (issue #13 item 6)",
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{platform.platform()} ({platform.machine()})",
        "command": "python -m benchmarks.label_audit_mnist " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "settings": {"train": args.train, "flip": args.flip, "method": args.method,
                     "epochs": args.epochs, "eps": args.eps, "alpha": args.eps / 4, "steps": 10,
                     "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed},
        "train_adv_acc_last_epoch": history[-1]["train_adv_acc"],
        "lowest_kappa": by_kappa, "lowest_margin_only": margin_only,
        "kappa_histogram_flipped": audit.histogram(flipped),
        "kappa_histogram_clean": audit.histogram(~flipped),
        "seconds": {"train": round(train_s, 1), "audit": round(audit_s, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    audit.plot(args.out + ".png", flipped=flipped,
               title=f"MNIST, {args.train} images, {100 * args.flip:g} % labels flipped, "
                     f"{args.method} {args.epochs} epochs, eps {args.eps:g}")
    print(json.dumps({k: result[k] for k in ("lowest_kappa", "lowest_margin_only", "seconds")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
