"""What every attack shares: argument checks, the attack context, one check (forward + backward
w.r.t. the input only), the projected step, and :class:`AttackResult` (SPEC §2)."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..losses import ATTACK_LOSSES, ce_loss, cw_loss, kl_loss
from ..models.heads import forward_heads, head_weights, weighted_heads
from ..ops._validation import FLOAT_DTYPES, check_clip, compute_dtype, per_sample
from .habits import TorchattacksHabits
from ..errors import UserError, UserTypeError

NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "normal", None)


@dataclass
class AttackResult:
    """What an attack did, per sample and in total (input order throughout).

    ``updates``: PGD updates each sample received; ``checks``: checks (forward + backward at an
    iterate) it went through; ``kappa``: checks at which it was classified correctly (GAIRAT's κ;
    in a targeted run: not classified as its target);
    ``bp`` = Σ updates (the papers' "BP": PGD-K = K per sample); ``bp_executed`` = Σ checks (the
    backward passes that ran, per sample); ``rows_computed``: rows that went through a forward and
    backward pass in total (= ``bp_executed`` when compacted; more with a fixed-shape mask).
    """
    x_adv: Tensor
    updates: Tensor
    checks: Tensor
    kappa: Tensor
    bp: int
    bp_executed: int
    rows_computed: int
    extras: Optional[dict] = None  # what a composite attack adds (GAIR-RST's C&W iterate, x_cw)


def _check_int(name: str, v, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserTypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {v}")
    return v


CPU_PASS_VALUES = 64 * 784  # input values per model pass on the CPU: 64 MNIST images
CPU_MIN_ROWS_PER_PASS = 16


def default_rows_per_pass(x: Tensor) -> Optional[int]:
    """The evaluations' pass size for the batch ``x``: on the CPU, passes of about
    ``CPU_PASS_VALUES`` input values, at least 16 rows (64 rows of 1×28×28 MNIST, 16 of 3×32×32
    CIFAR; an evaluation batch of 8×8 digits in one pass), where smaller passes keep the
    activations in cache. Forward + input gradient of 256 rows against one pass, 1 and 2 threads,
    this project's 2-core EPYC (``benchmarks/pass_size_micro.py``): PreActResNet-18 on CIFAR 1.24x
    and 1.49x faster in passes of 16 (1.20x and 1.55x in passes of 64: the two within the noise
    of each other); the MNIST CNN 1.25x and 1.24x in passes of 64 (PGD-20 1.38x:
    ``benchmarks/rows_per_pass_ab.py``); the digits CNN no faster split (0.99-1.04x in passes of 64,
    0.61-0.77x in passes of 16). None (every row in one pass) on an accelerator."""
    if x.device.type != "cpu":
        return None
    per_row = max(1, math.prod(x.shape[1:]))
    return max(CPU_MIN_ROWS_PER_PASS, CPU_PASS_VALUES // per_row)


def row_passes(x: Tensor, rows_per_pass: Optional[int]) -> tuple:
    """``x``'s rows in equal passes of at most ``rows_per_pass`` rows (130 rows, 64: 44 + 43 + 43,
    no small remainder); one pass when ``rows_per_pass`` is None or every row fits. The split
    follows from the row count alone, so a seeded run stays reproducible."""
    if rows_per_pass is None or x.shape[0] <= rows_per_pass:
        return (x,)
    return x.tensor_split(-(-x.shape[0] // rows_per_pass))


def join_rows(outs: list):
    """The passes' logits joined along the rows; a pass's output that is not logits [n, C] is
    returned as it is, for the caller's shape check to name."""
    if len(outs) == 1:
        return outs[0]
    bad = next((o for o in outs if not isinstance(o, Tensor) or o.dim() != 2), None)
    return bad if bad is not None else torch.cat(outs)


def _check_float(name: str, v, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserTypeError(f"{name} must be a float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        raise UserError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {v}")
    return v


def _check_scalar_or_tensor(name: str, v) -> None:
    """Floats are checked now; [N] tensors when the batch is known (``ops`` checks their values)."""
    if isinstance(v, Tensor):
        return
    _check_float(name, v)


def normalize_random_start(v) -> Optional[str]:
    """``"uniform"``, ``"normal"`` or ``None``; ``True``/``False`` (torchattacks' habit) mean uniform/none."""
    if v is True:
        return "uniform"
    if v is False:
        return None
    if v not in RANDOM_STARTS:
        raise UserError(f"random_start must be 'uniform', 'normal' or None, got {v!r}")
    return v


@contextlib.contextmanager
def explain_dtype_errors(model, x: Tensor):
    """Turn the ``RuntimeError`` torch raises deep inside a layer when ``x`` and the model's
    parameters have different dtypes into a ``TypeError`` naming both. Only on failure: a model
    that casts its input itself (or autocast) is not second-guessed."""
    try:
        yield
    except RuntimeError as e:
        dtype = (next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
                 if isinstance(model, nn.Module) else None)
        if dtype is None or dtype == x.dtype or "type" not in str(e).lower():
            raise  # torch's messages: "same dtype", "Input type ... bias type", "scalar type"
        raise UserTypeError(f"x is {x.dtype} but the model's parameters are {dtype}: pass "
                            f"x.to({dtype}), convert the model (model.to({x.dtype})), or run under "
                            f"torch.autocast") from e


@contextlib.contextmanager
def model_eval_mode(model):
    """``model`` in eval mode for the block; every submodule's own mode is restored afterwards (a
    frozen BN inside a training model stays frozen)."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [m.training for m in modules]
    if modules:
        model.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def model_device(model) -> Optional[torch.device]:
    """The device of an ``nn.Module``'s parameters (None for a parameterless module or a plain
    callable)."""
    if isinstance(model, nn.Module):
        return next((p.device for p in model.parameters()), None)
    return None


def outside_box(x: Tensor, lo: float, hi: float) -> Tensor:
    """0-dim bool on x's device: does x have a value outside [lo, hi], or a NaN? (No host read.)"""
    return ~((x >= lo) & (x <= hi)).all()


def input_range_message(x: Tensor, lo: float, hi: float) -> str:
    """The error for inputs outside the attack's box (computed only when raising)."""
    finite = x[torch.isfinite(x)]
    seen = (f"[{finite.min().item():g}, {finite.max().item():g}]" if finite.numel() else "no finite values")
    nan = ", and NaN or inf" if finite.numel() < x.numel() else ""
    hint = " (images in 0 … 255? divide them by 255)" if finite.numel() and finite.max().item() > 1.5 * hi + 1 else ""
    return f"x must lie in [{lo:g}, {hi:g}], got values in {seen}{nan}{hint}"


class Attack(TorchattacksHabits):
    """A projected-gradient attack on ``model`` (any callable mapping [N, ...] inputs in
    [clip_min, clip_max] to logits [N, C]). ``atk(x, y)`` returns the adversarial tensor,
    ``atk.run(x, y)`` an :class:`AttackResult`.

    The model is put in eval mode for the attack and its mode restored afterwards; gradients are
    taken w.r.t. the input only (``torch.autograd.grad``), never the parameters; ``x`` is not
    changed. Autocast (e.g. bf16) around the call applies to the model; the iterates keep ``x``'s
    dtype. ``eps``/``alpha`` are floats or per-sample tensors [N]. Inputs are moved to the model's
    device. ``loss`` may be a callable ``loss(logits, y)`` → per-sample losses [N] (or their sum)
    to maximise; ``loss(logits, y, targets)`` in a targeted mode.

    ``rows_per_pass``: the most rows the model sees in one pass (more are split into equal passes
    whose logits are joined; the model runs in eval mode, so a row's logits do not depend on the
    others'). None, the default: every row in one pass, as the official training loops run it.
    :func:`fastadv.evaluate` passes :func:`default_rows_per_pass` on the CPU (64 rows of MNIST),
    where PGD-20 and C&W-30 on 256 MNIST points of an AT CNN ran 1.38x and 1.25x faster in passes of
    64 (1 thread; ``benchmarks/rows_per_pass_ab.py``).
    A GEMM may round differently for another row count, so another pass size may change the last
    bits of the logits.

    Targeted (``run(x, y, targets=...)`` or a ``set_mode_targeted_*`` mode; every attack): the
    loss pulls each point towards its target (−CE to the target; the C&W margin of the target over
    the others), an early stop judges "classified as the target" in place of "misclassified", and
    ``kappa`` counts the checks at which the point resisted (untargeted: classified correctly;
    targeted: not classified as its target). TRADES' ``loss="kl"`` has no targeted mode.
    """

    def __init__(self, model: Callable[[Tensor], Tensor], eps=8 / 255, alpha=2 / 255, steps: int = 10,
                 random_start="uniform", norm: str = "linf", loss: str = "ce", *,
                 confidence: float = 50.0, clip_min: float = 0.0, clip_max: float = 1.0,
                 sigma: float = 0.001, omega: float = 0.0, rows_per_pass: Optional[int] = None):
        if not callable(model):
            raise UserTypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
        _check_scalar_or_tensor("eps", eps)
        _check_scalar_or_tensor("alpha", alpha)
        if norm not in NORMS:
            raise UserError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not callable(loss) and loss not in ATTACK_LOSSES:
            raise UserError(f"loss must be one of {', '.join(ATTACK_LOSSES)} or a callable, got {loss!r}")
        self.model = model
        self.eps, self.alpha = eps, alpha
        self.steps = _check_int("steps", steps)
        self.random_start = normalize_random_start(random_start)
        self.norm, self.loss = norm, loss
        self.confidence = _check_float("confidence", confidence, minimum=-math.inf)
        self.clip_min, self.clip_max = check_clip(clip_min, clip_max)
        self.sigma = _check_float("sigma", sigma)
        self.omega = _check_float("omega", omega)
        self.rows_per_pass = None if rows_per_pass is None else _check_int("rows_per_pass", rows_per_pass, 1)

    def __repr__(self) -> str:
        eps = "tensor" if isinstance(self.eps, Tensor) else f"{self.eps:.4g}"
        alpha = "tensor" if isinstance(self.alpha, Tensor) else f"{self.alpha:.4g}"
        return (f"{type(self).__name__}(eps={eps}, alpha={alpha}, steps={self.steps}, norm={self.norm!r}, "
                f"loss={self.loss!r}, random_start={self.random_start!r})")

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.run(x, y).x_adv

    # ------------------------------------------------------------------ the public entry point
    def run(self, x: Tensor, y: Tensor, check_labels: Optional[Tensor] = None,
            targets: Optional[Tensor] = None) -> AttackResult:
        """``check_labels``: the labels the checks judge against (early stopping, κ) when they
        differ from ``y``, the labels of the attack loss (NoiLIn attacks noisy labels and judges
        the clean ones); default ``y``. ``targets`` [N]: a targeted run."""
        x_nat, y, eps, alpha = self._prepare(x, y)
        self._targets = None
        if targets is not None or self.target_mode != "default":
            if self.loss == "kl":
                raise UserError("loss='kl' (TRADES) has no targeted mode")
            if targets is not None:
                self._targets = _labels(_on(targets, x_nat), x_nat, "targets")
            elif x_nat.shape[0]:  # a mode: its targets come from the clean logits
                with torch.no_grad(), model_eval_mode(self.model):
                    clean = self._forward(x_nat)
                self._targets, y = self._targets_and_labels(clean, y, None)
        y_check = y if check_labels is None else _labels(_on(check_labels, x_nat), x_nat, "check_labels")
        n = x_nat.shape[0]
        if n == 0:
            z = torch.zeros(0, dtype=torch.int64, device=x_nat.device)
            return AttackResult(x_nat.clone(), z, z.clone(), z.clone(), 0, 0, 0)
        with self._attack_mode():
            # The checks of the inputs and the model's outputs, kept on the device and read once, at
            # the end, with the attack's own counts (``host_read``): x outside [clip_min,
            # clip_max] or NaN (it would be clipped silently), labels outside [0, C), non-finite
            # logits.
            self._flags = torch.zeros(3, dtype=torch.bool, device=x_nat.device)
            self._flags[0] = outside_box(x_nat, self.clip_min, self.clip_max)
            self._x = x_nat
            self._flags_read = False
            self._classes = None
            self._check_labels = None if check_labels is None else y_check  # range-checked too
            if self._targets is not None:
                self._check_labels = self._targets if check_labels is None else \
                    torch.cat([y_check, self._targets])
            with explain_dtype_errors(self.model, x_nat):
                clean = self._clean_logits(x_nat) if self.loss == "kl" else None
                res = self._attack(x_nat, y, eps, alpha, clean, y_check)
        if not self._flags_read:
            self.host_read([])
        return res

    def host_read(self, values: list) -> list:
        """The attack's one host read: ``values`` (0-dim integer tensors), the output checks and the
        compaction kernels' error flag together; raises if a check failed, else returns the values
        as Python ints."""
        device = self._flags.device
        got = torch.cat([torch.stack(values).to(torch.int64) if values else self._flags.new_zeros(0, dtype=torch.int64),
                         self._flags.to(torch.int64), ops.library.error_flag(device).to(torch.int64)]).tolist()
        self._flags_read = True
        ops.library.raise_if_flagged(device, bool(got[-1]))  # a compaction's out-of-range plan
        got = got[:-1]
        bad_x, bad_labels, bad_logits = got[-3:]
        x, self._x = self._x, None
        if bad_x:
            raise UserError(input_range_message(x, self.clip_min, self.clip_max))
        if bad_labels:
            c = self._classes
            raise UserError(f"y has labels outside [0, {c}) for a model with {c} classes")
        if bad_logits:
            raise UserError("model returned non-finite logits (nan or inf) during the attack")
        return got[:-3]

    def _attack(self, x_nat: Tensor, y: Tensor, eps: Tensor, alpha: Tensor,
                clean: Optional[Tensor], y_check: Tensor) -> AttackResult:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces
    def _prepare(self, x, y):
        if not isinstance(x, Tensor):
            raise UserTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise UserTypeError(f"x must be float64, float32, float16 or bfloat16, got {x.dtype}")
        if x.dim() < 1:
            raise UserError("x must have a batch dimension first, got a 0-dim tensor")
        dev = model_device(self.model)
        if dev is not None:  # torchattacks' habit: inputs go where the model is
            if dev.type == "meta":
                raise UserError("model: its parameters are on the meta device (no data); load its "
                                "weights first")
            if dev != x.device:
                x = x.to(dev)
                y = y.to(dev) if isinstance(y, Tensor) else y
        y = _labels(y, x, "y")
        n = x.shape[0]
        eps = per_sample("eps", self.eps, n, x.device, compute_dtype(x))
        alpha = per_sample("alpha", self.alpha, n, x.device, compute_dtype(x))
        return x.detach(), y, eps, alpha

    @contextlib.contextmanager
    def _attack_mode(self):
        with model_eval_mode(self.model), torch.enable_grad():
            yield

    def _clean_logits(self, x_nat: Tensor) -> Tensor:
        """TRADES' target distribution: the clean logits, computed once and detached (of a
        multi-head model: every head's, side by side)."""
        with torch.no_grad():
            return torch.cat(self._forward_heads(x_nat), dim=1).detach().float()

    def _start(self, x_nat: Tensor, eps: Tensor) -> Tensor:
        if self.norm == "l2" and self.random_start == "uniform":
            return self._l2_ball_start(x_nat, eps)
        return ops.random_start(x_nat, eps, self.random_start, sigma=self.sigma,
                                clip_min=self.clip_min, clip_max=self.clip_max, check=False)

    def _l2_ball_start(self, x_nat: Tensor, eps: Tensor) -> Tensor:
        """A uniform start for the L2 ball: a random direction times a radius ε·U(0, 1)
        (torchattacks' PGDL2), so that every output, even an unstepped start, is within ε."""
        n = x_nat.shape[0]
        dt = compute_dtype(x_nat)
        g = torch.randn(x_nat.shape, dtype=dt, device=x_nat.device)
        radius = eps * torch.rand(n, dtype=dt, device=x_nat.device)
        scale = radius / g.reshape(n, -1).norm(dim=1).clamp_min(1e-12)
        delta = g * scale.view((-1,) + (1,) * (g.dim() - 1))
        return (x_nat.to(dt) + delta).clamp_(self.clip_min, self.clip_max).to(x_nat.dtype)

    def _check(self, x: Tensor, y: Tensor, clean: Optional[Tensor],
               targets: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One check at iterate ``x``: the detached (final) logits and d loss / d x; ``targets``:
        the rows' target classes in a targeted run (the loss pulls towards them). A multi-head
        model (:mod:`fastadv.models.heads`, CIFS) gets the loss on every head, weighted as it
        declares; the checks judge its final head."""
        x = x.detach().requires_grad_(True)
        heads = self._forward_heads(x)
        logits = heads[0]
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise UserError(f"model must return logits of shape [{x.shape[0]}, C], got {got}")
        c = logits.shape[1]
        if self._classes is None:  # the first check sees every label (later ones a subset)
            self._classes = c
            self._flags[1] |= ((y < 0) | (y >= c)).any()
            if self._check_labels is not None:
                self._flags[1] |= ((self._check_labels < 0) | (self._check_labels >= c)).any()
        self._flags[2] |= ~torch.isfinite(logits.detach()).all()
        # Until the one host read has vetted the labels, the loss must not index with one out of
        # range (on CUDA that is a device-side assert): it sees them clamped.
        y_loss = y.clamp(0, c - 1)
        t = None if targets is None else targets.clamp(0, c - 1)
        # TRADES' clean logits hold every head's side by side (so they compact as one tensor).
        cleans = [None] * len(heads) if clean is None else clean.split(c, dim=1)
        loss = weighted_heads(head_weights(self.model),
                              [self._loss(z, y_loss, t, z_clean) for z, z_clean in zip(heads, cleans)])
        (grad,) = torch.autograd.grad(loss, x)
        return logits.detach(), grad

    def _loss(self, logits: Tensor, y: Tensor, t: Optional[Tensor], clean: Optional[Tensor]) -> Tensor:
        """The attack's loss (summed over the rows) on one head's logits."""
        if callable(self.loss):
            loss = self.loss(logits, y) if t is None else self.loss(logits, y, t)
            return loss.sum() if loss.dim() else loss
        if self.loss == "ce":
            return ce_loss(logits, y) if t is None else -ce_loss(logits, t)
        if self.loss == "cw":
            # targeted: the C&W margin of the target over the best other class
            return cw_loss(logits, y, self.confidence) if t is None else \
                -F.relu(logits.float().scatter(1, t[:, None], float("-inf")).amax(1)
                        - logits.float().gather(1, t[:, None]).squeeze(1) + self.confidence).sum()
        return kl_loss(logits, clean)

    def _forward_heads(self, x: Tensor) -> list:
        """Every head's logits at ``x``, in passes of at most ``rows_per_pass`` rows."""
        passes = [forward_heads(self.model, part)
                  for part in row_passes(self._normalized(x), self.rows_per_pass)]
        return [join_rows(list(head)) for head in zip(*passes)]

    def _forward(self, x: Tensor) -> Tensor:
        x = self._normalized(x)
        return join_rows([self.model(part) for part in row_passes(x, self.rows_per_pass)])

    def _noise(self, x: Tensor) -> Optional[Tensor]:
        """FAT's ω·N(0, I) term of each update, drawn on x's device (None when ω = 0)."""
        if self.omega == 0.0:
            return None
        return torch.randn(x.shape, dtype=compute_dtype(x), device=x.device).mul_(self.omega)

    def _step_(self, x: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor) -> Tensor:
        """One projected step in place on ``x`` (fused kernel)."""
        step = ops.linf_step_ if self.norm == "linf" else ops.l2_step_
        with torch.no_grad():
            return step(x, grad, x_nat, eps, alpha, self.clip_min, self.clip_max,
                        noise=self._noise(x), check=False)


def _on(t, x: Tensor):
    """A tensor moved to x's device (the inputs follow the model); anything else as it is."""
    return t.to(x.device) if isinstance(t, Tensor) else t


def _labels(y, x: Tensor, name: str) -> Tensor:
    """``y`` checked as one integer label per row of ``x``, on x's device, as int64."""
    if not isinstance(y, Tensor):
        raise UserTypeError(f"{name} must be a torch.Tensor of labels, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise UserTypeError(f"{name} must be an integer tensor of labels, got {y.dtype}")
    n = x.shape[0]
    if y.shape != (n,):
        raise UserError(f"{name} must have shape [{n}] (one label per sample of x), got "
                        f"{tuple(y.shape)}")
    if y.device != x.device:
        raise UserError(f"{name} is on {y.device} but x is on {x.device}")
    return y.to(torch.int64)


def check_targeted_classes(logits: Tensor) -> None:
    """A targeted run needs a target other than the label: at least 2 classes."""
    if logits.shape[1] < 2:
        raise UserError(f"targets: a targeted attack needs a model with at least 2 classes, got "
                        f"{logits.shape[1]}")


def resisted(logits: Tensor, y_check: Tensor, targets: Optional[Tensor]) -> Tensor:
    """Bool [M]: the rows the attack has not yet succeeded on at this check (κ counts them):
    classified as ``y_check``; in a targeted run, not classified as the target."""
    pred = logits.argmax(dim=1)
    if targets is None:
        return pred == y_check
    check_targeted_classes(logits)
    return pred != targets


def full_result(x_adv: Tensor, kappa: Tensor, steps: int, n_checked: int) -> AttackResult:
    """The result of an attack that gave every sample ``steps`` updates over ``steps`` checks."""
    n = x_adv.shape[0]
    k = torch.full((n,), steps, dtype=torch.int64, device=x_adv.device)
    return AttackResult(x_adv, k, k.clone(), kappa, steps * n, steps * n, n_checked)
