"""Run folders at a glance: ``fastadv plot RUN`` (one run's curves) and ``fastadv compare RUN...``
(a table and a figure across runs: natural and PGD-20 accuracy, BPs and time; FAT against AT is
the comparison every user wants)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence
from .errors import MissingDependencyError, UserError


@dataclass
class Run:
    """A run folder's history and the options it was trained with (from ``last.pt``)."""
    path: str
    history: List[Dict[str, Any]]
    config: Dict[str, Any]

    @property
    def label(self) -> str:
        c = self.config
        if not c.get("method"):
            return os.path.basename(os.path.normpath(self.path))
        tau = f" τ={c['tau']}" if c.get("tau") is not None else ""
        return f"{c['method']}{tau}"

    def column(self, key: str):
        """(epochs, values) of ``key`` where it was measured."""
        pts = [(r["epoch"], r[key]) for r in self.history if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    @property
    def train_seconds(self) -> float:
        return sum(r.get("seconds") or 0.0 for r in self.history)

    @property
    def eval_seconds(self) -> float:
        return sum(r.get("eval_seconds") or 0.0 for r in self.history)

    @property
    def bp_per_image(self) -> float:
        """Σ over epochs of PGD updates per training image (the papers' BP)."""
        return sum(r.get("bp_avg") or 0.0 for r in self.history)

    @property
    def best_pgd20(self) -> Optional[float]:
        vals = self.column("test_pgd20_acc")[1]
        return max(vals) if vals else None


def read_run(run_dir: str) -> Run:
    """Read ``history.json`` (and the config in ``last.pt``, when there) of a run folder."""
    from .training.logging import read_history
    history = read_history(run_dir)
    if not history:
        raise UserError(f"run_dir: {run_dir!r} has an empty history")
    config: Dict[str, Any] = {}
    last = os.path.join(run_dir, "last.pt")
    if os.path.isfile(last):
        from .training.checkpoint import load_checkpoint
        config = load_checkpoint(last).get("config") or {}
    return Run(run_dir, history, config)


def _lr_drops(run: Run) -> List[int]:
    """Epochs whose lr is lower than the epoch before (the schedule's drops)."""
    h = run.history
    return [h[i]["epoch"] for i in range(1, len(h))
            if h[i].get("lr") is not None and h[i - 1].get("lr") is not None
            and h[i]["lr"] < h[i - 1]["lr"]]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a one-line error without matplotlib."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError("plots need matplotlib: pip install matplotlib (or the "
                                     "extra: pip install -e '.[plot]')")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_run(run_dir: str, out: Optional[str] = None) -> str:
    """Accuracy (training natural / on the method's own adversarial examples, test natural and
    PGD-20) and BPs per epoch, with the best PGD-20 epoch and the lr drops marked; a PNG."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    run = read_run(run_dir)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (("train_nat_acc", "train, natural", ":"),
                              ("train_adv_acc", "train, on the method's own adversarial examples", ":"),
                              ("test_nat_acc", "test, natural", "-"),
                              ("test_pgd20_acc", "test, PGD-20", "-")):
        ep, vals = run.column(key)
        if vals:
            a1.plot(ep, vals, style, marker="o", markersize=3, label=label)
    best = run.best_pgd20
    if best is not None:
        ep, vals = run.column("test_pgd20_acc")
        b = ep[vals.index(best)]
        a1.plot([b], [best], marker="*", markersize=14, color="crimson", linestyle="none",
                label=f"best PGD-20: {best:.2f}% (epoch {b})")
    for ax in (a1, a2):
        for i, d in enumerate(_lr_drops(run)):
            ax.axvline(d, color="gray", linestyle=":", linewidth=1,
                       label="lr drop" if i == 0 and ax is a1 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    a1.set_ylabel("accuracy (%)")
    a1.legend(fontsize=8)
    ep, bp = run.column("bp_avg")
    a2.plot(ep, bp, marker="o", label="BP: PGD updates per image")
    ep, bx = run.column("bp_executed_avg")
    a2.plot(ep, bx, marker="s", label="backward passes run per image")
    steps = run.config.get("steps") or _steps_from_history(run)
    if steps:
        a2.axhline(steps, color="gray", linestyle="--", label=f"PGD-{steps} (AT)")
    a2.set_ylabel("per training image and epoch")
    a2.set_ylim(bottom=0)
    a2.legend(fontsize=8)
    fig.suptitle(f"{run.label}: {os.path.basename(os.path.normpath(run_dir))}")
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _steps_from_history(run: Run) -> Optional[int]:
    """K = bp_avg / (1 − saving) from any epoch with a saving below 100 % (old runs lack config)."""
    return next((round(r["bp_avg"] / (1 - r["bp_saved"] / 100)) for r in run.history
                 if r.get("bp_saved") is not None and r["bp_saved"] < 100), None)


COMPARE_COLUMNS = ("run", "method", "epochs", "natural %", "PGD-20 %", "best PGD-20 %",
                   "BP / image", "train s", "eval s", "time vs first")


def compare_table(runs: Sequence[Run]) -> str:
    """One row per run: the last epoch's natural and PGD-20 accuracy, the best PGD-20, the BPs
    per training image over the whole run, training and evaluation seconds, and the training time
    relative to the first run."""
    rows = []
    first = runs[0].train_seconds if runs else 0.0
    for r in runs:
        last = r.history[-1]
        fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
        rows.append((os.path.basename(os.path.normpath(r.path)), r.label, str(len(r.history)),
                     fmt(last.get("test_nat_acc")), fmt(last.get("test_pgd20_acc")),
                     fmt(r.best_pgd20), fmt(r.bp_per_image), fmt(r.train_seconds, ".1f"),
                     fmt(r.eval_seconds, ".1f"),
                     f"{r.train_seconds / first:.2f}x" if first > 0 else "-"))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COMPARE_COLUMNS)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COMPARE_COLUMNS)] + [line(row) for row in rows])


def compare_runs(run_dirs: Sequence[str], out: Optional[str] = None) -> tuple:
    """Read ``run_dirs``; return ``(table text, path of the PNG)``: PGD-20 and natural test
    accuracy per epoch, and PGD-20 accuracy against cumulative BPs and against training time."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    if not run_dirs:
        raise UserError("runs: give at least one run folder")
    runs = [read_run(d) for d in run_dirs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (a_pgd, a_nat), (a_bp, a_time) = axes
    for r in runs:
        ep, pgd = r.column("test_pgd20_acc")
        line, = a_pgd.plot(ep, pgd, marker="o", markersize=3, label=r.label)
        ep_n, nat = r.column("test_nat_acc")
        a_nat.plot(ep_n, nat, marker="o", markersize=3, color=line.get_color(), label=r.label)
        cum_bp, cum_t, acc = [], [], []
        bp = t = 0.0
        for row in r.history:
            bp += row.get("bp_avg") or 0.0
            t += row.get("seconds") or 0.0
            if row.get("test_pgd20_acc") is not None:
                cum_bp.append(bp), cum_t.append(t), acc.append(row["test_pgd20_acc"])
        a_bp.plot(cum_bp, acc, marker="o", markersize=3, color=line.get_color(), label=r.label)
        a_time.plot(cum_t, acc, marker="o", markersize=3, color=line.get_color(), label=r.label)
    for ax, title, xlabel in ((a_pgd, "test PGD-20 accuracy", "epoch"),
                              (a_nat, "test natural accuracy", "epoch"),
                              (a_bp, "PGD-20 accuracy against BPs spent", "cumulative BP per image"),
                              (a_time, "PGD-20 accuracy against training time", "training seconds")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in (a_pgd, a_nat):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out = out or "compare.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return compare_table(runs), out
