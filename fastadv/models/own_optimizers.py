"""Parameters that a model trains with an optimizer of their own (DS-Net's architecture weights α,
with Adam, beside SGD for the network's weights).

A model declares them with a method ``own_optimizers() -> [OwnOptimizer, ...]``. The trainer
builds each optimizer, zeroes and steps it with the main one after the same backward pass, and
saves and restores its state in checkpoints; the main optimizer is built from
:func:`weight_parameters` (the rest), and one that also holds these parameters is refused (they
would be stepped twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn as nn

from ._unwrap import inner_module
from ..errors import UserTypeError

__all__ = ["OwnOptimizer", "own_optimizers", "weight_parameters"]


@dataclass(frozen=True)
class OwnOptimizer:
    """``params`` trained by ``build(params)`` (e.g. ``lambda ps: torch.optim.Adam(ps, lr=1e-3)``);
    ``name`` says what they are in messages and checkpoints."""
    name: str
    params: Tuple[nn.Parameter, ...]
    build: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]


def own_optimizers(model) -> List[OwnOptimizer]:
    """What ``model`` declares (``[]`` for a model that declares nothing)."""
    declare = getattr(inner_module(model), "own_optimizers", None)
    if declare is None:
        return []
    groups = list(declare())
    for g in groups:
        if not isinstance(g, OwnOptimizer):
            raise UserTypeError(f"model.own_optimizers() must return OwnOptimizer objects, got "
                                f"{type(g).__name__}")
    return groups


def weight_parameters(model) -> List[nn.Parameter]:
    """``model.parameters()`` less those with an optimizer of their own: build the main optimizer
    from these (``torch.optim.SGD(weight_parameters(model), lr=0.1)``)."""
    own = {id(p) for g in own_optimizers(model) for p in g.params}
    return [p for p in model.parameters() if id(p) not in own]
