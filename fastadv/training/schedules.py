"""Per-epoch schedules: learning rate, FAT's dynamic τ, GAIR's λ. Epochs are 0-based here.

All are pure functions of the epoch index (no hidden state), so a resumed run recomputes exactly
the values an uninterrupted run would have used.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

from .config import METHODS

_PIECEWISE = {"milestones": [0.5, 0.75], "factors": [0.1, 0.01]}
_FAT = {"milestones": [60 / 120, 90 / 120, 110 / 120], "factors": [0.1, 0.01, 0.005]}


def check_milestones(schedule: dict) -> None:
    """Validate ``{"milestones": [fractions of the epochs, increasing], "factors": [...]}``."""
    extra = set(schedule) - {"milestones", "factors"}
    if extra:
        raise ValueError(f"lr_schedule: unknown keys {sorted(extra)} (allowed: milestones, factors)")
    ms, fs = list(schedule.get("milestones", [])), list(schedule.get("factors", []))
    if len(ms) != len(fs):
        raise ValueError(f"lr_schedule: {len(ms)} milestones but {len(fs)} factors")
    if any(not (0 <= m <= 1) for m in ms) or ms != sorted(ms):
        raise ValueError(f"lr_schedule: milestones must be increasing fractions in [0, 1], got {ms}")
    if any(not (f >= 0) for f in fs):
        raise ValueError(f"lr_schedule: factors must be >= 0, got {fs}")


def lr_at(epoch: int, base_lr: float, epochs: int, schedule: Union[str, dict] = "piecewise") -> float:
    """The learning rate of (0-based) ``epoch`` out of ``epochs``.

    ``constant``; ``piecewise``: ×0.1 from 50 % and ×0.01 from 75 % of the epochs (Rice et al.,
    GAIRAT's default); ``fat``: the FAT code's ×0.1/×0.01/×0.005 at epochs 60/90/110 of 120, scaled;
    ``cosine``: base·(1 + cos(π·epoch/epochs))/2; a dict ``{milestones: [fractions], factors}``:
    lr = base·factor of the last milestone reached (epoch >= fraction·epochs: with 8 epochs,
    piecewise decays at epochs 4 and 6; a 1-epoch run keeps the base lr)."""
    if schedule == "constant":
        return float(base_lr)
    if schedule == "cosine":
        return float(base_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    spec = schedule if isinstance(schedule, dict) else {"piecewise": _PIECEWISE, "fat": _FAT}.get(schedule)
    if not isinstance(spec, dict):
        raise ValueError(f"lr_schedule: unknown {schedule!r}")
    lr = float(base_lr)
    for m, f in zip(spec["milestones"], spec["factors"]):
        if epoch + 1e-9 >= m * epochs:  # tolerance: 110/120·120 is 110.00000000000001
            lr = float(base_lr) * f
    return lr


def scale_boundaries(boundaries: Sequence[int], paper_epochs: int, epochs: int) -> Tuple[int, ...]:
    """Move the paper's epoch boundaries to a run of ``epochs`` epochs (same fractions)."""
    return tuple(int(round(b * epochs / paper_epochs)) for b in boundaries)


def tau_at(method: str, tau, epoch: int, epochs: int) -> Optional[int]:
    """τ used in (0-based) ``epoch``: the int itself, or the method's official dynamic schedule
    scaled to ``epochs`` (FAT 0/1/2 at 50/90 of 120; FAT-TRADES 0/1/2/3 at 30/50/70 of 85;
    FAT-MART 0…4 at 20/40/60/80 of 90; GAIR-FAT 0/3/6 at 40/70 of 120). The official code tests
    ``epoch <= b``, so the value changes *after* each boundary epoch. ``None`` for methods
    without τ."""
    if tau is None:
        return None
    if tau != "dynamic":
        return int(tau)
    spec = METHODS[method]
    if spec.dynamic_tau is None:
        raise ValueError(f"tau: method {method!r} has no dynamic schedule")
    boundaries, values, paper_epochs = spec.dynamic_tau
    scaled = scale_boundaries(boundaries, paper_epochs, epochs)
    return values[sum(epoch > b for b in scaled)]


def lam_at(method: str, lam, epoch: int, gair_start: Optional[int]) -> Optional[float]:
    """GAIR's λ in (0-based) ``epoch``: ``None`` before ``gair_start`` (plain CE: GAIRAT's
    burn-in) and for methods that do not reweight, else ``lam`` (the official "fixed" schedule)."""
    if not METHODS[method].gair or lam is None:
        return None
    if epoch < gair_start:
        return None
    return float(lam)
