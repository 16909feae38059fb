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
from ..errors import UserError, UserTypeError

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
            raise UserError(f"{name} must be an int >= {2 if name == 'n' else 1}, got {v!r}")
    need = 4 * n if type_i else 2 * n
    if natural.shape[0] < need:
        raise UserError(f"natural: {natural.shape[0]} images, the protocol needs {need} "
                        f"({'4' if type_i else '2'}n with n = {n}); lower n")
    if adversarial.shape[0] < 2 * n:
        raise UserError(f"adversarial: {adversarial.shape[0]} images, the protocol needs 2n = "
                        f"{2 * n}; lower n")
    for name, x in (("natural", natural), ("adversarial", adversarial)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise UserTypeError(f"{name} must be a floating-point tensor of images (uint8: divide by "
                                f"255), got {x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if natural.shape[1:] != adversarial.shape[1:]:
        raise UserError(f"natural and adversarial images differ in shape: "
                        f"{tuple(natural.shape[1:])} vs {tuple(adversarial.shape[1:])}")
    spatial = natural[0, 0].numel() if natural.dim() > 2 else natural[0].numel()
    flat = lambda x: x.reshape(x.shape[0], -1).double().cpu()  # noqa: E731
    inputs = {"nat": flat(natural), "adv": flat(adversarial)}
    # Each feature source (a SAMMD's model or features callable) runs once over each pool.
    features, source_of = {}, {}
    for name, make in detectors.items():
        det = make()
        if getattr(det, "uses_features", False):
            key = (id(det.model), id(det.features))
            if key not in features:
                features[key] = {"nat": det._phi(natural), "adv": det._phi(adversarial)}
            source_of[name] = key
    gen = torch.Generator().manual_seed(seed)
    out = {name: {"power_per_trial": [], "type_i_per_trial": []} for name in detectors}

    def rows(name, pool, idx):
        f = features[source_of[name]][pool][idx] if name in source_of else None
        return f, inputs[pool][idx]

    from ..training.logging import progress_bar, use_progress
    for _ in progress_bar(range(trials), total=trials, enabled=use_progress(progress),
                          desc="detection trials"):
        nat = torch.randperm(natural.shape[0], generator=gen)
        adv = torch.randperm(adversarial.shape[0], generator=gen)
        held_nat, held_adv, held_null = nat[n:], adv[n:], nat[2 * n:]
        for name, make in detectors.items():
            def power_draw():  # n held-out natural vs n held-out adversarial images
                a = held_nat[torch.randperm(held_nat.numel(), generator=gen)[:n]]
                b = held_adv[torch.randperm(held_adv.numel(), generator=gen)[:n]]
                return (*rows(name, "nat", a), *rows(name, "adv", b))

            def null_draw():  # two disjoint samples of n held-out natural images
                pick = held_null[torch.randperm(held_null.numel(), generator=gen)[:2 * n]]
                return (*rows(name, "nat", pick[:n]), *rows(name, "nat", pick[n:]))

            det = make()
            det._fit(*rows(name, "nat", nat[:n]), *rows(name, "adv", adv[:n]), spatial)
            out[name]["power_per_trial"].append(_rate(det, power_draw, test_sets, alpha))
            if type_i:
                det = make()
                det._fit(*rows(name, "nat", nat[:n]), *rows(name, "nat", nat[n:2 * n]), spatial)
                out[name]["type_i_per_trial"].append(_rate(det, null_draw, test_sets, alpha))
    for name, r in out.items():
        r["power"] = sum(r["power_per_trial"]) / trials
        r["type_i"] = sum(r["type_i_per_trial"]) / trials if type_i else None
    return out
