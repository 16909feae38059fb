"""Power and type-I error of two-sample detectors over repeated draws (the SAMMD paper's protocol).

Per trial: the pools are shuffled; each detector is fitted on n natural against n adversarial
images, then tested ``test_sets`` times on n natural images drawn from the held-out natural pool
against n held-out adversarial ones (power: the share rejected). For the type-I error a fresh
detector is fitted on two disjoint natural samples and tested on pairs of disjoint held-out natural
samples (the share rejected should stay near α). The classifier's features of each pool are
computed once.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["detection_trials"]


def _rate(detector, draw, test_sets: int, alpha: float) -> float:
    return sum(detector._test(*draw()).rejects(alpha) for _ in range(test_sets)) / test_sets


def detection_trials(detectors: Mapping[str, Callable[[], object]], natural: Tensor,
                     adversarial: Tensor, *, n: int = 500, trials: int = 5, test_sets: int = 100,
                     alpha: float = 0.05, type_i: bool = True, seed: int = 0,
                     progress: Optional[bool] = None) -> Dict[str, Dict[str, object]]:
    """``detectors``: name → a factory of a fresh detector (``lambda: SAMMD(model)``,
    ``GaussianMMD``). ``natural`` needs 2n images (4n with ``type_i``), ``adversarial`` 2n (n
    to fit on, n held out; more are drawn from at random). Returns, per name, ``power`` and
    ``type_i`` (mean rejection rates, None when not measured) and their per-trial lists."""
    for name, v in (("n", n), ("trials", trials), ("test_sets", test_sets)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "n" else 1):
            raise ValueError(f"{name} must be an int >= {2 if name == 'n' else 1}, got {v!r}")
    need = 4 * n if type_i else 2 * n
    if natural.shape[0] < need:
        raise ValueError(f"natural: {natural.shape[0]} images, the protocol needs {need} "
                         f"({'4' if type_i else '2'}n with n = {n}); lower n")
    if adversarial.shape[0] < 2 * n:
        raise ValueError(f"adversarial: {adversarial.shape[0]} images, the protocol needs 2n = "
                         f"{2 * n}; lower n")
    made = {name: make() for name, make in detectors.items()}
    spatial = natural[0, 0].numel() if natural.dim() > 2 else natural[0].numel()
    phi_of = next((d for d in made.values() if d.uses_features), None)
    flat = lambda x: x.reshape(x.shape[0], -1).double().cpu()  # noqa: E731
    pools = {}
    for key, x in (("nat", natural), ("adv", adversarial)):
        pools[key] = (phi_of._phi(x) if phi_of is not None else None, flat(x))
    gen = torch.Generator().manual_seed(seed)
    out = {name: {"power_per_trial": [], "type_i_per_trial": []} for name in made}

    def rows(key, idx):
        f, i = pools[key]
        return (f[idx] if f is not None else None), i[idx]

    from ..training.logging import progress_bar, use_progress
    for _ in progress_bar(range(trials), total=trials, enabled=use_progress(progress),
                          desc="detection trials"):
        nat = torch.randperm(natural.shape[0], generator=gen)
        adv = torch.randperm(adversarial.shape[0], generator=gen)
        held_nat, held_adv = nat[n:], adv[n:]

        def power_draw():
            a = held_nat[torch.randperm(held_nat.numel(), generator=gen)[:n]]
            b = held_adv[torch.randperm(held_adv.numel(), generator=gen)[:n]]
            fa, ia = rows("nat", a)
            fb, ib = rows("adv", b)
            return fa, ia, fb, ib

        held_null = nat[2 * n:]

        def null_draw():
            pick = held_null[torch.randperm(held_null.numel(), generator=gen)[:2 * n]]
            fa, ia = rows("nat", pick[:n])
            fb, ib = rows("nat", pick[n:])
            return fa, ia, fb, ib

        for name, make in detectors.items():
            det = make()
            fa, ia = rows("nat", nat[:n])
            fb, ib = rows("adv", adv[:n])
            det._fit(fa, ia, fb, ib, spatial)
            out[name]["power_per_trial"].append(_rate(det, power_draw, test_sets, alpha))
            if type_i:
                det = make()
                fa, ia = rows("nat", nat[:n])
                fb, ib = rows("nat", nat[n:2 * n])
                det._fit(fa, ia, fb, ib, spatial)
                out[name]["type_i_per_trial"].append(_rate(det, null_draw, test_sets, alpha))
    for name, r in out.items():
        r["power"] = sum(r["power_per_trial"]) / trials
        r["type_i"] = sum(r["type_i_per_trial"]) / trials if type_i else None
    return out
