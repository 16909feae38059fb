"""AutoAttack (Croce & Hein, ICML 2020): the field's standard robustness evaluation, with the
official versions, log, sanity checks and seeding, and fastadv's compaction inside each attack.

==========  ==================================================================================
version     attacks, each run on the points still robust
==========  ==================================================================================
standard    APGD-CE → APGD-T (9 target classes) → FAB-T (9) → Square (5,000 queries)
plus        APGD-CE, APGD-DLR (5 restarts each) → FAB (5 restarts) → Square → APGD-T → FAB-T
rand        APGD-CE, APGD-DLR with EOT over 20 passes (for randomised defences)
lite        APGD-CE → APGD-T (9): fastadv's cheap version for monitoring (an upper bound)
==========  ==================================================================================

As in the official code the points still robust go through each attack in batches of
``batch_size`` (250), and each attack seeds its generator with ``seed`` on every batch, so the
random starts are the official ones; the global RNG, which a randomised model draws its noise from,
is seeded as well and restored after the run. After each attack every point of the batch is
evaluated once more at its ``x_adv`` (its input where the attack failed): the points misclassified
there are the broken ones. ``custom`` (with ``attacks=``) has the official constructor's settings.
The points stay where the caller has them (the CPU, say) and each batch goes to the model's
device, as in the official code, so a whole test set needs no room on the GPU; ``x_adv`` comes
back beside ``x``.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import model_device
from .apgd import APGD, APGDT
from .eval_base import EvalAttack, EvalResult
from .fab import FAB
from .square import Square
from ..errors import UserError

VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
    "lite": ("apgd-ce", "apgd-t"),
}
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# (APGD-CE/DLR's restarts, their EOT passes, untargeted FAB's restarts) as the official code sets
# them: by ``set_version``, and for "custom" (its own attacks_to_run) by the constructor. APGD-T
# (1 run per target, 9 targets), FAB-T (1 restart, 9 targets) and Square (5,000 queries, p_init
# 0.8) are the same in every version.
SETTINGS = {"standard": (1, 1, 1), "lite": (1, 1, 1), "plus": (5, 1, 5), "rand": (1, 20, 5),
            "custom": (5, 1, 5)}
AUTOCAST = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class AutoAttack(EvalAttack):
    """``AutoAttack(model, norm="linf", eps=8/255, version="standard", seed=0)``.

    ``atk(x, y)`` returns x_adv in input order; ``atk.run(x, y)`` an
    :class:`~fastadv.attacks.EvalResult` with, per point, ``robust``, ``broken_by`` (the attack that
    broke it; ``"clean"``: misclassified unattacked; ``None``: robust), ``forward``/``backward``
    (passes spent on it), and ``accuracy``/``seconds`` after each attack and the ``log``.

    Options: ``attacks`` (a sequence of ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``,
    ``square`` run in place of the version's list, with the version's settings: e.g. the standard
    version's attacks one by one; ``version="custom"`` gives them the settings of the official
    constructor, as its ``attacks_to_run``: APGD and FAB with 5 restarts, where the official code
    would leave FAB at 1 once FAB-T has run); ``batch_size`` (250, as the official code);
    ``verbose`` (print the official log's lines), ``log_path`` (append them to a file);
    ``progress`` (a bar over each attack's batches; None: when stdout is a terminal);
    ``compact`` (False: every iteration on every row, for comparison); ``autocast="bf16"`` (the
    model under bf16 autocast, used only if APGD-CE with it agrees with fp32 on the first
    ``autocast_check`` points; the clean pass and the re-check of every point stay in fp32);
    ``sanity_checks`` (False skips the official checks, e.g. on every batch after the first);
    ``rows_per_pass`` (the most rows per model pass inside a batch: a speed and memory knob that,
    unlike ``batch_size``, leaves the random starts and so, for a deterministic model, the results
    as they are; None: on the CPU passes of about 50k input values (64 rows of MNIST, 16 of CIFAR),
    the whole batch on a GPU, see :func:`~fastadv.attacks.base.default_rows_per_pass`; under
    ``rand`` the whole batch everywhere, as the official code, since a randomised model's noise
    depends on how its draws are split).

    Example::

        aa = fastadv.attacks.AutoAttack(model, norm="linf", eps=8/255, version="standard")
        res = aa.run(x_test[:1000], y_test[:1000])
        print(res.robust_accuracy, res.broken_by[:10])
    """

    def __init__(self, model, norm: str = "linf", eps: float = 8 / 255, version: str = "standard",
                 seed: int = 0, *, attacks: Optional[Sequence[str]] = None, batch_size: int = 250,
                 verbose: bool = False, log_path: Optional[str] = None, progress: Optional[bool] = False,
                 compact: bool = True, autocast: Optional[str] = None, autocast_check: int = 200,
                 sanity_checks: bool = True, rows_per_pass: Optional[int] = None):
        super().__init__(model, norm=norm, eps=eps, seed=seed, compact=compact, rows_per_pass=rows_per_pass)
        if attacks is not None:
            attacks = tuple(a.lower() for a in attacks)
            bad = [a for a in attacks if a not in ATTACKS]
            if bad or not attacks:
                raise UserError(f"attacks: unknown {bad or 'empty list'}; choose from {', '.join(ATTACKS)}")
        if not isinstance(version, str) or version not in SETTINGS or (version == "custom" and attacks is None):
            raise UserError(f"version must be one of {', '.join(VERSIONS)} (or 'custom' with "
                            f"attacks=...), got {version!r}")
        self.version = version
        self.attacks = attacks if attacks is not None else VERSIONS[version]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.verbose, self.log_path, self.progress = bool(verbose), log_path, progress
        if autocast not in AUTOCAST:
            raise UserError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
        self.autocast, self.autocast_check = autocast, autocast_check
        self.sanity_checks = bool(sanity_checks)
        restarts, eot, fab_restarts = SETTINGS[version]
        if version == "rand" and rows_per_pass is None:  # a random model's draws: one pass a batch
            rows_per_pass = self.rows_per_pass = batch_size
        kw = dict(norm=self.norm, eps=self.eps, seed=seed, compact=compact, rows_per_pass=rows_per_pass)
        self.subattacks = {
            "apgd-ce": APGD(model, loss="ce", restarts=restarts, eot_iter=eot, **kw),
            "apgd-dlr": APGD(model, loss="dlr", restarts=restarts, eot_iter=eot, **kw),
            "apgd-t": APGDT(model, n_target_classes=9, **kw),
            "fab": FAB(model, restarts=fab_restarts, targeted=False, **kw),
            "fab-t": FAB(model, restarts=1, targeted=True, n_target_classes=9, **kw),
            "square": Square(model, queries=5000, p_init=0.8, rescale_schedule=False, **kw),
        }

    def __repr__(self) -> str:
        return (f"AutoAttack(norm={self.norm!r}, eps={self.eps:.4g}, version={self.version!r}, "
                f"attacks={list(self.attacks)}, seed={self.seed})")

    def set_normalization_used(self, mean, std) -> "AutoAttack":
        super().set_normalization_used(mean, std)
        for sub in self.subattacks.values():
            sub.set_normalization_used(mean, std)
        return self

    # ------------------------------------------------------------------ the run
    def run(self, x: Tensor, y: Tensor, targets: Optional[Tensor] = None) -> EvalResult:
        if targets is not None or self.target_mode != "default":
            raise UserError("AutoAttack is untargeted (APGD-T and FAB-T choose their own targets); "
                            "use APGD, FAB or Square for a targeted attack")
        x, y = self._inputs(x, y, move=False)  # the points stay where they are; batches move
        n = x.shape[0]
        self._dev = model_device(self.model) or x.device  # where the model runs
        self._in_dtype, self._device_type = x.dtype, self._dev.type
        self._forward = torch.zeros(n, dtype=torch.int64, device=x.device)
        self._backward = torch.zeros_like(self._forward)
        self.warnings, self._log = [], []
        if n == 0:
            return EvalResult(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device),
                              self._forward, self._backward, [], {}, {})
        attacks = list(self.attacks)
        self._say(f"using {self.version} version including {', '.join(attacks)}.")
        if self.version == "rand" and getattr(self.model, "training", False) is True:
            self._warn("the model is in training mode, but AutoAttack runs it in eval mode (the "
                       "official code leaves the mode alone): randomness from train-mode layers such "
                       "as dropout is off; keep a randomised defence's noise active in eval mode")
        from ..training.logging import use_progress
        with self._eval_mode(), self._model_rng():  # modes and global RNG restored after the run
            if self.sanity_checks:
                self._sanity_checks(x[:self.batch_size].to(self._dev), y[:self.batch_size].to(self._dev))
            robust = self._clean_pass(x, y)
            self._autocast_ok = self._check_autocast(x, y)
            accuracy = {"clean": float(robust.float().mean())}
            self._say(f"initial accuracy: {accuracy['clean']:.2%}")
            broken_by = [None if r else "clean" for r in robust.tolist()]
            x_adv = x.clone()
            seconds, start = {}, time.perf_counter()
            show = use_progress(self.progress)
            for k, name in enumerate(attacks):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                self._attack_points(name, x, y, idx, robust, x_adv, broken_by,
                                    desc=f"AutoAttack {k + 1}/{len(attacks)} {name}" if show else None)
                accuracy[name] = float(robust.float().mean())
                seconds[name] = time.perf_counter() - start
                self._say(f"robust accuracy after {name.upper()}: {accuracy[name]:.2%} "
                          f"(total time {seconds[name]:.1f} s)")
        self._check_square(accuracy)
        res = self._norm(x_adv - x).flatten()
        self._say(f"max {'Linf' if self.norm == 'linf' else 'L2'} perturbation: {float(res.max()):.5f}, "
                  f"nan in tensor: {int(torch.isnan(x_adv).sum())}, max: {float(x_adv.max()):.5f}, "
                  f"min: {float(x_adv.min()):.5f}")
        self._say(f"robust accuracy: {float(robust.float().mean()):.2%}")
        return EvalResult(x_adv.to(self._in_dtype), robust, self._forward, self._backward,
                          broken_by, accuracy, seconds, list(self._log), list(self.warnings))

    def _attack_points(self, name, x, y, idx, robust, x_adv, broken_by, desc=None) -> None:
        """Run attack ``name`` on the robust points ``idx``, in batches. As in the official code
        every point of the batch is then evaluated again at its x_adv (its input where the attack
        failed), and the points misclassified there are the ones broken: a point the attack claims
        counts only if it is verified so; one it left counts if a randomised model now errs on it.
        ``desc``: a progress bar over the batches, with this title."""
        from ..training.logging import progress_bar
        sub = self.subattacks[name]
        host = x.device  # where the points and the per-point records live
        n_batches = math.ceil(idx.numel() / self.batch_size)
        for b in progress_bar(range(n_batches), n_batches, desc is not None, desc=desc or ""):
            rows = idx[b * self.batch_size:(b + 1) * self.batch_size]
            self._seed_model_rng()  # as the official perturb: a random model's noise repeats
            with self._autocast_ctx():
                res = sub.run(x[rows], y[rows])  # on the model's device
            self._forward[rows] += res.forward.to(host)
            self._backward[rows] += res.backward.to(host)
            for w in res.warnings:
                self._warn(w, emit=False)  # the attack has already warned
            with torch.no_grad():
                pred = self.logits(res.x_adv.to(x.dtype), count=rows).argmax(1)
            wrong = pred != y[rows].to(pred.device)
            claimed = ~res.robust
            unverified, unclaimed = int((claimed & ~wrong).sum()), int((~claimed & wrong).sum())
            if unverified:
                why = ("a randomised model's outputs vary" if self.version == "rand" else
                       "its passes ran under autocast, the re-check in fp32" if self._autocast_ok
                       else "rounding differs between batch sizes")
                self._warn(f"{name}: {unverified} points it reported broken are classified correctly "
                           f"when their x_adv is evaluated again ({why}); they stay robust")
            if unclaimed and self.version != "rand":  # a randomised model errs by chance
                self._warn(f"{name}: {unclaimed} points it left robust are misclassified when "
                           f"their input is evaluated again (the model's outputs vary); they count "
                           f"as broken, as in the official code")
            good = rows[wrong.to(host)]
            robust[good] = False
            x_adv[good] = res.x_adv[wrong].to(device=host, dtype=x_adv.dtype)
            for i in good.tolist():
                broken_by[i] = name
            self._say(f"{name} - {b + 1}/{n_batches} - {good.numel()} out of {rows.numel()} successfully perturbed")

    def _clean_pass(self, x: Tensor, y: Tensor) -> Tensor:
        robust = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for lo in range(0, x.shape[0], self.batch_size):
                rows = torch.arange(lo, min(lo + self.batch_size, x.shape[0]), device=x.device)
                logits = self.logits(x[rows].to(self._dev), count=rows)
                labels = y[rows].to(self._dev)
                self._check_classes(logits, labels, "y")
                robust[rows] = (logits.argmax(1) == labels).to(x.device)
        return robust

    @contextlib.contextmanager
    def _model_rng(self):
        """The global RNG (a randomised model's noise) seeded with ``seed`` for the run, as the
        official code seeds it, and restored afterwards: the caller's random stream is untouched."""
        cuda = [self._dev] if self._dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            self._seed_model_rng()
            yield

    def _seed_model_rng(self) -> None:
        """Seed the CPU's global generator and the model's GPU's (no other device's)."""
        torch.default_generator.manual_seed(self.seed)
        if self._dev.type == "cuda":
            with torch.cuda.device(self._dev):
                torch.cuda.manual_seed(self.seed)

    @contextlib.contextmanager
    def _eval_mode(self):
        from .base import model_eval_mode
        with model_eval_mode(self.model):
            yield

    # ------------------------------------------------------------------ log and warnings
    def _say(self, line: str) -> None:
        self._log.append(line)
        if self.verbose:
            print(line, file=sys.stdout, flush=True)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    def _warn(self, msg: str, emit: bool = True) -> None:
        if msg in self.warnings:
            return
        self.warnings.append(msg)
        self._say(f"Warning: {msg}")
        if emit:
            warnings.warn(msg, stacklevel=3)

    # ------------------------------------------------------------------ the official sanity checks
    def _sanity_checks(self, x: Tensor, y: Tensor) -> None:
        with torch.no_grad(), self._eval_mode():
            outs = [self.logits(x).float() for _ in range(1 if self.version == "rand" else 5)]
        c = outs[0].shape[1]
        if self.version != "rand":
            unit = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
            diff = max(float((a - b).norm(dim=1).max()) for i, a in enumerate(unit) for b in unit[i + 1:])
            flips = len({int((o.argmax(1) == y).sum()) for o in outs}) > 1
            if flips or diff > 1e-4:
                self._warn("the model's outputs change from one call to the next: it seems to be a "
                           "randomized defense; use version='rand'")
        o = outs[0]
        if bool(o.max() < 1 + 1e-5) and bool(o.min() > -1e-5) and bool(((o.sum(1) - 1).abs() < 1e-5).all()):
            self._warn("the model's outputs look like probabilities (softmax): AutoAttack needs the "
                       "logits")
        if self._computes_gradients(x):
            self._warn("the model computes gradients in its forward pass: it seems to be a dynamic "
                       "defense, for which AutoAttack may be insufficient")
        needs = {"apgd-dlr": 3, "apgd-t": 4}
        for name in self.attacks:
            if c < needs.get(name, 2):
                raise UserError(f"{name} needs at least {needs[name]} classes; the model has {c}")
        for name in ("apgd-t", "fab-t"):
            sub = self.subattacks[name]
            if name in self.attacks and sub.n_target_classes > c - 1:
                sub.n_target_classes = c - 1
                self._say(f"{name}: {c - 1} target classes (the model has {c} classes)")

    def _computes_gradients(self, x: Tensor) -> bool:
        """The official check for dynamic defenses: does a forward pass call autograd?"""
        calls = []

        def trace(frame, event, arg):
            if event == "call" and frame.f_code.co_name in ("grad", "backward", "_make_grads"):
                calls.append(frame.f_code.co_name)
            return None
        old = sys.gettrace()
        sys.settrace(trace)
        try:
            with torch.no_grad(), self._eval_mode():
                self.logits(x[:2])
        finally:
            sys.settrace(old)
        return bool(calls)

    def _check_square(self, accuracy: dict) -> None:
        if "square" in accuracy and len(accuracy) > 2:
            others = min(v for k, v in accuracy.items() if k != "square")
            if accuracy["square"] < others - 0.002:
                self._warn(f"Square Attack has decreased the robust accuracy by "
                           f"{others - accuracy['square']:.2%}: the gradient-based attacks may be "
                           f"unreliable on this model (consider more Square queries or an adaptive "
                           f"attack)")

    # ------------------------------------------------------------------ bf16 autocast
    def _check_autocast(self, x: Tensor, y: Tensor) -> bool:
        """Whether the attacks may run the model under ``autocast``: APGD-CE with it must agree
        with fp32 on the first ``autocast_check`` points (else fp32, with a warning). The clean
        pass and the re-check of every point stay in fp32."""
        if self.autocast is None:
            return False
        m = min(self.autocast_check, x.shape[0])
        probe = APGD(self.model, norm=self.norm, eps=self.eps, seed=self.seed)
        if self._mean is not None:
            probe.set_normalization_used(self._mean, self._std)
        runs = [probe.run(x[:m], y[:m])]
        with torch.autocast(self._device_type, dtype=AUTOCAST[self.autocast]):
            runs.append(probe.run(x[:m], y[:m]))
        for r in runs:  # the probe's passes are part of the run's cost
            self._forward[:m] += r.forward.to(x.device)
            self._backward[:m] += r.backward.to(x.device)
        ref, low = runs[0].robust, runs[1].robust
        differ = int((ref != low).sum())
        self._say(f"autocast {self.autocast}: APGD-CE on {m} points gives {int(low.sum())} robust "
                  f"against {int(ref.sum())} in fp32 ({differ} points differ)")
        if differ > max(1, m // 100):
            self._warn(f"autocast {self.autocast} disagrees with fp32 on {differ} of {m} points: "
                       f"running in fp32")
            return False
        return True

    def _autocast_ctx(self):
        if not getattr(self, "_autocast_ok", False):
            return contextlib.nullcontext()
        return torch.autocast(self._device_type, dtype=AUTOCAST[self.autocast])
