"""The ``fastadv`` command (also ``python -m fastadv``).

    fastadv train --method fat --tau 1 [--dataset digits --epochs 10 ...]   train, per-epoch table
    fastadv eval CHECKPOINT [--attacks natural fgsm pgd20 cw30 --any-iterate]  robustness table
    fastadv plot RUN_DIR [--out curves.png]                                  accuracy + BP curves

Multi-GPU / multi-node: ``torchrun --nproc_per_node=8 -m fastadv train ...`` (and ``eval``):
every process joins the process group from torchrun's environment (NCCL on GPUs, gloo on CPUs);
rank 0 prints and writes the files (see :mod:`fastadv.training.distributed`).

Every option of ``fastadv.train`` has a ``--kebab-case`` twin; numbers accept fractions
(``--eps 8/255``); booleans are ``--resume/--no-resume`` style flags. Only the options typed are
passed on (the rest take ``fastadv.train``'s defaults), so ``--resume`` continues a run with its
own options and refuses typed ones that differ.

Errors: a bad option, file, folder or input is one line on stderr and exit status 2; anything
else is a bug and keeps its traceback. ``--debug`` shows the traceback of every error.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from fractions import Fraction
from typing import List, Optional


def _number(text: str) -> float:
    """A float, a fraction such as ``8/255``, or ``inf``."""
    try:
        if "/" in text:
            return float(Fraction(text))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")


def _tau(text: str):
    if text.lower() == "dynamic":
        return "dynamic"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tau must be an int >= 0 or 'dynamic', got {text!r}")


def _optional_int(text: str):
    if text.lower() in ("none", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}")


def _augment(text: str):
    low = text.lower()
    if low in ("none", "false", "off", "no"):
        return None
    if low in ("true", "default", "on", "yes"):
        return True
    return text


def _parser() -> argparse.ArgumentParser:
    from .training.config import LR_SCHEDULES, METHODS, WEIGHT_FUNCS
    p = argparse.ArgumentParser(prog="fastadv", description="Fast, exact adversarial training.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")

    t = sub.add_parser("train", help="train a model (per-epoch table, checkpoints, CSV/JSON log)",
                       parents=[common])
    t.add_argument("--method", default="fat", choices=list(METHODS))
    t.add_argument("--tau", type=_tau, default=None, help="int or 'dynamic' (fat* methods; default 1)")
    t.add_argument("--dataset", default="digits")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="fetch a missing dataset from its official URL (default: yes)")
    t.add_argument("--verify-data", action=argparse.BooleanOptionalAction, default=None,
                   help="check pickled CIFAR files against the official checksums (default: yes)")
    t.add_argument("--model", default=None, help="default: small_cnn (digits/mnist), preact_resnet18")
    t.add_argument("--preset", default=None, choices=["paper"])
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=_number, default=None)
    t.add_argument("--lr-schedule", default=None, choices=list(LR_SCHEDULES))
    t.add_argument("--momentum", type=_number, default=None)
    t.add_argument("--weight-decay", type=_number, default=None)
    t.add_argument("--eps", type=_number, default=None, help="e.g. 8/255")
    t.add_argument("--alpha", type=_number, default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--omega", type=_number, default=None)
    t.add_argument("--random-start", default=None, choices=["uniform", "normal", "none"],
                   help="override the method's random start (default: the method's own)")
    t.add_argument("--beta", type=_number, default=None)
    t.add_argument("--lam", type=_number, default=None)
    t.add_argument("--weight-func", default=None, choices=list(WEIGHT_FUNCS))
    t.add_argument("--gair-start", type=int, default=None)
    t.add_argument("--augment", type=_augment, default=None)
    t.add_argument("--train-samples", type=_optional_int, default=None)
    t.add_argument("--eval-samples", type=_optional_int, default=None)
    t.add_argument("--eval-every", type=int, default=None)
    t.add_argument("--eval-batch-size", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--amp", default=None, choices=["bf16", "none"])
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="DDP (torchrun): SyncBatchNorm (CUDA) instead of per-process BatchNorm")
    t.add_argument("--out-dir", default=None)
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue the run in --out-dir from its last.pt, with its own options")
    t.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=None,
                   help="replace the run in --out-dir (its checkpoints and history are deleted)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for this run (default: torch's own choice)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=None)

    e = sub.add_parser("eval", help="evaluate a checkpoint (natural, FGSM, PGD-20, C&W∞, ...)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[common])
    e.add_argument("checkpoint")
    e.add_argument("--attacks", nargs="+", default=["natural", "fgsm", "pgd20", "cw30"])
    e.add_argument("--eps", type=_number, default=None, help="default: the checkpoint's training eps")
    e.add_argument("--any-iterate", action=argparse.BooleanOptionalAction, default=False)
    e.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    e.add_argument("--data-dir", default=None,
                   help="default: $FASTADV_DATA or ~/.cache/fastadv (never a path from the checkpoint)")
    e.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--verify-data", action=argparse.BooleanOptionalAction, default=True,
                   help="check pickled CIFAR files against the official checksums")
    e.add_argument("--split", default="test")
    e.add_argument("--max-samples", type=_optional_int, default=None)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="JSON file (default: eval_<checkpoint>.json beside it)")

    pl = sub.add_parser("plot", help="accuracy and BP curves of a run folder to a PNG",
                        parents=[common])
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="default: RUN_DIR/curves.png")
    return p


def cmd_train(args) -> int:
    from .training.api import train
    # Only what was typed: a resume then takes the rest from the run it continues.
    opts = {k: v for k, v in vars(args).items() if k not in ("command", "debug") and v is not None}
    method = opts.pop("method")
    train(method=method, **opts)
    return 0


def cmd_eval(args) -> int:
    from .training import distributed as dist_utils
    device, created = dist_utils.init_distributed(args.device)
    try:
        return _cmd_eval(args, device)
    finally:
        if created:
            dist_utils.cleanup_distributed()


def _cmd_eval(args, device) -> int:
    import torch
    from . import models
    from .training import distributed as dist_utils
    from .data import load_dataset
    from .evaluation import evaluate
    from .training.checkpoint import load_checkpoint, load_model_state
    state = load_checkpoint(args.checkpoint)
    meta = state.get("meta") or {}
    missing = [k for k in ("model", "num_classes", "in_channels") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint: {args.checkpoint} lacks {missing} (not written by fastadv train)")
    model = models.create(meta["model"], num_classes=meta["num_classes"],
                          in_channels=meta["in_channels"])
    load_model_state(model, state["model"], args.checkpoint)
    model.to(device).eval()
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise ValueError("--dataset: the checkpoint names no dataset; pass --dataset")
    # The data folder is the user's (--data-dir, $FASTADV_DATA), never one named in the checkpoint:
    # a checkpoint from elsewhere must not choose which files this process reads.
    data = load_dataset(dataset, data_dir=args.data_dir, split=args.split, download=args.download,
                        verify=args.verify_data)
    eps = args.eps if args.eps is not None else meta.get("eps")
    if eps is None:
        raise ValueError("--eps: the checkpoint holds no eps; pass --eps")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                   f"eval_{os.path.splitext(os.path.basename(args.checkpoint))[0]}.json")
    rank = dist_utils.get_rank()
    # The attacks' random starts (distributed: a distinct stream per process).
    torch.manual_seed(dist_utils.rank_seed(args.seed, rank) if dist_utils.is_distributed()
                      else args.seed)
    main = rank == 0
    if main:
        print(f"{args.checkpoint}: {meta['model']} on {dataset} ({args.split})"
              + (f", {dist_utils.get_world_size()} processes" if dist_utils.is_distributed() else ""))
    evaluate(model, data, attacks=args.attacks, eps=eps, any_iterate=args.any_iterate,
             batch_size=args.batch_size, max_samples=args.max_samples, device=device, out=out,
             distributed=True)
    if main:
        print(f"wrote {out}")
    return 0


def plot_run(run_dir: str, out: Optional[str] = None) -> str:
    """Draw accuracy (train nat/adv, test nat/PGD-20) and BP (updates, executed) per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .training.logging import read_history
    h = read_history(run_dir)
    if not h:
        raise ValueError(f"run_dir: {run_dir!r} has an empty history")
    ep = [r["epoch"] for r in h]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_nat_acc", "train natural"), ("train_adv_acc", "train adversarial"),
                       ("test_nat_acc", "test natural"), ("test_pgd20_acc", "test PGD-20")):
        pts = [(e, r.get(key)) for e, r in zip(ep, h) if r.get(key) is not None]
        if pts:
            a1.plot(*zip(*pts), marker="o", label=label)
    a1.set_xlabel("epoch"), a1.set_ylabel("accuracy (%)"), a1.legend(), a1.grid(alpha=0.3)
    a2.plot(ep, [r["bp_avg"] for r in h], marker="o", label="BP (updates / image)")
    a2.plot(ep, [r["bp_executed_avg"] for r in h], marker="s", label="executed backward passes")
    # PGD-K's cost, for reference: K = bp_avg / (1 − saving), from any epoch with a saving < 100 %.
    k = next((r["bp_avg"] / (1 - r["bp_saved"] / 100) for r in h
              if r.get("bp_saved") is not None and r["bp_saved"] < 100), None)
    if k:
        a2.axhline(round(k), color="gray", linestyle="--", label=f"PGD-{round(k)} (AT)")
    a2.set_xlabel("epoch"), a2.set_ylabel("per training image"), a2.legend(), a2.grid(alpha=0.3)
    a2.set_ylim(bottom=0)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cmd_plot(args) -> int:
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot}[args.command]
    from .data import DownloadError
    try:
        return handler(args)
    except (ValueError, TypeError, OSError, DownloadError) as e:
        # A bad option, file, folder or input (a UserError, or the ValueError/TypeError/OSError
        # they raise): one line, exit status 2 (like argparse). --debug: the traceback.
        if args.debug:
            raise
        print(f"fastadv {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
