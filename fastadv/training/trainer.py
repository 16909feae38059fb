"""The training loop, for people who bring their own model, optimizer and data.

```python
trainer = fastadv.Trainer(model, optimizer, method="fat", tau=1, eps=8/255, alpha=2/255, steps=10)
stats = trainer.train_step(x, y)                  # one adversarial step on a batch, from your loop
history = trainer.fit(train_loader, test_loader, epochs=10, out_dir="runs/mine")  # or the lot
```

One step: the attack runs with the model in eval mode (the attack switches it and restores it),
then the update in train mode: ``loss(model(x_adv))`` (+ the natural branch for TRADES/MART),
``backward``, ``optimizer.step()``. Per epoch the trainer reports BPs (Σ PGD updates / N, PGD-10
= 10.00), executed BPs (Σ checks / N), the saving against PGD-K in both conventions, losses,
accuracies, seconds and images/s.

Distributed (DDP, under ``torchrun``; see :mod:`fastadv.training.distributed`): with a process
group of more than one rank initialised (or ``distributed=True``, or a model already wrapped in
``DistributedDataParallel``) the trainer wraps the model in DDP for the training forward/backward,
runs the attack on the underlying module (eval mode, no gradient all-reduce), all-reduces the
epoch's sums (so ``bp_avg`` = Σ_ranks updates / Σ_ranks samples), averages the BatchNorm running
statistics over the ranks after each epoch, shards and reduces the evaluation, and writes logs and
checkpoints on rank 0 only. Give each rank its shard of the data (:class:`ShardedBatchLoader`).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..attacks.base import explain_dtype_errors, input_range_message, outside_box
from ..errors import (CheckpointError, NonFiniteLossError, RunFolderError, UserError,
                      UserTypeError)
from .checkpoint import (NotBitExactWarning, atomic_save, load_checkpoint, load_model_state,
                         make_checkpoint, rng_state, runtime_info, runtime_notes, set_rng_state,
                         unwrap)
from .checks import check_attack_budget, check_bool, check_number, fail
from . import distributed as dist_utils
from .logging import RunLogger, progress_bar, use_progress
from .methods import METHOD_OPTIONS, Method, get_method
from ..data.loader import unpack_batch
from .run_folder import RunFolder


def _check_optimizer_fits(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """An optimizer built for another model would step parameters nobody uses: refuse it."""
    own = {id(p) for p in model.parameters() if p.requires_grad}
    stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if own and not own & stepped:
        raise UserError(f"optimizer: updates none of the model's {len(own)} trainable parameter "
                        f"tensors (was it built for another model, or before the model was "
                        f"replaced?); build it from this model's parameters()")
    from ..models.own_optimizers import own_optimizers
    own -= {id(p) for g in own_optimizers(model) for p in g.params}  # DS-Net's α: stepped apart
    left_out = [name for name, p in model.named_parameters() if id(p) in own - stepped]
    if left_out:  # fine-tuning may mean it; a replaced layer usually does not
        warnings.warn(f"optimizer: does not update {len(left_out)} of the model's trainable "
                      f"parameter tensors ({', '.join(left_out[:3])}"
                      f"{', ...' if len(left_out) > 3 else ''}), which therefore never train; "
                      f"build it after the model is final, or set requires_grad=False on the "
                      f"ones meant to stay fixed", stacklevel=3)


def _build_own_optimizers(optimizer: torch.optim.Optimizer, model: nn.Module) -> Dict[str, Any]:
    """The optimizers of the parameters that ``model`` trains on its own (DS-Net's α), by name;
    refuses a main optimizer that would step them too."""
    from ..models.own_optimizers import own_optimizers
    groups = own_optimizers(model)
    stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for g in groups:
        if any(id(p) in stepped for p in g.params):
            raise UserError(f"optimizer: also updates {g.name}, which the model trains with an "
                            f"optimizer of its own; build it from "
                            f"fastadv.models.weight_parameters(model)")
    return {g.name: g.build(list(g.params)) for g in groups}


def _located(e: Exception, where: str) -> Exception:
    """``e`` again (same type) with ``where`` in front of its message."""
    try:
        return type(e)(f"{where}: {e}")
    except Exception:  # an exception type that needs other arguments: keep it as it is
        return e


class Trainer:
    """Adversarial training of ``model`` with ``optimizer`` by ``method`` (a name of
    :data:`fastadv.training.methods.METHODS` or a :class:`~fastadv.training.methods.Method`).

    The method's own options, resolved and checked by the method exactly as :func:`fastadv.train`
    does (``None``: its default): ``tau``: int or ``"dynamic"`` (FAT methods; default 1;
    dynamic needs ``epochs``); ``omega``: FAT's exploration noise (default 0); ``beta``:
    TRADES/MART (default 6); ``lam``/``weight_func``/``gair_start``: GAIR reweighting (gairat,
    gair-fat; plain CE before epoch ``gair_start``, default half the ``epochs``, which must then be
    given here or to :meth:`fit`); ``noise_type``/``noise_min``/``noise_max``: NoiLIn's label
    noise (noilin-at, noilin-trades: symmetric, 0.05, 0.6 / 0.4; its rate follows the validation
    robust accuracy, so :meth:`fit` needs ``val_data``); ``loss_weights``: DAT's official
    adversarial-CE loss weights (dat; default off). ``lr_fn(epoch) -> lr`` sets the lr at
    the start of each epoch; alternatively a torch ``scheduler`` is stepped after each epoch.
    ``amp="bf16"``: autocast; ``channels_last``; ``compile``: ``torch.compile`` the model
    (``dynamic=True``: early stopping shrinks the batch). ``eval_steps``: PGD steps of the
    per-epoch robust evaluation (PGD-20, α = ``eval_alpha`` or ε/4). ``train_nat_acc``: measure
    the clean training batch's accuracy with one extra no-grad eval-mode forward after each update,
    the same for every method (``False`` saves it: 10–13 % of a FAT τ = 1 step of the small CNN
    on MNIST-size batches, ``benchmarks/train_nat_cost.py``; the column is then empty). ``random_start``: ``"method"`` (the method's
    own: uniform, or normal for TRADES) or an override, ``"uniform"``/``"normal"``/``None`` (off).

    A multi-head model (:mod:`fastadv.models.heads`, CIFS) trains on every head's loss, weighted
    as it declares, and its attack uses the same weighted loss; parameters the model trains with an
    optimizer of its own (:mod:`fastadv.models.own_optimizers`, DS-Net's α) are stepped after the
    same backward pass (``trainer.own_optimizers``) and saved and restored with the checkpoints;
    ``optimizer`` must not hold them.

    ``distributed``: ``None`` = automatic (DDP when a process group with more than one rank is
    initialised or ``model`` is already a ``DistributedDataParallel``); ``sync_bn``: convert
    BatchNorm to ``SyncBatchNorm`` (CUDA/NCCL) instead of per-rank batch statistics.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: str = "at", *,
                 eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, tau=None,
                 omega: Optional[float] = None, beta: Optional[float] = None,
                 lam: Optional[float] = None, weight_func: Optional[str] = None,
                 gair_start: Optional[int] = None, noise_type: Optional[str] = None,
                 noise_min: Optional[float] = None, noise_max: Optional[float] = None,
                 loss_weights: Optional[bool] = None, epochs: Optional[int] = None, lr_fn: Optional[Callable[[int], float]] = None,
                 scheduler=None, device=None, amp: Optional[str] = None, channels_last: bool = False,
                 compile: bool = False, eval_steps: int = 20, eval_alpha: Optional[float] = None,
                 eval_autoattack: Optional[str] = None,
                 train_nat_acc: bool = True,
                 progress: Optional[bool] = False,
                 logger: Optional[RunLogger] = None, config: Optional[dict] = None,
                 meta: Optional[dict] = None, random_start="method",
                 distributed: Optional[bool] = None, sync_bn: bool = False):
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp = model if isinstance(model, DDP) else None
        if ddp is not None:
            model = ddp.module
        if not isinstance(model, nn.Module):
            raise UserTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UserTypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.method_object = get_method(method)
        self.method = self.method_object.name
        check_attack_budget(eps, alpha, steps)
        for name, v in (("channels_last", channels_last), ("compile", compile), ("sync_bn", sync_bn),
                        ("train_nat_acc", train_nat_acc)):
            check_bool(name, v)
        for name, v in (("distributed", distributed), ("progress", progress)):
            if v is not None and not isinstance(v, bool):
                raise UserTypeError(f"{name} must be True, False or None (automatic), got {v!r}")
        _check_optimizer_fits(optimizer, model)
        # Parameters the model trains with an optimizer of its own (DS-Net's α): stepped after the
        # same backward as the main optimizer, saved in checkpoints beside it.
        self.own_optimizers = _build_own_optimizers(optimizer, model)
        check_number("epochs", epochs, minimum=1, integer=True, allow_none=True)
        # The method's options as given (None: its default); resolved now and again whenever
        # the number of epochs becomes known (fit), so defaults like gair_start follow it.
        self.method_options = dict(tau=tau, omega=omega, beta=beta, lam=lam,
                                   weight_func=weight_func, gair_start=gair_start,
                                   noise_type=noise_type, noise_min=noise_min, noise_max=noise_max,
                                   loss_weights=loss_weights)
        self.epochs = epochs
        self.settings = self.method_object.resolve(self.method_options, epochs)
        if amp not in (None, "bf16"):
            fail("amp", f"must be None or 'bf16', got {amp!r}")
        if isinstance(random_start, str) and random_start.lower() == "none":
            random_start = None
        if random_start != "method":
            from ..attacks.base import normalize_random_start
            random_start = normalize_random_start(random_start)
        attack = self.method_object.attack
        if random_start not in ("method", None) and attack is None:
            fail("random_start", f"method {self.method!r} runs no attack")
        self.random_start = (attack.random_start if attack is not None else None) \
            if random_start == "method" else random_start
        if distributed is None:
            distributed = ddp is not None or dist_utils.is_distributed()
        if distributed and not dist_utils.is_distributed():
            raise UserError("distributed=True needs an initialised process group with more than "
                            "one rank (launch with torchrun; see fastadv.training.distributed)")
        self.distributed = bool(distributed)
        self.rank = dist_utils.get_rank() if self.distributed else 0
        self.world_size = dist_utils.get_world_size() if self.distributed else 1

        self.device = torch.device(device) if device is not None else next(
            (p.device for p in model.parameters()), torch.device("cpu"))
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp = None
        if self.distributed:
            if ddp is None:
                if sync_bn:
                    if self.device.type != "cuda":
                        raise UserError("sync_bn: SyncBatchNorm needs CUDA (NCCL); on the CPU the "
                                        "ranks keep per-rank BatchNorm")
                    # Same Parameter objects: an optimizer built on the model stays valid.
                    self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                # No buffer broadcast in the forward: per-rank BatchNorm statistics; the running
                # statistics are averaged over the ranks after every epoch (train_epoch). (Newer
                # torch spells it forward_sync_buffers=False, older broadcast_buffers=False.)
                import inspect
                sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in
                           inspect.signature(DDP.__init__).parameters else "broadcast_buffers")
                ddp = DDP(self.model, device_ids=[self.device] if self.device.type == "cuda"
                          else None, **{sync_kw: False})
            self.ddp = ddp
        elif sync_bn:
            raise UserError("sync_bn: only meaningful for a distributed (DDP) run")
        # The compiled module shares parameters with self.model (checkpoints use self.model).
        # fmodel: the attack and evaluation (the underlying module, never the DDP wrapper, so no
        # gradient all-reduce runs during autograd.grad w.r.t. the inputs); train_model: the
        # training forward/backward (the DDP wrapper when distributed).
        self.fmodel = torch.compile(self.model, dynamic=True) if compile else self.model
        if self.ddp is not None:
            self.train_model = torch.compile(self.ddp, dynamic=True) if compile else self.ddp
        else:
            self.train_model = self.fmodel
        self.local_stats: Dict[str, Any] = {}  # this rank's sums of the last epoch/evaluation
        self.method_state: Dict[str, Any] = {}  # a method's own state across epochs (CAT's best)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.lr_fn = lr_fn
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.eval_steps = int(eval_steps)
        self.eval_alpha = eval_alpha
        self.eval_autoattack = eval_autoattack  # an AutoAttack version also run per evaluation
        self.train_nat_acc = train_nat_acc
        self.progress = progress
        self.logger = logger
        self.config = config
        self.meta = meta or {}
        self.history: List[Dict[str, Any]] = []
        self.epoch = 0                   # epochs completed
        self._run_dir: Optional[str] = None  # the folder of the run this trainer continues
        self.not_exact_notes: List[str] = []  # why a resume is not bit-exact (load_checkpoint)
        self.best_pgd20: Optional[float] = None
        self.set_epoch(0)

    # ------------------------------------------------------------------ schedules / attack
    def set_epoch(self, epoch: int) -> None:
        """Select the attack and schedule values (τ, λ) of 0-based ``epoch``. A schedule that
        needs the run's length while ``epochs`` is unknown is planned at the first step."""
        self.current_epoch = epoch
        self.plan = self.attack = None
        try:
            self._plan_epoch()
        except UserError:
            pass  # e.g. dynamic τ before fit(epochs=) is known: raised by train_step if still so

    def _plan_epoch(self) -> None:
        m = self.method_object
        self.plan = m.plan(self.settings, self.current_epoch, self.epochs, self.steps,
                           self.history[:self.current_epoch])
        self.attack = None if m.attack is None else m.attack.build(
            self.fmodel, eps=self.eps, alpha=self.alpha, steps=self.steps,
            random_start=self.random_start, plan=self.plan)

    def _set_epochs(self, epochs: int) -> None:
        """The run's length is known (fit): re-resolve the defaults that follow it."""
        if epochs != self.epochs:
            self.epochs = epochs
            self.settings = self.method_object.resolve(self.method_options, epochs)

    @property
    def current_tau(self) -> Optional[int]:
        return self.plan.values.get("tau") if self.plan is not None else None

    @property
    def current_lam(self) -> Optional[float]:
        return self.plan.values.get("lam") if self.plan is not None else None

    def __getattr__(self, name):
        # tau, omega, beta, lam, weight_func, gair_start: the resolved method options.
        if name in METHOD_OPTIONS and "settings" in self.__dict__:
            return self.settings.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _num_classes(self, x: Tensor) -> int:
        """The model's number of classes, from one eval-mode forward of one image (once)."""
        if getattr(self, "_classes", None) is None:
            modes = [m.training for m in self.model.modules()]
            self.model.eval()
            with torch.no_grad(), self._autocast():
                self._classes = int(self.fmodel(x[:1]).shape[1])
            for m, mode in zip(self.model.modules(), modes):
                m.training = mode
        return self._classes

    def _autocast(self):
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def train_step(self, x: Tensor, y: Tensor) -> Dict[str, Any]:
        """One training step on the batch ``(x, y)`` (x in [0, 1]). Returns ``loss``,
        ``nat_correct``, ``adv_correct`` (0-dim tensors: no host synchronisation; ``None`` where
        not measured), ``n``, ``bp`` (Σ PGD updates) and ``bp_executed`` (Σ checks).

        An empty batch is skipped (no update). A loss that is not finite (NaN or inf data, a
        diverging lr) raises :class:`~fastadv.errors.NonFiniteLossError` before the update, so
        the weights stay finite; x outside [0, 1] raises, naming its range."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise UserTypeError(f"train_step takes tensors x and y, got {type(x).__name__} and "
                                f"{type(y).__name__}")
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if not x.is_floating_point():
            raise UserTypeError(f"x must be floating point in [0, 1], got {x.dtype} (uint8 images: "
                                f"divide by 255)")
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if n == 0:  # nothing to learn from: no forward, no optimizer step (weight decay!)
            zero = torch.zeros((), dtype=torch.int64, device=self.device)
            return {"loss": torch.zeros((), device=self.device),
                    "nat_correct": zero if self.train_nat_acc else None,
                    "adv_correct": zero.clone() if self.attack is not None else None, "n": 0,
                    "bp": 0, "bp_executed": 0}
        with explain_dtype_errors(self.model, x):
            return self._train_step(x, y, n)

    def _train_step(self, x: Tensor, y: Tensor, n: int) -> Dict[str, Any]:
        if self.plan is None:
            self._plan_epoch()  # raises the schedule's error if epochs are still unknown
        res = None
        y_train = y  # NoiLIn: the attack and the loss see noisy labels, the checks the clean ones
        if self.method_object.label_noise is not None:
            y_train = self.method_object.label_noise(y, self._num_classes(x), self.plan)
        if self.attack is not None:
            with self._autocast():  # eval mode inside; no parameter gradients
                res = self.attack.run(x, y_train, check_labels=y if y_train is not y else None)
        (self.ddp if self.ddp is not None else self.model).train()
        with self._autocast():  # the method's objective; the DDP wrapper when distributed
            loss, logits_adv = self.method_object.objective(self.train_model, x, y_train, res,
                                                            self.plan)
        # One host read per step (the attacks already make one): stop before a NaN update. Without
        # an attack, whose own read checks x's range, the range is checked here too.
        bad = [~torch.isfinite(loss.detach())]
        if res is None:
            bad.append(outside_box(x, 0.0, 1.0))
        bad = torch.stack(bad).to(torch.int32)
        if self.distributed:  # every rank stops together (one that went on would wait forever)
            bad = dist_utils.all_reduce_sum(bad)
        bad_loss, *bad_x = bad.tolist()
        if bad_x and bad_x[0]:
            mine = bool(outside_box(x, 0.0, 1.0))  # the error path only: a host read is fine
            raise UserError(input_range_message(x, 0.0, 1.0) if mine else
                            "x lies outside [0, 1] on another rank")
        if bad_loss:
            value = float(loss.detach())
            what = f"is {value:g}" if not math.isfinite(value) else "is not finite on another rank"
            raise NonFiniteLossError(f"the training loss {what}: the data holds NaN or inf, or the "
                                     f"lr ({self.optimizer.param_groups[0]['lr']:g}) makes "
                                     f"training diverge; the weights were not updated")
        for opt in self._optimizers():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self._optimizers():
            opt.step()
        adv_correct = (logits_adv.detach().argmax(1) == y).sum() if res is not None else None
        nat_correct = None
        if self.train_nat_acc:
            # The clean batch's accuracy, measured alike for every method: one no-grad eval-mode
            # forward after the update (it uses no RNG; off: ``train_nat_acc=False`` saves it).
            self.model.eval()
            with torch.no_grad(), self._autocast():
                nat_correct = (self.fmodel(x).argmax(1) == y).sum()
            self.model.train()
        return {"loss": loss.detach(), "nat_correct": nat_correct, "adv_correct": adv_correct, "n": n,
                "bp": int(res.bp) if res is not None else 0,
                "bp_executed": int(res.bp_executed) if res is not None else 0}

    def _optimizers(self) -> List[torch.optim.Optimizer]:
        """The main optimizer, then the model's own ones (DS-Net's α)."""
        return [self.optimizer, *self.own_optimizers.values()]

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, loader: Iterable, epoch: Optional[int] = None) -> Dict[str, Any]:
        """Train one epoch (0-based ``epoch``, default: the next one) and return its row
        (without the test columns)."""
        epoch = self.epoch if epoch is None else epoch
        self.set_epoch(epoch)
        if self.plan is None:
            self._plan_epoch()  # the schedule's error, before the epoch starts
        if self.lr_fn is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr_fn(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)  # the loader's order/augmentation of this epoch
        if self.distributed:
            self._check_loader(loader)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        nat = torch.zeros((), dtype=torch.int64, device=self.device)
        adv = torch.zeros((), dtype=torch.int64, device=self.device)
        n = bp = bp_exec = 0
        try:
            total = len(loader)
        except TypeError:
            total = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        for b, batch in enumerate(progress_bar(loader, total, use_progress(self.progress)
                                               and self.rank == 0, desc=f"epoch {epoch + 1}")):
            x, y = unpack_batch(batch)
            try:
                s = self.train_step(x, y)
            except ValueError as e:  # bad data or a diverging loss: say where
                raise _located(e, f"epoch {epoch + 1}, batch {b + 1}") from e
            loss_sum += s["loss"].double() * s["n"]
            if s["nat_correct"] is not None:
                nat += s["nat_correct"]
            if s["adv_correct"] is not None:
                adv += s["adv_correct"]
            n += s["n"]
            bp += s["bp"]
            bp_exec += s["bp_executed"]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if self.scheduler is not None:
            self.scheduler.step()
        self.local_stats = {"n": n, "bp": bp, "bp_executed": bp_exec, "nat_correct": int(nat),
                            "adv_correct": int(adv), "loss_sum": float(loss_sum), "seconds": seconds}
        if self.distributed:
            # One all-reduce of the epoch's sums (float64: exact for counts below 2^53).
            sums = torch.stack([loss_sum, nat.double(), adv.double()] + [
                torch.tensor(float(v), dtype=torch.float64, device=self.device)
                for v in (n, bp, bp_exec)])
            sums = dist_utils.all_reduce_sum(sums).tolist()
            loss_sum = torch.tensor(sums[0], dtype=torch.float64)
            nat, adv = int(round(sums[1])), int(round(sums[2]))
            n, bp, bp_exec = (int(round(v)) for v in sums[3:])
            seconds = dist_utils.all_reduce_max(seconds)  # the slowest rank's wall time
            # Per-rank BatchNorm statistics -> one model again before evaluation/checkpoints.
            dist_utils.average_buffers(self.model)
        if n == 0:
            raise UserError("loader: yielded no samples")
        has_attack = self.attack is not None
        bp_avg = bp / n if has_attack else 0.0
        bp_exec_avg = bp_exec / n if has_attack else 0.0
        row = {
            "epoch": epoch + 1, "lr": lr, "tau": self.current_tau, "lam": self.current_lam,
            "train_loss": float(loss_sum) / n,
            "train_nat_acc": 100.0 * int(nat) / n if self.train_nat_acc else None,
            "train_adv_acc": 100.0 * int(adv) / n if has_attack else None,
            "test_nat_acc": None, "test_pgd20_acc": None,
            "bp_avg": bp_avg, "bp_executed_avg": bp_exec_avg,
            # Saving against PGD-K: updates convention (official "BP") and executed backward passes.
            "bp_saved": 100.0 * (1 - bp_avg / self.steps) if has_attack else None,
            "bp_executed_saved": 100.0 * (1 - bp_exec_avg / self.steps) if has_attack else None,
            "seconds": seconds, "images_per_sec": n / seconds if seconds > 0 else None,
        }
        for key in ("noise_rate", "fosc_threshold"):  # NoiLIn's rate, DAT's threshold
            if key in self.plan.values:
                row[key] = self.plan.values[key]
        return row

    def evaluate(self, data, max_samples: Optional[int] = None, batch_size: int = 256) -> Dict[str, float]:
        """Natural and PGD-20 (α = ε/4, uniform start) accuracy in percent on ``data`` (any input
        of :func:`fastadv.evaluate`): ``{"test_nat_acc", "test_pgd20_acc"}``, and
        ``test_aa_acc`` (AutoAttack's ``eval_autoattack`` version) when set."""
        from ..evaluation import evaluate
        name = f"pgd{self.eval_steps}"
        aa = (f"aa-{self.eval_autoattack}",) if self.eval_autoattack else ()
        with self._autocast():
            r = evaluate(self.fmodel, data, attacks=("natural", name) + aa, eps=self.eps,
                         batch_size=batch_size, max_samples=max_samples, device=self.device,
                         verbose=False, distributed=self.distributed,
                         progress=use_progress(self.progress) and self.rank == 0,
                         alpha=self.eval_alpha)
        if "local" in r:
            self.local_stats["eval"] = r["local"]
        out = {"test_nat_acc": r["accuracy"]["natural"], "test_pgd20_acc": r["accuracy"][name]}
        if aa:
            out["test_aa_acc"] = r["accuracy"][aa[0]]
        return out

    def validate(self, data, batch_size: Optional[int] = None, steps: Optional[int] = None,
                 alpha: Optional[float] = None) -> float:
        """Robust accuracy (percent) on ``data`` under PGD-``steps`` with step ``alpha`` (CE,
        uniform start, this trainer's ε; 0 steps: natural accuracy). Default: the method's
        validation attack (the training K and α; CAT: PGD-k, α = 2ε/k)."""
        from ..evaluation import evaluate
        batch_size = batch_size or getattr(self, "eval_batch_size", 256)
        if steps is None:
            if self.plan is None:
                self._plan_epoch()
            attack = self.method_object.attack
            steps, alpha = (attack.validation(self.plan, self.eps, self.alpha, self.steps)
                            if attack is not None else (0, None))
        name = f"pgd{steps}" if steps else "natural"
        with self._autocast():
            r = evaluate(self.fmodel, data, attacks=(name,), eps=self.eps, batch_size=batch_size,
                         device=self.device, verbose=False, distributed=self.distributed,
                         progress=False, alpha=alpha if steps else None)
        return r["accuracy"][name]

    def snapshot(self) -> Dict[str, Any]:
        """Copies of the model's and the optimizer's states, made on the CPU, for :meth:`restore`."""
        import copy
        cpu = lambda t: t.detach().to("cpu", copy=True) if isinstance(t, Tensor) else t  # noqa: E731

        def copied(opt):  # state_dict() holds references: copied tensor by tensor, to the CPU
            sd = opt.state_dict()
            return {"state": {k: {n: cpu(v) for n, v in st.items()} for k, st in sd["state"].items()},
                    "param_groups": copy.deepcopy(sd["param_groups"])}

        return {"model": {k: cpu(v) for k, v in self.model.state_dict().items()},
                "optimizer": copied(self.optimizer),
                "own_optimizers": {k: copied(o) for k, o in self.own_optimizers.items()}}

    def restore(self, snapshot: Dict[str, Any]) -> None:
        """Put back the weights and the optimizer's state (momentum) of a :meth:`snapshot` (CAT's
        rollback); the learning rates stay today's (a schedule has moved on since)."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        for name, opt in self.own_optimizers.items():
            opt.load_state_dict(snapshot["own_optimizers"][name])

    # ------------------------------------------------------------------ the whole run
    def fit(self, train_loader: Iterable, test_data=None, epochs: Optional[int] = None, *,
            eval_every: int = 1, eval_samples: Optional[int] = None, eval_batch_size: int = 256,
            out_dir=None, loader_state: Optional[Callable[[], dict]] = None,
            overwrite: bool = False, val_data=None) -> List[Dict[str, Any]]:
        """Train from ``self.epoch`` (0, or where a loaded checkpoint stopped) to ``epochs``.

        Evaluates natural/PGD-20 accuracy on ``test_data`` (its first ``eval_samples``) every
        ``eval_every`` epochs and after the last one. With ``out_dir`` (a path or a
        :class:`~fastadv.training.run_folder.RunFolder`), writes ``last.pt`` every epoch and
        ``best.pt`` whenever PGD-20 accuracy improves (atomically), plus the CSV/JSON history; the
        folder is locked while ``fit`` runs, and one that holds a run is refused unless this
        trainer continues that run (loaded by :meth:`load_checkpoint` from that folder, or fitted
        into it before) or ``overwrite=True``. ``val_data``: data held out from training whose
        robust accuracy is measured after every epoch (``val_robust_acc``, :meth:`validate`: PGD-K with the
        training ε and α; CAT: PGD-k with α = 2ε/k); NoiLIn's rate and CAT's curriculum follow
        it. Returns the history (one dict per epoch)."""
        epochs = self.epochs if epochs is None else epochs
        if not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"epochs must be an int >= 1, got {epochs!r}")
        check_bool("overwrite", overwrite)
        if self.method_object.needs_validation and val_data is None:
            fail("val_data", f"{self.method} follows the validation robust accuracy of every "
                             f"epoch: give fit(val_data=...), images held out from training")
        self._set_epochs(epochs)
        main = self.rank == 0
        folder, own_folder = out_dir, False
        if out_dir is not None and not isinstance(out_dir, RunFolder):
            folder, own_folder = RunFolder(out_dir), main
        try:
            self._shared(lambda: own_folder and self._claim(folder, overwrite))
            logger = self.logger or RunLogger(folder.path if folder is not None and main else None,
                                              verbose=False)
            for epoch in range(self.epoch, epochs):
                self._fit_epoch(epoch, epochs, train_loader, test_data, eval_every, eval_samples,
                                eval_batch_size, folder, loader_state, logger, val_data)
            if self.distributed:
                dist_utils.barrier()  # rank 0's files exist for everyone when fit returns
        finally:
            if own_folder:
                folder.close()
        return self.history

    def _claim(self, folder: RunFolder, overwrite: bool) -> None:
        """Lock ``folder``; refuse one that holds another run unless ``overwrite``."""
        folder.open()
        files = folder.run_files()
        if files and overwrite:
            folder.clear()
        elif files and self._run_dir != os.path.realpath(folder.path):
            # Only the run this trainer continues (loaded from that folder, or fitted into it)
            # may be written there; a trainer at epoch 3 of another run would mix the two.
            raise RunFolderError(
                f"out_dir: {folder.path} holds a run ({', '.join(files)}) that this trainer does "
                f"not continue; continue it with trainer.load_checkpoint("
                f"{folder.file('last.pt')!r}) before fit (a loaded dict: pass source= its path), "
                f"pass overwrite=True to replace it, or choose another out_dir")
        self._run_dir = os.path.realpath(folder.path)
        folder.check_free_space(self.model, self.optimizer)

    def _shared(self, fn) -> None:
        """Run ``fn`` (rank 0's file work); distributed, its user error is raised on every rank,
        so no rank waits in a collective for one that stopped."""
        error = None
        try:
            fn()
        except UserError as e:
            error = e
        if self.distributed:
            error = dist_utils.broadcast_object(error)
        if error is not None:
            raise error

    def _fit_epoch(self, epoch, epochs, train_loader, test_data, eval_every, eval_samples,
                   eval_batch_size, folder: Optional[RunFolder], loader_state, logger,
                   val_data=None) -> None:
        main = self.rank == 0
        row = self.train_epoch(train_loader, epoch)
        self.eval_batch_size = eval_batch_size  # for the method's own validations (CAT)
        if val_data is not None:
            row["val_robust_acc"] = self.validate(val_data)
        if self.method_object.attack is not None:  # CAT: rollback and the next k
            self.method_object.attack.after_epoch(self, row, val_data)
        if test_data is not None and eval_every and ((epoch + 1) % eval_every == 0
                                                     or epoch + 1 == epochs):
            t0 = time.perf_counter()
            row.update(self.evaluate(test_data, max_samples=eval_samples,
                                     batch_size=eval_batch_size))
            row["eval_seconds"] = time.perf_counter() - t0
        self.history.append(row)
        self.epoch = epoch + 1
        improved = row["test_pgd20_acc"] is not None and (
            self.best_pgd20 is None or row["test_pgd20_acc"] > self.best_pgd20)
        if improved:
            self.best_pgd20 = row["test_pgd20_acc"]
        ckpt = None
        if folder is not None:  # distributed: a collective (every rank's RNG states)
            ckpt = self._checkpoint(loader_state() if loader_state else None)

        def save_and_log():
            if not main:
                return
            if ckpt is not None:
                try:
                    if improved:
                        atomic_save(ckpt, folder.file("best.pt"))
                    atomic_save(ckpt, folder.file("last.pt"))
                except RunFolderError as e:
                    kept = (f"last.pt still holds epoch {epoch}, so resume=True continues from "
                            f"there" if epoch else "no epoch was saved")
                    raise RunFolderError(f"{e}; {kept} once the disk has room") from e
            logger.log_epoch(row, self.history)
        self._shared(save_and_log)

    def _cuda_device(self):
        return self.device if self.device.type == "cuda" and self.distributed else None

    def _checkpoint(self, loader_state: Optional[dict] = None) -> Optional[Dict[str, Any]]:
        """The checkpoint dict; distributed: a collective (every rank's RNG states are gathered),
        the dict is built on rank 0 only (None elsewhere)."""
        rngs = None
        if self.distributed:
            rngs = dist_utils.all_gather_objects(rng_state(self._cuda_device()))
            if self.rank != 0:
                return None
        return make_checkpoint(model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, epoch=self.epoch, history=self.history,
                               config=self.config, loader_state=loader_state,
                               best_pgd20=self.best_pgd20, meta=self.meta,
                               rng=rngs[0] if rngs else None, rng_per_rank=rngs,
                               world_size=self.world_size, runtime=runtime_info(self.device),
                               method_state=self.method_state,
                               own_optimizers={k: o.state_dict()
                                               for k, o in self.own_optimizers.items()})

    def _check_loader(self, loader) -> None:
        """Distributed: every rank must run the same number of steps (else DDP hangs)."""
        from ..data.loader import BatchLoader
        if isinstance(loader, BatchLoader) and not isinstance(loader, dist_utils.ShardedBatchLoader):
            warnings.warn("distributed training with a plain BatchLoader: every rank trains on the "
                          "whole dataset; use fastadv.training.distributed.ShardedBatchLoader",
                          stacklevel=3)
        try:
            length = len(loader)
        except TypeError:
            return
        lengths = dist_utils.all_gather_objects(int(length))
        if len(set(lengths)) != 1:
            raise UserError(f"loader: the ranks have different numbers of batches {lengths}; "
                            f"DDP needs the same number on every rank (ShardedBatchLoader pads)")

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint dict (distributed: a collective; rank 0 gets it, the others None)."""
        return self._checkpoint()

    def load_checkpoint(self, path_or_state, restore_rng: bool = True,
                        source: Optional[str] = None,
                        warn_not_exact: bool = True) -> Dict[str, Any]:
        """Restore model, optimizer, scheduler, epoch, history, best and (by default) every RNG
        from a checkpoint written by :meth:`fit` (a path or the loaded dict; ``source`` names a
        dict's file in errors). A checkpoint of another architecture or optimizer raises
        :class:`~fastadv.errors.CheckpointError` in one line, before anything is changed.

        A checkpoint written with another CPU thread count, device or torch version continues
        deterministically but not bit for bit: ``self.not_exact_notes`` says why, and a
        :class:`~fastadv.training.checkpoint.NotBitExactWarning` is raised for each note unless
        ``warn_not_exact=False`` (the caller reports them). :meth:`fit` may then write into the
        checkpoint's folder."""
        # Loaded on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        if isinstance(path_or_state, (str, os.PathLike)):
            source = os.fspath(path_or_state)
            state = load_checkpoint(path_or_state, map_location="cpu")
        else:
            state, source = path_or_state, source or "the checkpoint"
        opt_state = state.get("optimizer")
        if opt_state is not None:
            mine = [len(g["params"]) for g in self.optimizer.state_dict()["param_groups"]]
            theirs = [len(g.get("params", ())) for g in opt_state.get("param_groups", ())]
            if mine != theirs:
                raise CheckpointError(f"checkpoint: {source} holds the state of an optimizer over "
                                      f"{theirs} parameter tensors (per group), this optimizer "
                                      f"has {mine}; build it as the checkpoint's run did")
        own_state = state.get("own_optimizers") or {}
        if opt_state is not None and set(own_state) != set(self.own_optimizers):
            raise CheckpointError(f"checkpoint: {source} holds the optimizers "
                                  f"{sorted(own_state) or 'none'} besides the main one, this model "
                                  f"trains {sorted(self.own_optimizers) or 'none'} on their own; "
                                  f"resume with the checkpoint's model")
        load_model_state(self.model, state["model"], source)
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
            for name, opt in self.own_optimizers.items():
                opt.load_state_dict(own_state[name])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history") or [])
        self.best_pgd20 = state.get("best_pgd20")
        self.method_state = dict(state.get("method_state") or {})
        if restore_rng:
            self._restore_rng(state)
        self.set_epoch(self.epoch)
        # The run this trainer now continues: the checkpoint's folder (None for a dict without
        # its file's path, so fit then refuses any folder that holds a run).
        self._run_dir = (os.path.realpath(os.path.dirname(source) or ".")
                         if source is not None and os.path.isfile(source) else None)
        self.not_exact_notes = runtime_notes(state, self.device)
        if warn_not_exact:
            for note in self.not_exact_notes:
                warnings.warn(f"resume from {source}: {note}", NotBitExactWarning, stacklevel=2)
        return state

    def _restore_rng(self, state: Dict[str, Any]) -> None:
        """A single process restores ``rng`` (rank 0's states of a distributed run). A distributed
        run restores each rank's own states when the world size is unchanged; otherwise each rank
        reseeds with ``rank_seed(seed, rank, epoch)`` (deterministic, but not the states an
        uninterrupted run would have had)."""
        per_rank = state.get("rng_per_rank")
        if not self.distributed:
            if state.get("rng") is not None:
                set_rng_state(state["rng"])
            return
        if per_rank and len(per_rank) == self.world_size:
            set_rng_state(per_rank[self.rank], self._cuda_device())
            return
        import random
        import numpy as np
        seed = dist_utils.rank_seed(int((self.config or {}).get("seed", 0) or 0), self.rank,
                                    self.epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
