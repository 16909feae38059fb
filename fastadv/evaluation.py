"""Robustness evaluation with the FAT papers' protocol (SPEC §4).

``fastadv.evaluate(model, data, attacks=("natural", "fgsm", "pgd20", "cw30"), eps=8/255)``

=============  ===============================================================================
name           attack (all L∞, uniform random start, inputs in [0, 1])
=============  ===============================================================================
``natural``    none: clean accuracy
``fgsm``       1 step, α = ε
``pgdK``       K steps of CE, α = ε/4 (``pgd20``, ``pgd100``, …)
``cwK``        K steps of the CW margin loss (confidence 50), α = ε/4 (``cw30``: the papers' C&W∞)
``pgd+``       5 restarts × 40 steps, α = 0.01·ε/0.031 (the official 0.01 at its ε = 0.031);
               robust only if correct at every check of every restart (always any-iterate)
``autoattack``  AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square), seed 0;
               ``aa-lite`` (APGD-CE, APGD-T), ``aa-plus``, ``aa-rand``
``apgd-ce``    one of AutoAttack's attacks alone (also ``apgd-dlr``, ``apgd-t``, ``fab``,
               ``fab-t``, ``square``)
=============  ===============================================================================

An attack object (anything with ``atk(x, y)`` → x_adv, e.g. a torchattacks attack) may stand in
the list beside the names; ``model`` may be any callable returning logits.

The final iterate is scored, unless ``any_iterate=True``: then a sample counts as broken as soon as
any check (a forward pass at an iterate) misclassifies it, and it leaves the batch at once
(``EarlyStopPGD(tau=0)``, compacted), so the attack is stronger and cheaper; survivors' last
iterate gets one final check.

``data``: an :class:`~fastadv.data.ImageDataset`, a tuple ``(x, y)`` of tensors (x in [0, 1] or
uint8), or any iterable of ``(x, y)`` batches (e.g. a ``BatchLoader``). Returns a dict
``{"n", "eps", "any_iterate", "accuracy": {name: %}, "seconds": {name: s}}``, and with several
attacks ``"worst_case"``: the percentage of points robust under every one of them (per point, as
AutoAttack combines its attacks); ``out=`` also writes it as JSON; ``verbose`` prints a table.

``distributed=True`` (every rank of an initialised process group must call it, with the same
data): rank ``r`` of ``W`` evaluates rows ``r, r + W, …`` (batches ``r, r + W, …`` of an iterable),
the correct counts and ``n`` are summed over the ranks (exact: no padding), ``seconds`` are the
slowest rank's, and only rank 0 prints and writes ``out``. The result then also holds
``world_size`` and ``local`` (this rank's ``n``, correct counts and, as a count, ``worst_case``). Pass the underlying module
(``ddp.module``), not the DDP wrapper. Without a process group it is the single-process call.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .errors import UserError, UserTypeError

DEFAULT_ATTACKS = ("natural", "fgsm", "pgd20", "cw30")
PGD_PLUS = {"restarts": 5, "steps": 40, "alpha": 0.01, "eps": 0.031}  # the official script's


class Evaluation:
    """One named evaluation: ``robust(model, x, y, eps, any_iterate)`` → bool [N], True where
    the sample resists it. ``note(eps)``: a line for the log, or None. ``whole_set``: ``evaluate``
    calls ``robust`` once on all its samples (held on the device) instead of batch by batch.
    ``rows_per_pass``: the most rows of one model pass (``evaluate`` sets it; None: the attacks'
    default: on the CPU passes of about 50k input values, 64 rows of MNIST)."""
    name = ""
    whole_set = False
    rows_per_pass: Optional[int] = None
    linf_eps = True  # attacks an L-inf ball of radius eps on [0, 1] images (so eps <= 1)

    def robust(self, model, x: Tensor, y: Tensor, eps: float, any_iterate: bool) -> Tensor:
        raise NotImplementedError

    def note(self, eps: float) -> Optional[str]:
        return None

    def _rows_per_pass(self, x: Tensor) -> Optional[int]:
        from .attacks.base import default_rows_per_pass
        return self.rows_per_pass or default_rows_per_pass(x)

    def adversarial(self, model, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """The attack's x_adv (``fastadv detect``'s adversarial data)."""
        raise UserError(f"attack: {self.name} scores points over restarts and makes no single "
                        f"adversarial example; use pgdK, fgsm, cwK, an AutoAttack name or an "
                        f"attack object")


class Natural(Evaluation):
    name = "natural"
    linf_eps = False

    def robust(self, model, x, y, eps, any_iterate):
        return _predict(model, x, self._rows_per_pass(x)) == y

    def adversarial(self, model, x, y, eps):
        return x


class PGDEval(Evaluation):
    """``steps`` steps of ``loss`` from a uniform start, α = ``alpha(ε)``, ``restarts`` times.
    Scored at the final iterate, or at any iterate (``any_iterate``)."""

    def __init__(self, name: str, steps: int, loss: str, alpha: Callable[[float], float], restarts: int = 1):
        self.name, self.steps, self.loss, self.alpha, self.restarts = name, steps, loss, alpha, restarts

    def fix_alpha(self, alpha: float) -> None:
        """The user's step instead of the default (not FGSM's, whose step is ε by definition)."""
        if self.steps > 1:
            self.alpha = lambda e, a=float(alpha): a

    def adversarial(self, model, x, y, eps):
        from . import attacks
        return attacks.PGD(model, eps=eps, alpha=self.alpha(eps), steps=self.steps,
                           random_start="uniform", loss=self.loss,
                           rows_per_pass=self._rows_per_pass(x))(x, y)

    def robust(self, model, x, y, eps, any_iterate):
        if not any_iterate:
            return _predict(model, self.adversarial(model, x, y, eps), self._rows_per_pass(x)) == y
        return _any_iterate_robust(model, x, y, eps, self.alpha(eps), self.steps, self.loss, self.restarts,
                                   self._rows_per_pass(x))


class PGDPlus(PGDEval):
    """The FAT papers' PGD+: 5 restarts × 40 steps, robust only if correct at every check of
    every restart. The official step 0.01 is for ε = 0.031; here it scales with ε (0.01·ε/0.031)
    unless the user fixes it."""

    def __init__(self):
        super().__init__("pgd+", PGD_PLUS["steps"], "ce", self._scaled, PGD_PLUS["restarts"])
        self.fixed = False

    @staticmethod
    def _scaled(eps: float) -> float:
        return PGD_PLUS["alpha"] * eps / PGD_PLUS["eps"]

    def fix_alpha(self, alpha: float) -> None:
        self.alpha, self.fixed = (lambda e, a=float(alpha): a), True

    def robust(self, model, x, y, eps, any_iterate):
        return _any_iterate_robust(model, x, y, eps, self.alpha(eps), self.steps, self.loss, self.restarts,
                                   self._rows_per_pass(x))

    adversarial = Evaluation.adversarial  # several restarts: no single x_adv

    def note(self, eps):
        if self.fixed:
            return f"pgd+: step alpha = {self.alpha(eps):.4g} (given)"
        return (f"pgd+: step alpha = {self.alpha(eps):.4g} = 0.01 * eps / 0.031 (the official 0.01 "
                f"is for eps = 0.031; pass alpha to fix it)")


class AutoAttackEval(Evaluation):
    """AutoAttack (a version, or one of its attacks alone with the standard version's settings, as
    the official ``run_standard_evaluation_individual``), seed 0. In ``evaluate`` it runs once
    on the whole set, as the official code does: each attack on the points still robust, in
    batches of 250 (or the evaluation's smaller batch size), the sanity checks on the first batch;
    the set waits on the CPU and each batch goes to the model's device. ``adversarial``
    (``fastadv detect``) runs it on each batch it is given."""
    whole_set = True

    def __init__(self, name: str, version: str = "standard", attacks: Optional[tuple] = None):
        self.name, self.version, self.attacks = name, version, attacks
        self.checked = False
        self.progress: Optional[bool] = False
        self.batch_size = 250  # the official batch; evaluate lowers it to its own batch size

    def _run(self, model, x, y, eps):
        from .attacks import AutoAttack
        aa = AutoAttack(model, eps=eps, version=self.version, attacks=self.attacks, seed=0,
                        sanity_checks=not self.checked, progress=self.progress,
                        batch_size=self.batch_size, rows_per_pass=self.rows_per_pass)
        self.checked = True
        return aa.run(x, y)

    def robust(self, model, x, y, eps, any_iterate):
        return self._run(model, x, y, eps).robust

    def adversarial(self, model, x, y, eps):
        return self._run(model, x, y, eps).x_adv


class CallableEval(Evaluation):
    """Any attack object: ``atk(x, y)`` → x_adv, robust where the model still classifies it."""
    linf_eps = False  # the object has its own eps and norm

    def __init__(self, attack):
        self.attack, self.name = attack, type(attack).__name__

    def adversarial(self, model, x, y, eps):
        return self.attack(x, y)

    def robust(self, model, x, y, eps, any_iterate):
        return _predict(model, self.attack(x, y), self._rows_per_pass(x)) == y


_AA_NAMES = {"autoattack": "standard", "aa": "standard", "autoattackstandard": "standard",
             "aastandard": "standard", "autoattacklite": "lite", "aalite": "lite",
             "autoattackplus": "plus", "aaplus": "plus", "autoattackrand": "rand", "aarand": "rand"}
_AA_SINGLE = {"apgdce": "apgd-ce", "apgddlr": "apgd-dlr", "apgdt": "apgd-t", "fab": "fab",
              "fabt": "fab-t", "square": "square"}


def parse_attack(name) -> Evaluation:
    """A name (or an attack object) → its :class:`Evaluation`."""
    if not isinstance(name, str):
        if callable(name):
            return CallableEval(name)
        raise UserTypeError(f"attacks: names must be strings or attack objects, got {name!r}")
    key = name.lower().replace("_", "").replace("-", "")
    if key in ("natural", "clean"):
        return Natural()
    if key == "fgsm":
        return PGDEval("fgsm", 1, "ce", lambda e: e)
    if key in ("pgd+", "pgdplus"):
        return PGDPlus()
    if key in _AA_NAMES:
        return AutoAttackEval(name, _AA_NAMES[key])
    if key in _AA_SINGLE:
        return AutoAttackEval(name, attacks=(_AA_SINGLE[key],))
    m = re.fullmatch(r"(pgd|cw)(\d+)", key)
    if m and int(m.group(2)) >= 1:
        return PGDEval(name, int(m.group(2)), "ce" if m.group(1) == "pgd" else "cw", lambda e: e / 4)
    raise UserError(f"attacks: unknown attack {name!r}; use natural, fgsm, pgdK (e.g. pgd20), "
                    f"cwK (e.g. cw30), pgd+, autoattack (or aa-lite, aa-plus, aa-rand), "
                    f"apgd-ce, apgd-dlr, apgd-t, fab, fab-t or square")


def _batches(data, batch_size: int, device, max_samples: Optional[int], rank: int = 0,
             world_size: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
    """Batches of ``data`` (its first ``max_samples``); with ``world_size`` > 1 only rank
    ``rank``'s share: rows ``rank::world_size`` of tensors, batches ``rank::world_size`` of an
    iterable."""
    from .data import ImageDataset
    if isinstance(data, ImageDataset):
        data = (data.images, data.labels)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x_all, y_all = data
        if x_all.shape[0] != y_all.shape[0]:
            raise UserError(f"data: {x_all.shape[0]} images but {y_all.shape[0]} labels")
        n = x_all.shape[0] if max_samples is None else min(max_samples, x_all.shape[0])
        if world_size > 1:
            rows = torch.arange(rank, n, world_size)
            x_all, y_all = x_all[rows.to(x_all.device)], y_all[rows.to(y_all.device)]
            n = rows.numel()
        for lo in range(0, n, batch_size):
            x = x_all[lo:min(lo + batch_size, n)].to(device)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x
            yield x, y_all[lo:lo + x.shape[0]].to(device)
        return
    if not isinstance(data, Iterable):
        raise UserTypeError(f"data must be an ImageDataset, a tuple (x, y) or an iterable of batches, "
                            f"got {type(data).__name__}")
    from .data.loader import unpack_batch
    seen = 0
    for i, batch in enumerate(data):
        x, y = unpack_batch(batch)
        if max_samples is not None:
            if seen >= max_samples:
                return
            x, y = x[:max_samples - seen], y[:max_samples - seen]
        seen += x.shape[0]
        if world_size > 1 and i % world_size != rank:
            continue
        x, y = x.to(device), y.to(device)
        yield (x.float().div_(255) if x.dtype == torch.uint8 else x), y


def _num_batches(data, batch_size: int, max_samples: Optional[int], world: int) -> Optional[int]:
    """How many batches :func:`_batches` yields to this process, when known (for the bar)."""
    from .data import ImageDataset
    if isinstance(data, ImageDataset):
        n = len(data)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        n = data[0].shape[0]
    else:
        try:
            return math.ceil(len(data) / world)
        except TypeError:
            return None
    n = n if max_samples is None else min(n, max_samples)
    return math.ceil(math.ceil(n / world) / batch_size)


def _predict(model, x: Tensor, rows_per_pass: Optional[int] = None) -> Tensor:
    """The model's classes at ``x``, in passes of at most ``rows_per_pass`` rows."""
    from .attacks.base import explain_dtype_errors, join_rows, row_passes
    with torch.no_grad(), explain_dtype_errors(model, x):
        return join_rows([model(part) for part in row_passes(x, rows_per_pass)]).argmax(1)


def _any_iterate_robust(model, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int,
                        loss: str, restarts: int, rows_per_pass: Optional[int] = None) -> Tensor:
    """Any-iterate scoring: EarlyStopPGD with τ = 0 removes a sample at its first wrong check;
    later restarts attack only the still-robust."""
    from . import attacks
    robust = torch.ones_like(y, dtype=torch.bool)
    for _ in range(restarts):
        idx = torch.nonzero(robust).flatten()
        if idx.numel() == 0:
            break
        atk = attacks.EarlyStopPGD(model, eps=eps, alpha=alpha, steps=steps, tau=0,
                                   random_start="uniform", loss=loss, rows_per_pass=rows_per_pass)
        res = atk.run(x[idx], y[idx])
        survived = res.updates == steps  # a leaver at check k got k < K updates
        # Survivors' last iterate was never checked: one final check.
        s_idx = torch.nonzero(survived).flatten()
        ok = torch.zeros_like(survived)
        if s_idx.numel():
            ok[s_idx] = _predict(model, res.x_adv[s_idx], rows_per_pass) == y[idx][s_idx]
        robust[idx] = ok
    return robust


def evaluate(model, data, attacks: Sequence = DEFAULT_ATTACKS, eps: float = 8 / 255,
             *, any_iterate: bool = False, batch_size: int = 256, max_samples: Optional[int] = None,
             device=None, out: Optional[str] = None, verbose: bool = True,
             distributed: bool = False, progress: Optional[bool] = False,
             alpha: Optional[float] = None, pgd_plus_alpha: Optional[float] = None,
             rows_per_pass: Optional[int] = None) -> Dict:
    """Accuracy (percent) of ``model`` (an ``nn.Module`` or any callable returning logits) under
    each of ``attacks``: names (see the module doc) or attack objects (``atk(x, y)`` → x_adv).
    ``progress``: a bar over the batches (``None``: only when stdout is a terminal; AutoAttack,
    which runs once on the whole set after them, has a bar per attack). ``alpha``:
    the step of the pgdK and cwK attacks instead of ε/4 (the official FAT-TRADES and FAT-MART
    scripts evaluate with 0.003); ``pgd_plus_alpha``: pgd+'s step instead of 0.01·ε/0.031.
    ``rows_per_pass``: the most rows the model sees in one pass of a named attack and of the
    predictions (the batch is split into equal passes; an attack object runs as it is); None: on the CPU passes of about 50k input values (64 rows of MNIST, 16 of
    CIFAR), where smaller passes stay in cache (PGD-20 1.38x and C&W-30 1.25x faster than one pass
    of 256 MNIST points; see :func:`~fastadv.attacks.base.default_rows_per_pass`), the whole batch
    on a GPU."""
    if not callable(model):
        raise UserTypeError(f"model must be an nn.Module or a callable returning logits, got {type(model).__name__}")
    if isinstance(attacks, str) or not isinstance(attacks, Iterable) or isinstance(attacks, nn.Module):
        attacks = (attacks,)  # one name or one attack object
    specs = {}
    for a in attacks:
        spec = parse_attack(a)
        key, k = (a if isinstance(a, str) else spec.name), 2
        while key in specs:  # two attack objects of one class: PGD, PGD#2
            key, k = f"{spec.name}#{k}", k + 1
        specs[key] = spec
    if not specs:
        raise UserError("attacks: give at least one attack")
    from .training.checks import check_linf_size, check_number
    if any(spec.linf_eps for spec in specs.values()):
        check_linf_size("eps", eps)  # an L-inf radius on [0, 1] images: at most 1
    else:
        check_number("eps", eps, minimum=0)  # unused by natural and attack objects
    for opt, value, kind in (("alpha", alpha, PGDEval), ("pgd_plus_alpha", pgd_plus_alpha, PGDPlus)):
        if value is None:
            continue
        check_linf_size(opt, value, strict=True)
        for spec in specs.values():
            if isinstance(spec, kind) and (kind is PGDPlus) == isinstance(spec, PGDPlus):
                spec.fix_alpha(value)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise UserError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if rows_per_pass is not None and (not isinstance(rows_per_pass, int) or isinstance(rows_per_pass, bool)
                                      or rows_per_pass < 1):
        raise UserError(f"rows_per_pass must be a positive int or None, got {rows_per_pass!r}")
    for spec in specs.values():
        spec.rows_per_pass = rows_per_pass
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(model, DistributedDataParallel):
        model = model.module  # attacks take input gradients: never through the DDP wrapper
    from .training import distributed as dist_utils
    distributed = bool(distributed) and dist_utils.is_distributed()
    rank, world = (dist_utils.get_rank(), dist_utils.get_world_size()) if distributed else (0, 1)
    is_module = isinstance(model, nn.Module)
    if device is None:
        from .attacks.base import model_device
        device = model_device(model) or torch.device("cpu")
    was_training = model.training if is_module else False
    if is_module:
        model.eval()
    correct = {name: 0 for name in specs}
    seconds = {name: 0.0 for name in specs}
    n = 0
    from .training.logging import progress_bar, use_progress
    show = use_progress(progress) and rank == 0
    per_batch = {k: v for k, v in specs.items() if not v.whole_set}
    whole = {k: v for k, v in specs.items() if v.whole_set}  # AutoAttack: once, on every sample
    held_x, held_y = [], []
    survived = []  # per batch, bool [B] on the CPU: robust under every attack so far
    try:
        batches = _batches(data, batch_size, device, max_samples, rank, world)
        total = _num_batches(data, batch_size, max_samples, world)
        for x, y in progress_bar(batches, total, show, desc=f"evaluating ({', '.join(specs)})"):
            n += x.shape[0]
            if whole:  # held on the CPU: AutoAttack moves one batch at a time to the device
                held_x.append(x.cpu())
                held_y.append(y.cpu())
            survived.append(torch.ones(x.shape[0], dtype=torch.bool))
            for name, spec in per_batch.items():
                t0 = time.perf_counter()
                robust = spec.robust(model, x, y, float(eps), any_iterate)
                correct[name] += int(robust.sum())
                seconds[name] += time.perf_counter() - t0
                survived[-1] &= robust.cpu()
        survived = torch.cat(survived) if survived else torch.zeros(0, dtype=torch.bool)
        if whole and held_x:
            x, y = torch.cat(held_x), torch.cat(held_y)  # the batches' rows, in their order
            del held_x, held_y
            for name, spec in whole.items():
                spec.progress = show  # its own bar, over each attack's batches
                spec.batch_size = min(spec.batch_size, batch_size)
                t0 = time.perf_counter()
                robust = spec.robust(model, x, y, float(eps), any_iterate)
                correct[name] += int(robust.sum())
                seconds[name] += time.perf_counter() - t0
                survived &= robust.cpu()
    finally:
        if is_module:
            model.train(was_training)
    local = None
    worst = int(survived.sum())
    if distributed:
        local = {"n": n, "correct": dict(correct), "worst_case": worst}
        names = list(specs)
        sums = dist_utils.all_reduce_sum(torch.tensor([n, worst] + [correct[k] for k in names],
                                                      dtype=torch.float64)).tolist()
        n, worst = int(round(sums[0])), int(round(sums[1]))
        correct = {k: int(round(v)) for k, v in zip(names, sums[2:])}
        seconds = {k: dist_utils.all_reduce_max(seconds[k]) for k in names}
    if n == 0:
        raise UserError("data: no samples to evaluate")
    notes = [line for line in (spec.note(float(eps)) for spec in specs.values()) if line]
    result = {"n": n, "eps": float(eps), "alpha": alpha, "any_iterate": bool(any_iterate),
              "accuracy": {k: 100.0 * v / n for k, v in correct.items()}, "seconds": seconds}
    if len(specs) > 1:  # per point: robust only if robust under every attack listed
        result["worst_case"] = 100.0 * worst / n
    if notes:
        result["notes"] = notes
    if distributed:
        result["world_size"] = world
        result["local"] = local
    if rank != 0:
        return result  # rank 0 prints and writes
    if verbose:
        print(format_table(result), file=sys.stdout, flush=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def format_table(result: Dict) -> str:
    mode = "any iterate" if result["any_iterate"] else "final iterate"
    lines = [f"n = {result['n']}, eps = {result['eps']:.4g} ({mode})", *result.get("notes", []),
             f"{'attack':<10} {'accuracy %':>10} {'seconds':>8}"]
    for name, acc in result["accuracy"].items():
        lines.append(f"{name:<10} {acc:>10.2f} {result['seconds'][name]:>8.1f}")
    if "worst_case" in result:
        lines.append(f"{'worst case':<10} {result['worst_case']:>10.2f} {'':>8}   (per point, over them all)")
    return "\n".join(lines)
