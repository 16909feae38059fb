"""The ``fastadv`` command (also ``python -m fastadv``).

    fastadv train --method fat --tau 1 [--dataset digits --epochs 10 ...]   train, per-epoch table
    fastadv eval CHECKPOINT [--attacks natural fgsm pgd20 cw30 --any-iterate]  robustness table
    fastadv plot RUN_DIR [--out curves.png]                                  accuracy + BP curves
    fastadv compare RUN_DIR... [--out compare.png]                           runs side by side

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
import os
import sys
from fractions import Fraction
from typing import List, Optional
from .errors import UserError


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
        return "all"  # not None: None means "not typed", which takes the default
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}")


def _augment(text: str):
    low = text.lower()
    if low in ("none", "false", "off", "no"):
        return False  # not None: None means "not typed", which takes the dataset's default
    if low in ("true", "default", "on", "yes"):
        return True
    if low not in ("crop-flip", "crop", "flip"):
        raise argparse.ArgumentTypeError(f"unknown augmentation {text!r}; use default, none, "
                                          f"crop-flip, crop or flip")
    return low


def _datasets():
    from .data import available_datasets
    return available_datasets()


def _models():
    from .models import available_models
    return available_models()


def _train_epilog() -> str:
    """The per-dataset defaults, as a table (argparse's help lists options, not these)."""
    from .training.config import DATASET_DEFAULTS
    rows = ["per-dataset defaults:",
            f"  {'dataset':<14} {'model':<16} {'eps':>8} {'alpha':>8} {'epochs':>6} {'lr':>6}"]
    for name in _datasets():
        d = DATASET_DEFAULTS[name]
        rows.append(f"  {name:<14} {d['model']:<16} {d['eps']:>8.4g} {d['alpha']:>8.4g} "
                    f"{d['epochs']:>6} {d['lr']:>6g}")
    rows += ["  (cifar10/cifar100/svhn: eps = 8/255, alpha = 2/255; digits: eps 0.2 is 3.2 of its",
             "  16 grey levels, where an undefended model falls to ~0% PGD accuracy)",
             "", "examples:",
             "  fastadv train --method fat --tau 1                  # FAT on the bundled digits",
             "  fastadv train --method at --dataset cifar10 --device cuda --amp bf16",
             "  fastadv train --resume --out-dir runs/digits-fat-tau1-s0 --epochs 30",
             "  fastadv train --method trades --model dsnet-6-16 --dataset cifar10 --device cuda",
             "  fastadv train --method at --model cifs_resnet18 --dataset cifar10 --device cuda"]
    return "\n".join(rows)


AUTOATTACK_VERSIONS = ("standard", "lite", "plus", "rand")


def _parser() -> argparse.ArgumentParser:
    from .training.config import LR_SCHEDULES, METHODS, WEIGHT_FUNCS
    p = argparse.ArgumentParser(prog="fastadv", description="Fast, exact adversarial training.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")

    t = sub.add_parser("train", help="train a model (per-epoch table, checkpoints, CSV/JSON log)",
                       parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Adversarial training. Every option is a keyword of "
                                   "fastadv.train(); an option left out takes the dataset's "
                                   "default (below), the method's, or --preset's.",
                       epilog=_train_epilog())
    g = t.add_argument_group("method")
    a = g.add_argument
    a("--method", type=str.lower, default=None,
      help=f"training method: {', '.join(METHODS)} (default fat)")
    a("--tau", type=_tau, default=None,
      help="FAT's early-stop budget: an int >= 0, or 'dynamic' for the official schedule scaled "
           "to --epochs (fat* methods; default 1)")
    a("--omega", type=_number, default=None,
      help="FAT's exploration noise: omega·N(0, I) added to the start (fat* methods; default 0)")
    a("--beta", type=_number, default=None,
      help="TRADES/MART trade-off weight (trades, fat-trades, mart, fat-mart, noilin-trades, "
           "gair-rst; default 6)")
    a("--lam", type=_number, default=None,
      help="GAIR weight steepness lambda (gairat: default -1; gair-fat, gair-rst: default 0; "
           "inf: no reweighting; gair-rst reweights only for lambda <= 10, as its official code)")
    a("--weight-func", default=None, choices=list(WEIGHT_FUNCS),
      help="GAIR weight function of kappa (gairat, gair-fat; default tanh)")
    a("--gair-start", type=int, default=None,
      help="first reweighted epoch, 0-based (gairat, gair-fat, gair-rst; default: half the "
           "epochs)")
    a("--noise-type", default=None, choices=["symmetric", "pairflip"],
      help="NoiLIn's injected label noise: another class uniformly, or the next class "
           "(noilin-at, noilin-trades; default symmetric)")
    a("--noise-min", type=_number, default=None,
      help="NoiLIn's first noise rate (default 0.05); it grows x1.05 when the validation robust "
           "accuracy is lower than 10 epochs before")
    a("--noise-max", type=_number, default=None,
      help="NoiLIn's largest noise rate (noilin-at: default 0.6; noilin-trades: 0.4)")
    a("--extra-data", default=None,
      help="a file of extra images and (pseudo-)labels (.npz, .pt, or the official .pickle) "
           "mixed into every batch: robust self-training, as gair-rst uses it")
    a("--extra-fraction", type=_number, default=None,
      help="share of each batch taken from --extra-data (default 0.5, the official half)")
    a("--loss-weights", action=argparse.BooleanOptionalAction, default=None,
      help="DAT: weight each row's loss by its own adversarial CE, as the official code does "
           "(dat; default off: the paper's plain CE)")
    a("--preset", default=None, choices=["paper"],
      help="'paper': the method's paper recipe for CIFAR-10 (WRN, 85-120 epochs); 32x32 RGB "
           "datasets only")
    g = t.add_argument_group("attack used for training")
    a = g.add_argument
    a("--eps", type=_number, default=None,
      help="L-inf radius on [0, 1] pixels; fractions allowed (e.g. 8/255). Default: per dataset")
    a("--alpha", type=_number, default=None,
      help="PGD step size (default: per dataset, a quarter of its eps; not rescaled with --eps)")
    a("--steps", type=int, default=None, help="PGD steps K (default 10)")
    a("--random-start", default=None, choices=["uniform", "normal", "none"],
      help="override the method's random start (default: uniform; normal for the TRADES "
           "methods)")
    g = t.add_argument_group("data and model")
    a = g.add_argument
    a("--dataset", type=str.lower, default=None,
      help=f"{', '.join(_datasets())} (default digits: scikit-learn's bundled 8x8 digits, "
           f"no download)")
    a("--data-dir", default=None,
      help="folder holding the dataset's files (default: $FASTADV_DATA or ~/.cache/fastadv)")
    a("--download", action=argparse.BooleanOptionalAction, default=None,
      help="fetch a missing dataset from its official URL, md5-checked (default: yes)")
    a("--verify-data", action=argparse.BooleanOptionalAction, default=None,
      help="check pickled CIFAR files against the official md5 on every read (default: yes; "
           "--no-verify-data for CIFAR-format files you made yourself)")
    a("--model", type=str.lower, default=None,
      help=f"{', '.join(_models())} (default: small_cnn on digits/mnist/fashion-mnist, "
           f"preact_resnet18 on 32x32 datasets)")
    a("--augment", type=_augment, default=None,
      help="training augmentation: default (the dataset's own: crop+flip on CIFAR, crop on "
           "SVHN, none on digits/MNIST), none, crop-flip, crop, flip")
    a("--train-samples", type=_optional_int, default=None,
      help="train on the first N training images only (default: all)")
    g = t.add_argument_group("optimisation")
    a = g.add_argument
    a("--epochs", type=int, default=None, help="number of epochs (default: per dataset)")
    a("--batch-size", type=int, default=None, help="batch size (default 128)")
    a("--lr", type=_number, default=None, help="initial learning rate (default: per dataset)")
    a("--lr-schedule", default=None, choices=list(LR_SCHEDULES),
      help="piecewise: x0.1 at 50%% and x0.01 at 75%% of the epochs (default); fat: the FAT "
           "code's; cosine; constant")
    a("--momentum", type=_number, default=None, help="SGD momentum (default 0.9)")
    a("--weight-decay", type=_number, default=None, help="SGD weight decay (default 5e-4)")
    a("--seed", type=int, default=None, help="seed of the model, data order and attacks (default 0)")
    g = t.add_argument_group("evaluation each epoch (natural and PGD-20 accuracy)")
    a = g.add_argument
    a("--eval-samples", type=_optional_int, default=None,
      help="test images evaluated (default 1000; 'all' for the whole test set)")
    a("--eval-every", type=int, default=None,
      help="evaluate every N epochs and after the last (0: never; default 1)")
    a("--eval-batch-size", type=int, default=None, help="evaluation batch size (default 256)")
    a("--train-nat-acc", action=argparse.BooleanOptionalAction, default=None,
      help="measure the clean training batches' accuracy (tr-nat%%) with one extra eval-mode "
           "forward per step (default: yes; --no-train-nat-acc saves it)")
    a("--eval-alpha", type=_number, default=None,
      help="step of the PGD-20 evaluation (default eps/4; the fat-trades and fat-mart paper "
           "presets: 0.003, as their official scripts)")
    a("--eval-autoattack", choices=("lite", "standard", "plus", "rand"), default=None,
      help="also run AutoAttack (this version) at each evaluation, column aa%%: lite = APGD-CE + "
           "APGD-T, a cheap upper bound for monitoring; standard = the field's evaluation")
    g = t.add_argument_group("where and how it runs")
    a = g.add_argument
    a("--out-dir", default=None,
      help="run folder for checkpoints and history (default runs/<dataset>-<method>[-tau<tau>]"
           "-s<seed>)")
    a("--resume", action=argparse.BooleanOptionalAction, default=None,
      help="continue the run in --out-dir from its last.pt, with its own options")
    a("--overwrite", action=argparse.BooleanOptionalAction, default=None,
      help="replace the run in --out-dir (its checkpoints and history are deleted first)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    a("--threads", type=int, default=None,
      help="torch CPU threads (default: torch's choice; results depend on it, see README)")
    a("--amp", default=None, choices=["bf16", "none"],
      help="bf16 autocast for the model (default none)")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None,
      help="channels_last memory format (default: no)")
    a("--compile", action=argparse.BooleanOptionalAction, default=None,
      help="torch.compile the model (default: no)")
    a("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
      help="DDP (torchrun): SyncBatchNorm (CUDA) instead of per-process BatchNorm (default: no)")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="progress bars (default: when stdout is a terminal)")
    a("--verbose", action=argparse.BooleanOptionalAction, default=None,
      help="print the per-epoch table (default: yes)")

    # What eval and audit-labels share: the data a checkpoint is attacked on, and where.
    on_data = argparse.ArgumentParser(add_help=False)
    d = on_data.add_argument
    d("--dataset", type=str.lower, default=None,
      help=f"{', '.join(_datasets())} (default: the checkpoint's dataset; another one must have "
           f"the same image shape)")
    d("--data-dir", default=None,
      help="default: $FASTADV_DATA or ~/.cache/fastadv (never a path from the checkpoint)")
    d("--download", action=argparse.BooleanOptionalAction, default=True,
      help="fetch a missing dataset from its official URL (default: yes)")
    d("--verify-data", action=argparse.BooleanOptionalAction, default=True,
      help="check pickled CIFAR files against the official md5 (default: yes)")
    d("--batch-size", type=int, default=256, help="batch size (default 256)")
    d("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    d("--seed", type=int, default=0, help="seed of the attacks' random starts (default 0)")
    d("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="a progress bar over the batches (default: when stdout is a terminal)")

    e = sub.add_parser("eval", help="evaluate a checkpoint (natural, FGSM, PGD-20, C&W∞, ...)",
                       parents=[common, on_data],
                       description="Robust accuracy of a checkpoint written by fastadv train, on "
                                   "its dataset's test split (the papers' protocol).")
    e.add_argument("checkpoint", help="a best.pt or last.pt of a run folder")
    e.add_argument("--attacks", nargs="+", default=["natural", "fgsm", "pgd20", "cw30"],
                   help="natural, fgsm, pgdK (e.g. pgd20, pgd100), cwK (C&W-inf with K steps), "
                        "pgd+ (5 restarts x 40 steps), autoattack, aa-lite, apgd-ce, apgd-t, fab-t, "
                        "square; default: natural fgsm pgd20 cw30")
    e.add_argument("--autoattack", nargs="?", const="standard", default=None,
                   choices=AUTOATTACK_VERSIONS,
                   help="add AutoAttack (default version: standard) to --attacks")
    e.add_argument("--eps", type=_number, default=None,
                   help="L-inf radius (default: the checkpoint's training eps)")
    e.add_argument("--alpha", type=_number, default=None,
                   help="step of the pgdK/cwK attacks (default: the run's --eval-alpha, else eps/4)")
    e.add_argument("--pgd-plus-alpha", type=_number, default=None,
                   help="step of pgd+ (default 0.01 * eps / 0.031: the official 0.01 at eps 0.031)")
    e.add_argument("--rows-per-pass", type=int, default=None,
                   help="most rows of one model pass of an attack (default on the CPU: passes of "
                        "about 50k input values, 64 rows of MNIST, 16 of CIFAR, where smaller passes "
                        "run faster; the whole batch on a GPU)")
    e.add_argument("--any-iterate", action=argparse.BooleanOptionalAction, default=False,
                   help="count a sample as broken at its first misclassified iterate (stronger, "
                        "cheaper); default: score the final iterate")
    e.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    e.add_argument("--max-samples", type=_optional_int, default=None,
                   help="evaluate the first N images only (default: all)")
    e.add_argument("--out", default=None, help="JSON file (default: eval_<checkpoint>.json beside it)")

    pl = sub.add_parser("plot", help="accuracy and BP curves of a run folder to a PNG",
                        parents=[common])
    pl.add_argument("run_dir", help="a run folder (holding history.json)")
    pl.add_argument("--out", default=None, help="default: RUN_DIR/curves.png")

    c = sub.add_parser("compare", help="a table and a figure across run folders (FAT against AT)",
                       parents=[common],
                       description="Natural and PGD-20 accuracy, BPs and time of several runs: "
                                   "one table on stdout, one figure.")
    c.add_argument("runs", nargs="+", help="run folders (the first is the time reference)")
    c.add_argument("--out", default=None, help="the figure (default: compare.png)")

    au = sub.add_parser("audit-labels", parents=[common, on_data],
                        help="rank the training labels by kappa: the likely mislabelled first",
                        description="kappa of every training example under the trained model: "
                                    "the PGD checks at which it still predicts the given label "
                                    "(mislabelled examples have kappa 0 from the start). Writes a "
                                    "CSV (most suspect first) and a histogram PNG beside the "
                                    "checkpoint.")
    au.add_argument("run", help="a run folder (its last.pt) or a checkpoint file")
    au.add_argument("--split", default="train", help="the split to audit (default: train)")
    au.add_argument("--max-samples", type=_optional_int, default=None,
                    help="audit the first N examples (default: the run's train_samples, with "
                         "NoiLIn's and CAT's held-out validation images among them)")
    au.add_argument("--eps", type=_number, default=None, help="attack radius (default: the run's)")
    au.add_argument("--alpha", type=_number, default=None, help="step (default: the run's)")
    au.add_argument("--steps", type=int, default=None, help="PGD steps K (default: the run's)")
    au.add_argument("--fraction", type=_number, default=0.1,
                    help="the share listed as suspects in the summary (default 0.1)")
    au.add_argument("--out-dir", default=None,
                    help="where label_audit.csv/.png go (default: beside the checkpoint)")
    de = sub.add_parser("detect", parents=[common, on_data],
                        help="can a two-sample test tell adversarial data from natural? (SAMMD)",
                        description="Attacks 2n test images with --attack, then measures the "
                                    "SAMMD test's power (natural vs adversarial) and type-I "
                                    "error (natural vs natural) over repeated draws, beside "
                                    "plain MMD with a Gaussian kernel on the inputs.")
    de.add_argument("checkpoint", help="a best.pt or last.pt of a run folder (the classifier "
                                       "whose features SAMMD uses, and the attacked model)")
    de.add_argument("--attack", default="pgd20",
                    help="the adversarial data: fgsm, pgdK, cwK, autoattack, apgd-ce, ... "
                         "(default pgd20)")
    de.add_argument("--eps", type=_number, default=None,
                    help="L-inf radius (default: the checkpoint's training eps)")
    de.add_argument("--n", type=int, default=500,
                    help="images per sample: the kernel is fitted on n + n, each test on n + n "
                         "held out (default 500; the split needs 6n images, 4n with --no-type-i)")
    de.add_argument("--trials", type=int, default=1, help="fits per detector (default 1)")
    de.add_argument("--test-sets", type=int, default=100,
                    help="tests per fit, on fresh draws (default 100)")
    de.add_argument("--level", type=_number, default=0.05, help="the tests' level alpha (default 0.05)")
    de.add_argument("--fit-steps", type=int, default=1000,
                    help="Adam steps of SAMMD's kernel (default 1000, the paper's)")
    de.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also plain MMD with a Gaussian kernel on the inputs (default: yes)")
    de.add_argument("--type-i", action=argparse.BooleanOptionalAction, default=True,
                    help="also natural vs natural, the type-I error (default: yes)")
    de.add_argument("--split", default="test", help="the split whose images are used (default: test)")
    de.add_argument("--out", default=None,
                    help="JSON file (default: detect_<checkpoint>.json beside it)")
    return p


def cmd_train(args) -> int:
    from .training.api import train
    # Only what was typed: a resume then takes the rest from the run it continues.
    opts = {k: v for k, v in vars(args).items() if k not in ("command", "debug") and v is not None}
    method = opts.pop("method", None)  # None: the resumed run's, else fat
    train(method=method, **opts)
    return 0


def _check_linf_options(args, *names: str) -> None:
    """The L-inf sizes the user typed (--eps, --alpha, ...), checked before any work: on [0, 1]
    images none can exceed 1 (``--eps 8`` is a slip for 8/255)."""
    from .training.checks import check_linf_size
    for name in names:
        if getattr(args, name, None) is not None:
            check_linf_size(name, getattr(args, name), strict=name != "eps")


def cmd_eval(args) -> int:
    from .training import distributed as dist_utils
    from .training.config import check_device
    check_device(args.device)
    _check_linf_options(args, "eps", "alpha", "pgd_plus_alpha")
    device, created = dist_utils.init_distributed(args.device)
    try:
        return _cmd_eval(args, device)
    finally:
        if created:
            dist_utils.cleanup_distributed()


def _load_run(checkpoint: str, args, device):
    """``(state, meta, model, dataset name, data)`` of a checkpoint written by fastadv train: the
    model built and loaded in eval mode on ``device``, and ``args.split`` of its dataset."""
    from . import models
    from .data import load_dataset
    from .training.checkpoint import load_checkpoint, load_model_state
    state = load_checkpoint(checkpoint)
    meta = state.get("meta") or {}
    missing = [k for k in ("model", "num_classes", "in_channels") if k not in meta]
    if missing:
        raise UserError(f"checkpoint: {checkpoint} lacks {missing} (not written by fastadv train)")
    model = models.create(meta["model"], num_classes=meta["num_classes"],
                          in_channels=meta["in_channels"])
    load_model_state(model, state["model"], checkpoint)
    model.to(device).eval()
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise UserError("--dataset: the checkpoint names no dataset; pass --dataset")
    # The data folder is the user's (--data-dir, $FASTADV_DATA), never one named in the checkpoint:
    # a checkpoint from elsewhere must not choose which files this process reads.
    data = load_dataset(dataset, data_dir=args.data_dir, split=args.split, download=args.download,
                        verify=args.verify_data)
    _check_eval_data(data, meta, dataset)
    return state, meta, model, dataset, data


def _cmd_eval(args, device) -> int:
    import torch
    from .training import distributed as dist_utils
    from .evaluation import evaluate
    state, meta, model, dataset, data = _load_run(args.checkpoint, args, device)
    eps = args.eps if args.eps is not None else meta.get("eps")
    if eps is None:
        raise UserError("--eps: the checkpoint holds no eps; pass --eps")
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
    attacks = list(args.attacks)
    if args.autoattack:
        attacks.append("autoattack" if args.autoattack == "standard" else f"aa-{args.autoattack}")
    evaluate(model, data, attacks=attacks, eps=eps, any_iterate=args.any_iterate,
             batch_size=args.batch_size, max_samples=args.max_samples, device=device, out=out,
             distributed=True, progress=args.progress,
             alpha=args.alpha if args.alpha is not None else meta.get("eval_alpha"),
             pgd_plus_alpha=args.pgd_plus_alpha, rows_per_pass=args.rows_per_pass)
    if main:
        print(f"wrote {out}")
    return 0


def cmd_audit_labels(args) -> int:
    import torch
    from .audit import kappa_audit, summary_lines
    from .training.config import check_device
    check_device(args.device)
    _check_linf_options(args, "eps", "alpha")
    if not 0 < args.fraction <= 1:  # before the audit's work, not after
        from .errors import UserError
        raise UserError(f"--fraction: the share of suspects listed, in (0, 1], got {args.fraction:g}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = args.run
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"run: {args.run} holds no last.pt (not a fastadv run folder?)")
    state, meta, model, dataset, data = _load_run(path, args, device)
    cfg = state.get("config") or {}
    eps = args.eps if args.eps is not None else meta.get("eps", cfg.get("eps"))
    if eps is None:
        raise UserError("--eps: the checkpoint holds no eps; pass --eps")
    steps = args.steps if args.steps is not None else cfg.get("steps") or 10
    alpha = args.alpha if args.alpha is not None else cfg.get("alpha")
    limit = args.max_samples
    if limit is None and args.split == "train":
        limit = cfg.get("train_samples")  # the examples the run trained on (None: all)
    print(f"{path}: {meta['model']} on {dataset} ({args.split}), kappa under PGD-{steps} "
          f"(eps={eps:.4g}, alpha={(alpha if alpha is not None else eps / 4):.4g})")
    audit = kappa_audit(model, data, eps=eps, alpha=alpha, steps=steps, device=device,
                        batch_size=args.batch_size, max_samples=limit, progress=args.progress,
                        seed=args.seed)
    for line in summary_lines(audit):
        print(line)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "label_audit.csv")
    audit.to_csv(csv_path)
    k = len(audit.suspects(args.fraction))
    print(f"the {k} most suspect ({100 * args.fraction:g} %) lead {csv_path}")
    import importlib.util
    if importlib.util.find_spec("matplotlib") is not None:
        png = os.path.join(out_dir, "label_audit.png")
        audit.plot(png, title=f"kappa label audit: {dataset} {args.split}, {len(audit.kappa)} examples")
        print(f"wrote {png}")
    return 0


def cmd_detect(args) -> int:
    import json
    import re
    import torch
    from .detect import GaussianMMD, SAMMD, detection_trials
    from .errors import UserError
    from .evaluation import parse_attack
    from .training.config import check_device
    check_device(args.device)
    _check_linf_options(args, "eps")
    for name, v, lo in (("--n", args.n, 2), ("--trials", args.trials, 1),
                        ("--test-sets", args.test_sets, 1), ("--fit-steps", args.fit_steps, 0)):
        if v < lo:
            raise UserError(f"{name}: must be >= {lo}, got {v}")
    if not 0 < args.level < 1:
        raise UserError(f"--level: the tests' level, in (0, 1), got {args.level:g}")
    try:
        attack = parse_attack(args.attack)  # an unknown name fails before any work
    except UserError as e:  # evaluate's option is `attacks`; this command's flag is --attack
        raise UserError(re.sub(r"^attacks:", "--attack:", str(e))) from e
    from .evaluation import Evaluation
    if type(attack).adversarial is Evaluation.adversarial:
        attack.adversarial(None, None, None, None)  # its one-line refusal, before any work
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state, meta, model, dataset, data = _load_run(args.checkpoint, args, device)
    eps = args.eps if args.eps is not None else meta.get("eps")
    if eps is None:
        raise UserError("--eps: the checkpoint holds no eps; pass --eps")
    need = (4 if args.type_i else 2) * args.n + 2 * args.n
    if len(data) < need:
        raise UserError(f"--n: {dataset} {args.split} has {len(data)} images, the protocol needs "
                        f"{need} (2n attacked, {'4' if args.type_i else '2'}n natural); lower --n")
    torch.manual_seed(args.seed)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
    x, y = data.images[order], data.labels[order].long()
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    # Disjoint pools, as the paper: 2n images attacked (n to fit on, n held out), the rest natural.
    k = 2 * args.n
    print(f"{args.checkpoint}: {meta['model']} on {dataset} ({args.split}); {args.attack} at "
          f"eps={eps:.4g} on {k} images, {len(data) - k} natural", flush=True)
    chunks = []
    for i in range(0, k, args.batch_size):
        xb, yb = x[i:min(k, i + args.batch_size)].to(device), y[i:min(k, i + args.batch_size)].to(device)
        chunks.append(attack.adversarial(model, xb, yb, eps).detach())
    x_adv = torch.cat(chunks)
    with torch.no_grad():
        fooled = float((model(x_adv).argmax(1).cpu() != y[:k]).float().mean())
    print(f"the attack fools the model on {fooled:.1%} of them")
    detectors = {"SAMMD": lambda: SAMMD(model, steps=args.fit_steps, seed=args.seed)}
    if args.baseline:
        detectors["MMD-G"] = lambda: GaussianMMD(seed=args.seed)
    res = detection_trials(detectors, x[k:].to(device), x_adv, n=args.n, trials=args.trials,
                           test_sets=args.test_sets, alpha=args.level, type_i=args.type_i,
                           seed=args.seed, progress=args.progress)
    print(f"{'detector':<8} {'power':>7} {'type-I':>7}   (share of {args.test_sets} test sets "
          f"rejected at alpha {args.level:g}, mean of {args.trials} fit(s))")
    for name, r in res.items():
        t1 = f"{r['type_i']:>7.3f}" if r["type_i"] is not None else f"{'-':>7}"
        print(f"{name:<8} {r['power']:>7.3f} {t1}")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                   f"detect_{os.path.splitext(os.path.basename(args.checkpoint))[0]}.json")
    with open(out, "w") as f:
        json.dump({"checkpoint": args.checkpoint, "dataset": dataset, "attack": args.attack,
                   "eps": eps, "n": args.n, "trials": args.trials, "test_sets": args.test_sets,
                   "level": args.level, "fooled": fooled, "results": res}, f, indent=1)
    print(f"wrote {out}")
    return 0


def _check_eval_data(data, meta, dataset: str) -> None:
    """Refuse images of another shape than the model was trained on (a small CNN runs on 28×28
    MNIST as well as on 8×8 digits, and reports chance accuracy without a word)."""
    trained = tuple(meta.get("input_shape") or ()) or None
    if trained is None and meta.get("dataset"):  # checkpoints from before input_shape was stored
        from .data import DATASETS
        info = DATASETS.get(meta["dataset"])
        trained = info.shape if info is not None else None
    if trained is not None and tuple(data.shape) != trained:
        fmt = lambda s: "×".join(map(str, s))  # noqa: E731
        raise UserError(f"dataset: {dataset} has {fmt(data.shape)} images but the model was trained "
                        f"on {meta.get('dataset', '?')} ({fmt(trained)}); evaluate it on data of "
                        f"that shape")
    if meta.get("dataset") and meta["dataset"] != dataset:
        print(f"note: the model was trained on {meta['dataset']}, evaluated here on {dataset}")


def _need_matplotlib() -> None:
    from .reports import pyplot
    pyplot()  # a one-line error without matplotlib, before any work


def cmd_plot(args) -> int:
    _need_matplotlib()
    from .reports import plot_run
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def cmd_compare(args) -> int:
    _need_matplotlib()
    from .reports import compare_runs
    table, png = compare_runs(args.runs, args.out)
    print(table)
    print(f"wrote {png}")
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return cli_names(text)


def cli_names(text: str) -> str:
    """The Python API's option names in a message, as the command line spells them:
    ``resume=True`` → ``--resume``, ``verify_data=False`` → ``--no-verify-data``, ``eps=0.05`` →
    ``--eps 0.05``, a leading ``eps:`` → ``--eps:``, and any ``snake_case`` option name →
    ``--kebab-case``, a back-quoted `` `epochs` `` → ``--epochs`` (a one-word name such as
    ``model`` only in those forms: it is also a word)."""
    import re
    from .training.config import OPTION_NAMES
    names = sorted(set(OPTION_NAMES) | {"max_samples", "any_iterate", "attacks", "split",
                                        "pgd_plus_alpha"},
                   key=len, reverse=True)
    alt = "|".join(map(re.escape, names))
    flag = lambda m: "--" + m.group(1).replace("_", "-")  # noqa: E731
    text = re.sub(rf"(?<![\w./\\-])({alt})=True\b", flag, text)
    text = re.sub(rf"(?<![\w./\\-])({alt})=False\b",
                  lambda m: "--no-" + m.group(1).replace("_", "-"), text)
    text = re.sub(rf"(?<![\w./\\-])({alt})=", lambda m: flag(m) + " ", text)
    text = re.sub(rf"^({alt}):", lambda m: flag(m) + ":", text)
    text = re.sub(rf"`({alt})`", flag, text)  # a bare option name is written `name` in messages
    under = "|".join(re.escape(n) for n in names if "_" in n)
    return re.sub(rf"(?<![\w.$/\\'\"-])({under})(?![\w/\\])", flag, text)  # not inside a path


def _autoattack_flag_before_path(argv: List[str]) -> List[str]:
    """``eval --autoattack run/best.pt``: the optional version would swallow the checkpoint (and
    argparse then calls it an invalid version). A bare ``--autoattack`` followed by a checkpoint
    (a word ending in .pt/.pth, or a path that exists) means the standard version, so it becomes
    ``--autoattack=standard``; any other word stays a version (a typo gets argparse's error)."""
    out = list(argv)
    for i, tok in enumerate(out[:-1]):
        nxt = out[i + 1]
        if tok == "--autoattack" and nxt not in AUTOATTACK_VERSIONS and (
                nxt.endswith((".pt", ".pth")) or os.path.exists(nxt)):
            out[i] = "--autoattack=standard"
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(_autoattack_flag_before_path(sys.argv[1:] if argv is None else argv))
    handler = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot,
               "compare": cmd_compare, "audit-labels": cmd_audit_labels,
               "detect": cmd_detect}[args.command]
    from .errors import is_user_error
    try:
        return handler(args)
    except Exception as e:
        # A bad option, file, folder or input (is_user_error): one line, exit status 2 (like
        # argparse). A bug, or --debug: the traceback.
        if args.debug or not is_user_error(e):
            raise
        print(f"fastadv {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
