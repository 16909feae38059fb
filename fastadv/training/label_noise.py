"""NoiLIn (Zhang et al., "NoiLIn: Improving adversarial training and correcting stereotype of
noisy labels", TMLR 2022; zjfheart/NoiLIn): noisy labels injected into every minibatch before the
attack, at a rate that grows while the validation robust accuracy falls.

Per batch, each label is replaced with probability ``rate``: ``symmetric`` by one of the other
C − 1 classes uniformly, ``pairflip`` by the next class (y + 1 mod C). The attack and the loss use
the noisy labels (as the official code); early stopping (FAT's τ) and κ (GAIR) are judged against
the clean labels, so that NoiLIn composes with FAT and GAIRAT: a row stops when the model gets
its *true* class wrong, and κ measures how hard the true example is.

The rate starts at ``noise_min`` (0.05). After each epoch e the validation robust accuracy
(PGD-K with the training ε and α) is compared with the one of epoch e − 10: if it is lower the
rate is multiplied by 1.05, up to ``noise_max`` (0.6 for AT, 0.4 for TRADES), and up to
``noise_max / 2`` until 3/4 of the epochs (the official code's ``epoch <= 90`` of 120, scaled).
The rate is a function of the history's validation accuracies, so a resumed run recomputes it.

Differences from the official code: the flips draw from the run's own RNG (the official
``noisify`` reseeds a ``RandomState(seed)`` on every call, so the same batch positions flip to
the same classes in every batch, whatever the images); the validation images are held out from
the *training* set (the official CIFAR script takes 2 % of the test set).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .checks import Option, check_number, fail
from ..errors import UserError

NOISE_TYPES = ("symmetric", "pairflip")


def inject_label_noise(y: Tensor, rate: float, num_classes: int, kind: str = "symmetric",
                       generator: Optional[torch.Generator] = None) -> Tensor:
    """A copy of ``y`` with each label replaced with probability ``rate``: ``symmetric``: by a
    uniformly drawn *other* class; ``pairflip``: by ``(y + 1) % num_classes``. Draws from
    ``generator`` (default: the global RNG of y's device)."""
    if kind not in NOISE_TYPES:
        raise UserError(f"kind must be one of {', '.join(NOISE_TYPES)}, got {kind!r}")
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes!r}")
    n = y.shape[0]
    flip = torch.rand(n, device=y.device, generator=generator) < rate
    if kind == "pairflip":
        shift = torch.ones_like(y)
    else:  # 1 … C−1 uniformly: every other class equally likely
        shift = torch.randint(1, num_classes, (n,), device=y.device, generator=generator)
    return torch.where(flip, (y + shift) % num_classes, y)


def _check_type(name, value, epochs):
    if not isinstance(value, str) or value.lower() not in NOISE_TYPES:
        fail(name, f"must be one of {', '.join(NOISE_TYPES)}, got {value!r}")
    return value.lower()


def _check_rate(name, value, epochs):
    check_number(name, value, minimum=0)
    if value > 1:
        fail(name, f"is a probability, at most 1, got {value!r}")
    return float(value)


class LabelNoise:
    """NoiLIn's injection (see the module doc) as a part of a :class:`~fastadv.training.methods.Method`.
    Options ``noise_type`` (symmetric), ``noise_min`` (0.05), ``noise_max`` (``max_rate``: 0.6
    for AT, 0.4 for TRADES); ``growth`` (0.05) and ``window`` (10 epochs) as in the official
    code."""
    # The official cap of noise_max / 2 holds while epoch <= 90 of 120.
    half_cap_until = (90, 120)

    def __init__(self, max_rate: float = 0.6, growth: float = 0.05, window: int = 10):
        check_number("growth", growth, minimum=0)
        check_number("window", window, minimum=1, integer=True)
        self.growth, self.window = float(growth), window
        self.options = (
            Option("noise_type", "NoiLIn label noise (its kind)", "symmetric", _check_type),
            Option("noise_min", "NoiLIn label noise (its first rate)", 0.05, _check_rate),
            Option("noise_max", "NoiLIn label noise (its largest rate)", float(max_rate),
                   _check_rate))

    def rate_at(self, settings: Mapping[str, Any], val_accs: Sequence[float], epoch: int,
                epochs: Optional[int]) -> float:
        """The rate of (0-based) ``epoch``, from the validation robust accuracies of the epochs
        before it (``val_accs[i]`` of epoch i; the official ring of ``window`` zeros)."""
        self.check(settings)
        lo, hi = settings["noise_min"], settings["noise_max"]
        if epochs is None:
            fail("epochs", "NoiLIn's rate is capped at noise_max / 2 until 3/4 of the run: pass "
                           "epochs= (to the Trainer or to fit)")
        rate = lo
        ring = [0.0] * self.window
        cap_end = round(self.half_cap_until[0] * epochs / self.half_cap_until[1])
        for i, acc in enumerate(val_accs[:epoch]):
            if acc is None:
                fail("val_data", f"epoch {i + 1} has no validation robust accuracy; NoiLIn's rate "
                                 f"follows it: give fit(val_data=...)")
            before, ring[i % self.window] = ring[i % self.window], float(acc)
            if before > acc:
                rate = min(rate * (1 + self.growth), hi)
            if i <= cap_end:
                rate = min(hi / 2, rate)
        return rate

    def check(self, settings: Mapping[str, Any]) -> None:
        """The options together: noise_min <= noise_max."""
        if settings["noise_min"] > settings["noise_max"]:
            fail("noise_min", f"{settings['noise_min']:g} is above noise_max="
                              f"{settings['noise_max']:g}")

    def epoch_values(self, settings, epoch, epochs, history: Sequence[Mapping] = ()):
        accs = [row.get("val_robust_acc") for row in history]
        return {"noise_rate": self.rate_at(settings, accs, epoch, epochs)}

    def __call__(self, y: Tensor, num_classes: int, plan) -> Tensor:
        return inject_label_noise(y, plan.values["noise_rate"], num_classes,
                                  plan.settings["noise_type"])

    def __repr__(self) -> str:
        return (f"LabelNoise(max_rate={self.options[2].default:g}, growth={self.growth:g}, "
                f"window={self.window})")
