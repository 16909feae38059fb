"""What the evaluation attacks share (APGD, APGD-T, FAB, Square, AutoAttack; issue #12).

These attacks decide, per point, whether an adversarial example exists: a point is *broken* when
an iterate within the ε-ball is misclassified (or, in a targeted mode, classified as its target).
A broken row leaves the attack at once (``compact=True``): its iterate is written to ``x_adv`` and
the later iterations run on fewer rows. ``compact=False`` keeps every row in the batch to the end
(the official code's way) and records the first breaking iterate, so the verdicts are the same.
APGD with EOT (``eot_iter`` > 1, for a randomised model, where one wrong pass is no verdict) keeps
every row to the end and records its latest breaking iterate, as the official code.

The torchattacks habits (``atk(x, y)``, ``set_normalization_used``, the targeted modes, inputs moved
to the model's device) are here; so are the per-point costs: ``forward``/``backward`` count the
forward and backward passes each point went through (rows of passes, not batches).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import ops
from ..ops._validation import FLOAT_DTYPES, compute_dtype
from .habits import TorchattacksHabits
from .base import (_check_float, _check_int, _labels, default_rows_per_pass,
                   explain_dtype_errors, input_range_message, join_rows, model_device, model_eval_mode,
                   row_passes)
from ..errors import UserError, UserTypeError

NORMS = ("linf", "l2")


@dataclass
class EvalResult:
    """What an evaluation attack found, per point and in input order.

    ``x_adv``: the adversarial example of a broken point, else the input; ``robust``: bool, True
    where the point was classified correctly and no attack broke it; ``forward``/``backward``:
    int64 counts of the passes spent on each point. AutoAttack adds ``broken_by`` (per point the
    name of the attack that broke it, ``"clean"`` when it was misclassified unattacked, ``None``
    when robust), ``accuracy`` (the robust accuracy after each attack, ``"clean"`` first),
    ``seconds`` (cumulative, per attack) and ``log`` (the lines it printed).
    """
    x_adv: Tensor
    robust: Tensor
    forward: Tensor
    backward: Tensor
    broken_by: Optional[list] = None
    accuracy: Optional[dict] = None
    seconds: Optional[dict] = None
    log: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else float("nan")


def check_norm(norm) -> str:
    """``"linf"`` or ``"l2"``; the official spellings ``"Linf"``/``"L2"`` are accepted."""
    key = norm.lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise UserError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return key


class EvalAttack(TorchattacksHabits):
    """Base of the evaluation attacks. ``atk(x, y)`` returns ``x_adv``; ``atk.run(x, y)`` an
    :class:`EvalResult`. ``x`` in [0, 1] (moved to the model's device), ``y`` int labels [N].
    ``seed`` seeds the attack's own generator at every call (the global RNG is untouched); the
    random draws come from a CPU generator, as in the official code, so a seed gives the same
    starting points on every device.

    ``rows_per_pass``: the most rows the model sees in one pass; more rows are split into equal
    passes whose logits are joined. None: :func:`~fastadv.attacks.base.default_rows_per_pass` on
    the CPU (passes of about 50k input values: 64 rows of MNIST, 16 of CIFAR), where a smaller
    pass keeps the activations in cache (on 216 MNIST rows, one thread, this project's 2-core
    EPYC: APGD-T 1.14× and Square 1.22× faster in passes of 54 than in one pass;
    ``benchmarks/rows_per_pass_ab.py``), all rows at once on a GPU. The split follows from the row
    count alone, so a seed still gives the same result; another ``rows_per_pass`` may change the
    logits in their last bits (a GEMM may round differently for another number of rows, as it may
    in the compaction's shrinking passes)."""

    def __init__(self, model: Callable[[Tensor], Tensor], norm: str = "linf", eps: float = 8 / 255,
                 seed: int = 0, compact: bool = True, rows_per_pass: Optional[int] = None):
        if not callable(model):
            raise UserTypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
        self.model = model
        self.norm = check_norm(norm)
        self.eps = _check_float("eps", eps)
        self.seed = _check_int("seed", seed)
        if not isinstance(compact, bool):
            raise UserTypeError(f"compact must be a bool, got {type(compact).__name__}")
        self.compact = compact
        if rows_per_pass is not None:
            rows_per_pass = _check_int("rows_per_pass", rows_per_pass, 1)
        self.rows_per_pass = rows_per_pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:.4g}, seed={self.seed})"

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.run(x, y).x_adv

    # ------------------------------------------------------------------ the entry point
    def run(self, x: Tensor, y: Tensor, targets: Optional[Tensor] = None) -> EvalResult:
        """Attack ``x`` [N, C, H, W] with labels ``y`` [N]. ``targets`` [N]: target classes (a
        targeted run: broken = classified as the target); see also the ``set_mode_*`` methods."""
        x, y = self._inputs(x, y)
        self._in_dtype = x.dtype
        x = x.to(compute_dtype(x))  # the attack's arithmetic; the model sees its input dtype
        n = x.shape[0]
        self._forward = torch.zeros(n, dtype=torch.int64, device=x.device)
        self._backward = torch.zeros_like(self._forward)
        self.warnings: list = []
        if n == 0:
            return EvalResult(x.to(self._in_dtype), torch.zeros(0, dtype=torch.bool, device=x.device),
                              self._forward, self._backward)
        gen = torch.Generator().manual_seed(self.seed)
        with model_eval_mode(self.model), torch.enable_grad(), explain_dtype_errors(self.model, x):
            with torch.no_grad():
                clean = self.logits(x, count=torch.arange(n, device=x.device))
            targets, y = self._targets_and_labels(clean, y, targets, gen)
            if targets is not None:
                targets = _labels(targets, x, "targets")
                self._check_classes(clean, targets, "targets")
            self._check_classes(clean, y, "y")
            x_adv, robust = self._run(x, y, targets, clean, gen)
            x_adv, robust = self._in_input_dtype(x_adv, x, robust, y, targets)
        return EvalResult(x_adv, robust, self._forward, self._backward, warnings=self.warnings)

    def _in_input_dtype(self, x_adv: Tensor, x: Tensor, robust: Tensor, y: Tensor,
                        targets: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """``x_adv`` in x's dtype. The model saw each iterate rounded to a float16/bfloat16 input
        dtype, which can be one rounding step outside the ε-ball: such points are pulled back
        inside (rounding towards x) and checked again; one no longer broken counts as robust."""
        r = x_adv.to(self._in_dtype)
        if self._in_dtype not in (torch.float16, torch.bfloat16):
            return r, robust
        lowp = self._in_dtype
        if self.norm == "linf":
            hi, lo = (x + self.eps).to(lowp), (x - self.eps).to(lowp)
            hi = torch.where(hi.float() > x + self.eps, torch.nextafter(hi, torch.zeros_like(hi)), hi)
            lo = torch.where(lo.float() < x - self.eps, torch.nextafter(lo, torch.ones_like(lo)), lo)
            fixed = torch.min(torch.max(r, lo), hi)
        else:
            d = r.float() - x
            norm = self._norm(d)
            fixed = torch.where(norm > self.eps, (x + d * (self.eps / norm) * 0.99).to(lowp), r)
            fixed = torch.where(self._norm(fixed.float() - x) > self.eps, x.to(lowp), fixed)
        moved = ((fixed != r).flatten(1).any(1) & ~robust).nonzero().flatten()
        if moved.numel():
            with torch.no_grad():
                logits = self.logits(fixed[moved].float(), count=moved)
            still = success(logits, y[moved], None if targets is None else targets[moved])
            robust[moved[~still]] = True
            fixed[moved[~still]] = x[moved[~still]].to(lowp)
        return fixed, robust

    restarts = 1

    def _run(self, x: Tensor, y: Tensor, targets: Optional[Tensor], clean: Tensor,
             gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x_adv, robust) for the batch; ``clean``: the model's logits at ``x``. For each round
        (:meth:`_rounds`: its targets), ``restarts`` runs, each on the points still robust (as the
        official code's ``perturb``)."""
        out = x.clone()
        robust = ~success(clean, y, targets)
        for round_targets in self._rounds(clean, targets):
            for restart in range(self.restarts):
                idx = robust.nonzero().flatten()  # one host read per run
                if idx.numel() == 0:
                    break
                broken = torch.zeros_like(robust)
                tgt = None if round_targets is None else round_targets[idx]
                self._single_run(x[idx], y[idx], tgt, idx, out, broken, gen, restart=restart,
                                 targeted=targets is not None)
                robust &= ~broken
        return out, robust

    def _rounds(self, clean: Tensor, targets: Optional[Tensor]):
        """The targets of each round of runs (None: untargeted): one round by default."""
        yield targets

    def _single_run(self, x_nat, y, tgt, idx, out, broken, gen, restart: int, targeted: bool) -> None:
        """One run on the rows ``idx`` of the batch (``x_nat``, ``y``, ``tgt`` are theirs): each
        row it breaks gets ``broken[idx] = True`` and ``out[idx] =`` its breaking iterate.
        ``targeted``: the user's targets (broken = classified as ``tgt``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces
    def _inputs(self, x, y, move: bool = True) -> tuple[Tensor, Tensor]:
        """``x``, ``y`` checked; moved to the model's device (``move=False``: left where they are,
        for AutoAttack, which moves one batch at a time)."""
        if not isinstance(x, Tensor):
            raise UserTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise UserTypeError(f"x must be float64, float32, float16 or bfloat16, got {x.dtype}")
        if x.dim() < 2:
            raise UserError(f"x must be a batch [N, ...] of inputs, got shape {tuple(x.shape)}")
        device = model_device(self.model)
        if device is not None and move:  # torchattacks' habit: inputs go where the model is
            x = x.to(device)
            y = y.to(device) if isinstance(y, Tensor) else y
        elif device is not None and isinstance(y, Tensor) and y.device != x.device:
            y = y.to(x.device)  # the labels stay with the inputs, wherever those are
        y = _labels(y, x, "y")
        x = x.detach()
        if x.numel() and bool(((x < 0) | (x > 1) | torch.isnan(x)).any()):
            raise UserError(input_range_message(x, 0.0, 1.0))
        return x, y

    def _check_classes(self, logits: Tensor, labels: Tensor, name: str) -> None:
        c = logits.shape[1]
        if labels.numel() and bool(((labels < 0) | (labels >= c)).any()):
            raise UserError(f"{name} has labels outside [0, {c}) for a model with {c} classes")

    def logits(self, x: Tensor, count: Optional[Tensor] = None) -> Tensor:
        """The model's logits at ``x`` (normalised first when ``set_normalization_used`` was
        called), in passes of at most ``rows_per_pass`` rows; ``count``: the rows' positions,
        whose forward counts go up by one."""
        x_in = self._normalized(x.to(getattr(self, "_in_dtype", x.dtype)))
        cap = self.rows_per_pass or default_rows_per_pass(x)
        out = join_rows([self.model(part) for part in row_passes(x_in, cap)])
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UserError(f"model must return logits of shape [{x.shape[0]}, C], got {got}")
        if count is not None:
            self._forward[count] += 1
        return out

    def _rand(self, shape, gen: torch.Generator, like: Tensor, normal: bool = False) -> Tensor:
        """Uniform [0, 1) (or standard normal) draws from the attack's CPU generator, float32 as
        the official code draws them, then moved to ``like``'s device and dtype."""
        t = torch.randn(shape, generator=gen) if normal else torch.rand(shape, generator=gen)
        return t.to(device=like.device, dtype=like.dtype)

    def _norm(self, d: Tensor) -> Tensor:
        """‖d‖ per row (the attack's norm), shaped to broadcast against ``d``."""
        flat = d.reshape(d.shape[0], -1)
        v = flat.abs().amax(1) if self.norm == "linf" else (flat ** 2).sum(1).sqrt()
        return v.view((-1,) + (1,) * (d.dim() - 1))


def ranked_targets(clean: Tensor, n_target_classes: int):
    """AutoAttack's target classes: for r = 2 … n + 1, the class with the r-th largest clean logit
    of each row (ties as ``sort`` orders them, as the official code)."""
    c = clean.shape[1]
    if n_target_classes > c - 1:
        raise UserError(f"n_target_classes must be at most C - 1 = {c - 1} for a model with {c} "
                        f"classes, got {n_target_classes}")
    order = clean.sort(dim=1)[1]  # ascending: column −r is the class of rank r
    for rank in range(2, n_target_classes + 2):
        yield order[:, -rank]


def success(logits: Tensor, y: Tensor, targets: Optional[Tensor]) -> Tensor:
    """Bool [M]: the row is broken (misclassified; or, targeted, classified as its target)."""
    pred = logits.argmax(1)
    return pred != y if targets is None else pred == targets


class ActiveRows:
    """The rows still in an attack run, and what happens when some are broken.

    ``index``: each row's position in the caller's batch. ``settle(leave, x_iter, state)`` records
    the rows with ``leave`` as broken at ``x_iter`` (``out[index] = x_iter``, ``broken[index] =
    True``). Compacted, those rows are removed from every tensor of ``state`` (a dict of batch-first
    tensors, packed with ``ops.compact_rows`` in one plan: one host read) and from ``index``;
    otherwise they stay, and only their first breaking iterate is kept (``last=True``, used with
    ``compact=False``: their latest, as the official APGD keeps it; for a randomised model, where
    one wrong pass is no verdict, so the rows must stay).
    """

    def __init__(self, index: Tensor, out: Tensor, broken: Tensor, compact: bool, last: bool = False):
        self.index, self.out, self.broken, self.compact, self.last = index, out, broken, compact, last
        self.m = index.shape[0]
        self.done = None if compact else torch.zeros(self.m, dtype=torch.bool, device=index.device)

    def settle(self, leave: Tensor, x_iter: Tensor, state: dict, verdict: Optional[Tensor] = None) -> dict:
        """``verdict``: which leaving rows are broken (default: all; Square stops a row at margin
        0, where the model's argmax may still be right)."""
        hit = leave if verdict is None else leave & verdict
        if not self.compact:
            new = leave if self.last else leave & ~self.done
            view = (-1,) + (1,) * (x_iter.dim() - 1)
            self.out[self.index] = torch.where((new & hit).view(view), x_iter.to(self.out.dtype),
                                               self.out[self.index])
            self.broken[self.index] |= new & hit
            self.done |= leave
            return state
        dest, m = ops.compaction_plan(leave)  # the one host read
        if m == self.m:
            return state
        self.broken[self.index] |= hit
        if verdict is not None:  # a row that stops unbroken keeps its input as x_adv
            view = (-1,) + (1,) * (x_iter.dim() - 1)
            x_iter = torch.where((leave & ~hit).view(view), self.out[self.index].to(x_iter.dtype), x_iter)
        ops.compact_rows(x_iter.to(self.out.dtype), dest, m, index=self.index, leavers=self.out, check=False)
        state = {k: (None if v is None else ops.compact_rows(v, dest, m, check=False))
                 for k, v in state.items()}
        self.index = ops.compact_rows(self.index, dest, m, check=False)
        self.m = m
        return state
