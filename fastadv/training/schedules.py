"""Per-epoch learning-rate schedules (epochs 0-based). A method's own schedules (FAT's dynamic
τ, GAIR's λ) are parts of its object in :mod:`fastadv.training.methods`.

All are pure functions of the epoch index (no hidden state), so a resumed run recomputes exactly
the values an uninterrupted run would have used.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

from .checks import fail
from ..errors import UserError

# The named milestone schedules: Rice et al.'s piecewise decay (GAIRAT's default) and FAT.py's.
NAMED_SCHEDULES = {
    "piecewise": {"milestones": [0.5, 0.75], "factors": [0.1, 0.01]},
    "fat": {"milestones": [60 / 120, 90 / 120, 110 / 120], "factors": [0.1, 0.01, 0.005]},
}
LR_SCHEDULES = ("constant", "cosine") + tuple(NAMED_SCHEDULES)


def check_milestones(schedule: dict) -> None:
    """Validate ``{"milestones": [fractions of the epochs, increasing], "factors": [...]}``."""
    extra = set(schedule) - {"milestones", "factors"}
    if extra:
        fail("lr_schedule", f"unknown keys {sorted(extra)} (allowed: milestones, factors)")
    ms, fs = list(schedule.get("milestones", [])), list(schedule.get("factors", []))
    if len(ms) != len(fs):
        fail("lr_schedule", f"{len(ms)} milestones but {len(fs)} factors")
    if any(not (0 <= m <= 1) for m in ms) or ms != sorted(ms):
        fail("lr_schedule", f"milestones must be increasing fractions in [0, 1], got {ms}")
    if any(not (f >= 0) for f in fs):
        fail("lr_schedule", f"factors must be >= 0, got {fs}")


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
    spec = schedule if isinstance(schedule, dict) else NAMED_SCHEDULES.get(schedule)
    if not isinstance(spec, dict):
        raise UserError(f"lr_schedule: unknown {schedule!r}")
    lr = float(base_lr)
    for m, f in zip(spec["milestones"], spec["factors"]):
        if epoch + 1e-9 >= m * epochs:  # tolerance: 110/120·120 is 110.00000000000001
            lr = float(base_lr) * f
    return lr


def scale_boundaries(boundaries: Sequence[int], paper_epochs: int, epochs: int) -> Tuple[int, ...]:
    """Move the paper's epoch boundaries to a run of ``epochs`` epochs (same fractions)."""
    return tuple(int(round(b * epochs / paper_epochs)) for b in boundaries)
