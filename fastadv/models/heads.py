"""Models with several logit heads (CIFS: the final classifier and its probes).

A multi-head model is an ``nn.Module`` with a ``head_weights`` attribute (one weight per head, the
final head first) whose ``forward(x, labels=None, heads=False)``

- returns the final logits [N, C] by default, so evaluations, AutoAttack and any other code use
  it as any other classifier (fastadv's PGD-family attacks, which go through
  ``Attack._check``, attack the weighted loss of all heads, as the official CIFS PGD does);
- returns a tuple of logits, the final head first, with ``heads=True``; ``labels`` [N] may steer
  label-dependent layers in training mode (CIFS's masks use the true class there).

The training objectives and the attacks then apply their loss to every head and add the results
with these weights: ``Σ_h w_h · loss(head_h)`` (CIFS: ``3/(β+1)·[CE(final) + β·mean CE(probes)]``
is ``w = (3/(β+1), 3β/((β+1)·P), …)`` for P probes). Wrappers pass the keywords on
(:class:`~fastadv.models.Normalized`, DDP, ``torch.compile``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from torch import Tensor

from ._unwrap import inner_module
from ..errors import UserError

__all__ = ["head_weights", "forward_heads", "weighted_heads"]


def head_weights(model) -> Optional[Tuple[float, ...]]:
    """The head weights of a multi-head model (final head first), ``None`` for a plain model."""
    w = getattr(inner_module(model), "head_weights", None)
    return tuple(float(v) for v in w) if w is not None else None


def forward_heads(model, x: Tensor, labels: Optional[Tensor] = None) -> List[Tensor]:
    """Every head's logits, the final head first: ``[model(x)]`` for a plain model."""
    if head_weights(model) is None:
        return [model(x)]
    out = model(x, labels=labels, heads=True)
    if not isinstance(out, (tuple, list)) or not out:
        raise UserError(f"model: a multi-head model must return a tuple of logits with "
                        f"heads=True, got {type(out).__name__}")
    return list(out)


def weighted_heads(weights: Optional[Sequence[float]], losses: Sequence[Tensor]) -> Tensor:
    """``Σ_h w_h · losses[h]`` (the loss itself for a plain model: ``weights=None``)."""
    if weights is None:
        (loss,) = losses
        return loss
    if len(weights) != len(losses):
        raise UserError(f"model: declares {len(weights)} head weights but returned "
                        f"{len(losses)} heads")
    total = losses[0] * weights[0]
    for w, loss in zip(weights[1:], losses[1:]):
        total = total + loss * w
    return total
