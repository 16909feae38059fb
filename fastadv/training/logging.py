"""Per-epoch logging: a table on stdout, ``history.csv`` and ``history.json`` in the run folder,
and a tqdm progress bar over the batches (off when stdout is not a terminal or ``progress=False``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any, Dict, Iterable, List, Optional

from ..errors import UserError
from .run_folder import atomic_write

# (key, header, width, format): the columns printed per epoch; every key goes to CSV/JSON.
COLUMNS = [
    ("epoch", "epoch", 5, "d"), ("lr", "lr", 8, ".4g"), ("tau", "tau", 3, ""), ("lam", "lam", 5, ".3g"),
    ("train_loss", "loss", 7, ".4f"), ("train_nat_acc", "tr-nat%", 7, ".2f"),
    ("train_adv_acc", "tr-adv%", 7, ".2f"), ("test_nat_acc", "test%", 6, ".2f"),
    ("test_pgd20_acc", "pgd20%", 6, ".2f"), ("bp_avg", "BP", 6, ".2f"),
    ("bp_executed_avg", "BPexec", 6, ".2f"), ("bp_saved", "saved%", 6, ".1f"),
    ("seconds", "sec", 7, ".1f"), ("eval_seconds", "eval-s", 6, ".1f"),
    ("images_per_sec", "img/s", 7, ".0f"),
]
# Columns printed only by runs whose rows have them (DAT's FOSC threshold, NoiLIn's rate, CAT's k
# and rollbacks, the validation accuracy of the last two).
EXTRA_COLUMNS = [("fosc_threshold", "c_t", 5, ".3f"), ("noise_rate", "noise", 5, ".3f"),
                 ("cat_k", "k", 2, "d"),
                 ("val_robust_acc", "val-rob%", 8, ".2f"), ("rolled_back_to", "back-to", 7, "d"),
                 ("test_aa_acc", "aa%", 6, ".2f")]
# Printed once above the table: what the columns measure.
LEGEND = ("tr-nat% / tr-adv%: accuracy on the training batches, clean / on the method's own "
          "adversarial examples (FAT's early-stopped ones, not PGD-20); test% / pgd20%: the fixed "
          "evaluation subset, natural / PGD-20; BP: PGD updates per training image (PGD-10 = 10), "
          "BPexec: backward passes run; sec: training, eval-s: evaluation")
HISTORY_KEYS = ["epoch", "lr", "tau", "lam", "train_loss", "train_nat_acc", "train_adv_acc",
                "test_nat_acc", "test_pgd20_acc", "bp_avg", "bp_executed_avg", "bp_saved",
                "bp_executed_saved", "seconds", "images_per_sec"]


def _fmt(value, width: int, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    if spec:
        try:
            return format(value, spec).rjust(width)
        except (TypeError, ValueError):
            pass
    return str(value).rjust(width)


def columns_for(row: Dict[str, Any]) -> list:
    """The printed columns of a run whose rows look like ``row``."""
    return COLUMNS + [c for c in EXTRA_COLUMNS if c[0] in row]


def format_header(columns=COLUMNS) -> str:
    return " ".join(h.rjust(w) for _, h, w, _ in columns)


def format_row(row: Dict[str, Any], columns=COLUMNS) -> str:
    return " ".join(_fmt(row.get(k), w, f) for k, _, w, f in columns)


def use_progress(progress: Optional[bool]) -> bool:
    """``None`` = automatic: a bar only when stdout is a terminal."""
    if progress is None:
        return bool(getattr(sys.stdout, "isatty", lambda: False)())
    return bool(progress)


def progress_bar(iterable: Iterable, total: int, enabled: bool, desc: str = ""):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


class RunLogger:
    """Writes the history after every epoch (whole files, atomically: a resumed run rewrites
    them from the checkpointed history) and prints one table row per epoch."""

    def __init__(self, out_dir: Optional[str], verbose: bool = True, stream=None):
        self.out_dir = out_dir
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stdout
        self._header_printed = False
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    def print(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def log_epoch(self, row: Dict[str, Any], history: List[Dict[str, Any]]) -> None:
        if not self._header_printed:
            self._columns = columns_for(row)
            self.print(LEGEND)
            self.print(format_header(self._columns))
            self._header_printed = True
        self.print(format_row(row, self._columns))
        self.write(history)

    def write(self, history: List[Dict[str, Any]]) -> None:
        if not self.out_dir:
            return
        _atomic_write_text(os.path.join(self.out_dir, "history.json"),
                           json.dumps(history, indent=1))
        keys = list(HISTORY_KEYS) + sorted({k for r in history for k in r} - set(HISTORY_KEYS))
        import io
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in history:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
        _atomic_write_text(os.path.join(self.out_dir, "history.csv"), buf.getvalue())


def read_history(run_dir: str) -> List[Dict[str, Any]]:
    path = os.path.join(run_dir, "history.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run_dir: no history.json in {run_dir!r} (is it a fastadv run folder?)")
    try:
        with open(path) as f:
            history = json.load(f)
    except ValueError as e:  # truncated, empty or not JSON: the user's file, not a bug
        raise UserError(f"run_dir: {path} is not a readable history ({e}); was the run's folder "
                        f"copied half-way?") from e
    if not isinstance(history, list):
        raise UserError(f"run_dir: {path} holds a {type(history).__name__}, not a fastadv history "
                        f"(a list of epochs)")
    return history
