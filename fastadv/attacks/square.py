"""Square Attack (Andriushchenko et al., ECCV 2020): a score-based random search, no gradients,
written from the paper and from the official code's behaviour (fra31/auto-attack).

Per query, each active row proposes its best point changed on one random s×s square (L∞: the
square set to ±ε per channel; L2: mass moved between two squares with the meta-pseudo-Gaussian
pattern) and keeps the proposal if it lowers the margin loss z_y − max_{i≠y} z_i (or misclassifies).
The square's side follows the schedule of p (``p_schedule``): p_init halved at queries 10, 50, 200,
500, 1000, 2000, 4000, 6000 and 8000 (of 10,000; rescaled to ``queries`` when
``rescale_schedule``), s = round(√(p·H·W)).

A row leaves the moment its margin is ≤ 0, with that point as ``x_adv``. The random numbers come
from the attack's CPU generator in the official order, and a query's numbers do not depend on which
rows are still active (L∞: one square position and one sign per channel for all rows, as in the
official code; L2: signs drawn for every row of the run, used by the rows still in it). So rows can
be compacted at any query without changing any result: on the CPU after every query that broke a
row, on a GPU every ``compact_every`` queries (default 16), with no host read in between; rows
broken in between are frozen by a mask until then.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import _check_float, _check_int
from .eval_base import ActiveRows, EvalAttack, success
from ..errors import UserError

LOSSES = ("margin", "ce")


def p_schedule(p_init: float, query: int, queries: int, rescale: bool) -> float:
    """The fraction p of pixels the square covers at query ``query`` (0-based)."""
    it = int(query / queries * 10000) if rescale else query
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                       (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _eta_rectangle(rows: int, cols: int) -> Tensor:
    """The concentric-rectangle pattern of the L2 attack (weights 1/(k+1)² from the centre out),
    normalised to unit L2 norm."""
    delta = torch.zeros(rows, cols)
    cy, cx = rows // 2, cols // 2
    for k in range(max(cy + 1, cx + 1)):
        delta[max(cy - k, 0):min(cy - k + 2 * k + 1, rows),
              max(cx - k, 0):min(cx - k + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
    return delta / (delta ** 2).sum().sqrt()


def eta_pattern(s: int, transpose: bool) -> Tensor:
    """The meta-pseudo-Gaussian s×s pattern: +rectangle on the top half, −rectangle on the bottom,
    unit L2 norm; transposed when ``transpose`` (the official coin flip)."""
    delta = torch.zeros(s, s)
    delta[:s // 2] = _eta_rectangle(s // 2, s)
    delta[s // 2:] = -1.0 * _eta_rectangle(s - s // 2, s)
    delta = delta / (delta ** 2).sum().sqrt()
    return delta.t() if transpose else delta


class _Draws:
    """The uniforms of a run's queries, ``per_query`` each, drawn from ``gen`` in chunks in the
    official order; ``finish(q)`` leaves ``gen`` exactly as q queries drawn one by one would.
    ``query(i)`` gives them on the CPU (the square's position: host values, no device read) and on
    ``device`` (the signs: one copy per chunk, not one per query)."""

    def __init__(self, gen: torch.Generator, per_query: int, device, chunk: int = 256):
        self.gen, self.per_query, self.chunk, self.device = gen, per_query, chunk, device
        self.state = gen.get_state()
        self.base, self.block = 0, torch.empty(0, per_query)

    def query(self, i: int) -> tuple[Tensor, Tensor]:
        if i - self.base >= self.block.shape[0]:
            self.base = i
            self.block = torch.rand(self.chunk, self.per_query, generator=self.gen)
            self.block_dev = self.block.to(self.device)
        return self.block[i - self.base], self.block_dev[i - self.base]

    def finish(self, used: int) -> None:
        self.gen.set_state(self.state)
        for lo in range(0, used, self.chunk):
            torch.rand(min(self.chunk, used - lo) * self.per_query, generator=self.gen)


def _random_int(u: Tensor, high: int) -> int:
    """The official ``random_int(0, high)``: ⌊high·u⌋ in float32 (so never ``high`` itself)."""
    return int((high * u.to(torch.float32)).long())


def _sign(u: Tensor) -> Tensor:
    """The official ``random_choice``: sign(2u − 1) (0 when u = 0.5 exactly)."""
    return torch.sign(2 * u - 1)


class Square(EvalAttack):
    """Square Attack, L∞ or L2, untargeted (or targeted with ``targets``/``set_mode_targeted_*``).

    ``Square(model, norm="linf", eps=8/255, queries=5000, p_init=0.8, restarts=1, loss="margin",
    rescale_schedule=True, seed=0, compact=True, compact_every=None)``. AutoAttack uses 5,000
    queries with ``rescale_schedule=False``. ``loss``: ``"margin"``, ``"ce"`` (−CE is minimised) or
    a callable ``loss(logits, y)`` → per-sample losses to maximise, as for the other attacks
    (``loss(logits, y, targets)`` targeted); the built-in targeted loss is CE to the target. ``compact_every``: queries between compactions on a
    GPU (None: every query on the CPU, 16 on a GPU). Inputs [N, C, H, W] in [0, 1].

    Example::

        res = fastadv.attacks.Square(model, eps=8/255, queries=1000).run(x, y)
    """

    def __init__(self, model, norm: str = "linf", eps: float = 8 / 255, queries: int = 5000,
                 p_init: float = 0.8, restarts: int = 1, loss="margin",
                 rescale_schedule: bool = True, seed: int = 0, compact: bool = True,
                 compact_every: Optional[int] = None, rows_per_pass: Optional[int] = None):
        super().__init__(model, norm=norm, eps=eps, seed=seed, compact=compact, rows_per_pass=rows_per_pass)
        self.queries = _check_int("queries", queries, 1)
        self.p_init = _check_float("p_init", p_init, strict=True)
        if self.p_init > 1:
            raise UserError(f"p_init must be in (0, 1], got {p_init}")
        self.restarts = _check_int("restarts", restarts, 1)
        if not callable(loss) and loss not in LOSSES:
            raise UserError(f"loss must be 'margin', 'ce' or a callable, got {loss!r}")
        self.loss = loss
        self.rescale_schedule = bool(rescale_schedule)
        self.compact_every = None if compact_every is None else _check_int("compact_every", compact_every, 1)

    def __repr__(self) -> str:
        return (f"Square(norm={self.norm!r}, eps={self.eps:.4g}, queries={self.queries}, "
                f"p_init={self.p_init}, seed={self.seed})")

    def _run(self, x, y, targets, clean, gen):
        if x.dim() != 4:
            raise UserError(f"Square needs images [N, C, H, W], got shape {tuple(x.shape)}")
        if self.norm == "l2" and min(x.shape[2:]) < 5:
            raise UserError(f"Square with norm='l2' needs images of at least 5x5 pixels, got "
                            f"{tuple(x.shape[2:])}")
        return super()._run(x, y, targets, clean, gen)

    def _margin_and_loss(self, x: Tensor, y: Tensor, tgt: Optional[Tensor], rows: Tensor):
        """(margin, loss, broken) per row: a row stops at margin ≤ 0 (the official rule); whether
        it is broken is the model's argmax there (a tie at margin 0 may still be correct)."""
        with torch.no_grad():  # queries only: no graph
            logits = self.logits(x, count=rows).float()
        label = y if tgt is None else tgt
        z = logits.gather(1, label[:, None]).squeeze(1)
        others = logits.scatter(1, label[:, None], float("-inf")).amax(1)
        broken = success(logits, y, tgt)
        if callable(self.loss):  # the user's loss is maximised: Square minimises its negation
            own = self.loss(logits, y) if tgt is None else self.loss(logits, y, tgt)
            return (others - z if tgt is not None else z - others), -own.float(), broken
        if tgt is not None:  # targeted: done once the target's logit is the largest
            return others - z, F.cross_entropy(logits, tgt, reduction="none"), broken
        margin = z - others
        loss = margin if self.loss == "margin" else -F.cross_entropy(logits, y, reduction="none")
        return margin, loss, broken

    def _single_run(self, x_nat, y, tgt, idx, out, broken, gen, restart, targeted):
        m0, c, h, w = x_nat.shape
        n_features = c * h * w
        # The start: L∞ vertical stripes of ±ε; L2 a grid of ±pattern squares scaled to ε.
        if self.norm == "linf":
            x_best = torch.clamp(x_nat + self.eps * _sign(self._rand([m0, c, 1, w], gen, x_nat)), 0.0, 1.0)
        else:
            x_best = self._l2_start(x_nat, gen)
        rows = ActiveRows(idx, out, broken, self.compact)
        margin, loss, wrong = self._margin_and_loss(x_best, y, tgt, rows.index)
        every = 1 if x_nat.device.type == "cpu" else (self.compact_every or 16)
        row_id = torch.arange(m0, device=x_nat.device)  # the row's place in this run (L2's signs)
        per_query = 2 + c if self.norm == "linf" else 5 + m0 * c
        draws = _Draws(gen, per_query, x_nat.device)
        self._patterns = {}  # (side, transposed) -> the L2 pattern on the device
        state = dict(x_nat=x_nat, x_best=x_best, y=y, tgt=tgt, margin=margin, loss=loss, row_id=row_id,
                     wrong=wrong)
        state = rows.settle(margin <= 0, x_best, state, verdict=wrong)
        used = 0
        for i in range(self.queries):
            if rows.m == 0:
                break
            used = i + 1
            s = state
            u, u_dev = draws.query(i)
            p = p_schedule(self.p_init, i, self.queries, self.rescale_schedule)
            propose = self._linf_proposal if self.norm == "linf" else self._l2_proposal
            x_new = propose(s, u, u_dev, p, n_features, c, h, w)
            margin, loss, wrong = self._margin_and_loss(x_new, s["y"], s["tgt"], rows.index)
            active = s["margin"] > 0  # rows broken since the last compaction stay frozen
            better = (loss < s["loss"]) & active
            s["loss"] = torch.where(better, loss, s["loss"])
            better = better | ((margin <= 0) & active)
            s["margin"] = torch.where(better, margin, s["margin"])
            s["x_best"] = torch.where(better.view(-1, 1, 1, 1), x_new, s["x_best"])
            s["wrong"] = torch.where(better, wrong, s["wrong"])
            if (i + 1) % every == 0 or i + 1 == self.queries:
                s = rows.settle(s["margin"] <= 0, s["x_best"], s, verdict=s["wrong"])
            state = s
        draws.finish(used)

    def _linf_proposal(self, s, u, u_dev, p, n_features, c, h, w) -> Tensor:
        side = min(max(int(round(math.sqrt(p * n_features / c))), 1), min(h, w))
        vh, vw = _random_int(u[0], h - side), _random_int(u[1], w - side)
        sign = _sign(u_dev[2:2 + c]).to(s["x_best"].dtype).view(1, c, 1, 1)
        x_new = s["x_best"].clone()
        win = (slice(None), slice(None), slice(vh, vh + side), slice(vw, vw + side))
        x_nat = s["x_nat"][win]
        # Only the square changes: elsewhere the official update leaves x_best as it is.
        x_new[win] = torch.clamp(torch.min(torch.max(s["x_best"][win] + 2.0 * self.eps * sign,
                                                     x_nat - self.eps), x_nat + self.eps), 0.0, 1.0)
        return x_new

    # ------------------------------------------------------------------ L2
    def _l2_normalize(self, d: Tensor) -> Tensor:
        return d / (self._norm(d) + 1e-12)

    def _l2_start(self, x_nat: Tensor, gen) -> Tensor:
        m0, c, h, w = x_nat.shape
        delta = torch.zeros_like(x_nat)
        s = h // 5
        start = (h - s * 5) // 2
        vh = start
        # The official grid overruns sizes such as 12×12 (it fails there); stop at the border.
        for _ in range(min(h // s, (h - start) // s)):
            vw = start
            for _ in range(min(w // s, (w - start) // s)):
                pattern = eta_pattern(s, bool(torch.rand(1, generator=gen) > 0.5)).to(x_nat)
                sign = _sign(self._rand([m0, c, 1, 1], gen, x_nat))
                delta[:, :, vh:vh + s, vw:vw + s] += pattern.view(1, 1, s, s) * sign
                vw += s
            vh += s
        return torch.clamp(x_nat + self._l2_normalize(delta) * self.eps, 0.0, 1.0)

    def _pattern(self, side: int, transpose: bool, like: Tensor) -> Tensor:
        key = (side, transpose)
        if key not in self._patterns:  # a handful of sizes: one host-to-device copy each
            self._patterns[key] = eta_pattern(side, transpose).to(like).view(1, 1, side, side)
        return self._patterns[key]

    def _l2_proposal(self, s, u, u_dev, p, n_features, c, h, w) -> Tensor:
        x_nat, x_best = s["x_nat"], s["x_best"]
        delta = x_best - x_nat
        side = max(int(round(math.sqrt(p * n_features / c))), 3)
        side = min(side + 1 if side % 2 == 0 else side, min(h, w))
        vh, vw = _random_int(u[0], h - side), _random_int(u[1], w - side)
        vh2, vw2 = _random_int(u[2], h - side), _random_int(u[3], w - side)
        win1 = (slice(None), slice(None), slice(vh, vh + side), slice(vw, vw + side))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + side), slice(vw2, vw2 + side))
        norm_win1 = (delta[win1] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = self._norm(x_best - x_nat)
        mask = torch.zeros_like(delta)
        mask[win1] = 1.0
        mask[win2] = 1.0
        norm_windows = ((delta * mask) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
        pattern = self._pattern(side, bool(u[4] > 0.5), delta)
        signs = _sign(u_dev[5:].view(-1, c)).to(delta)[s["row_id"]].view(-1, c, 1, 1)
        new = torch.ones(delta.shape[0], c, side, side, dtype=delta.dtype, device=delta.device)
        new = new * (pattern * signs) + delta[win1] / (1e-12 + norm_win1)
        budget = torch.clamp((torch.full_like(new, self.eps)) ** 2 - norm_image ** 2, min=0.0) / c
        new = new / (1e-12 + (new ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (budget + norm_windows ** 2).sqrt()
        delta[win2] = 0.0
        delta[win1] = new
        return torch.clamp(x_nat + self._l2_normalize(delta) * self.eps, 0.0, 1.0)
