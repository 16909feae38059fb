"""Option checks shared by :func:`fastadv.train` (via ``resolve_config``), the :class:`Trainer`
and the training methods: one rule and one message per option, naming it.

Errors are :class:`~fastadv.errors.UserError` (a ``ValueError``) for a bad value and
``TypeError`` for a value of the wrong kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import UserError, UserTypeError


def fail(option: str, msg: str, exc=UserError):
    raise exc(f"{option}: {msg}")


def check_number(option: str, value, *, minimum=None, strict=False, integer=False,
                 allow_none=False):
    """A finite int/float (``integer``: an int; never a bool) ``>= minimum`` (``> `` if
    ``strict``)."""
    if value is None:
        if allow_none:
            return
        fail(option, "is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        fail(option, f"must be {'an int' if integer else 'a number'}, got {value!r}",
             UserTypeError)
    if not math.isfinite(value):
        fail(option, f"must be finite, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        fail(option, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")


def check_bool(option: str, value) -> None:
    """Only True and False (``resume="no"`` would be truthy)."""
    if not isinstance(value, bool):
        fail(option, f"must be True or False, got {value!r}", UserTypeError)


def check_attack_budget(eps, alpha, steps) -> None:
    """ε and α are finite, >= 0 and at most the whole [0, 1] pixel range (above 1 is a slip for
    /255); steps is an int >= 1."""
    for option, value in (("eps", eps), ("alpha", alpha)):
        check_linf_size(option, value)
    check_number("steps", steps, minimum=1, integer=True)


def check_linf_size(option: str, value, *, strict: bool = False) -> None:
    """An L-inf radius or step on [0, 1] images: a finite number >= 0 (> 0 when ``strict``) and
    at most 1, the whole pixel range (above 1 is a slip for /255)."""
    check_number(option, value, minimum=0, strict=strict)
    if value > 1:
        fail(option, f"{value:g} is larger than the whole [0, 1] pixel range; did you mean "
                     f"{value:g}/255 = {value / 255:.4g}?")


@dataclass(frozen=True)
class Option:
    """An option that belongs to one part of a training method (an attack recipe or an
    objective): its ``name`` (a field of :class:`~fastadv.training.config.TrainConfig`), what it
    is (for errors: "FAT's early-stop budget"), its ``default`` (a value, or a function of the
    run's epochs that may return ``None`` while the number of epochs is unknown) and ``check``
    (``check(name, value, epochs) -> value``: validates and normalises)."""
    name: str
    what: str
    default: Any
    check: Callable[[str, Any, Optional[int]], Any]

    def resolve(self, value, epochs: Optional[int]):
        """The checked value; the default when ``value`` is None (``None`` while a default that
        depends on the epochs cannot be computed yet)."""
        if value is None:
            value = self.default(epochs) if callable(self.default) else self.default
            if value is None:
                return None
        return self.check(self.name, value, epochs)
