"""The κ label audit: which training labels are probably wrong?

κ (GAIRAT's geometry value) counts the PGD checks at which a model still predicts an example's
*given* label. After adversarial training, a typical example keeps its label through most of the
attack (large κ), a rare but correct one loses it late, and a mislabelled one — whose given label
the model does not believe in the first place — has κ = 0 from the start. Ranking the examples by
κ (ties: by the clean margin z_y − max_{j≠y} z_j, lowest first) puts the suspects first.

``audit = kappa_audit(model, dataset, eps=0.3)``; ``audit.suspects(0.1)`` are the dataset indices
of the lowest-κ 10 %; ``audit.precision_recall(flipped)`` scores them against known flips;
``audit.to_csv(path)`` and ``audit.plot(path)`` write the table and the κ histograms. The CLI:
``fastadv audit-labels RUN_OR_CHECKPOINT``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from .errors import UserError, UserTypeError


@dataclass
class LabelAudit:
    """Per example (by dataset index 0 … N−1): the given ``labels``, ``kappa`` (0 … ``steps``),
    the clean ``margin`` of the given label, and ``rank`` (0 = most suspect)."""
    labels: Tensor
    kappa: Tensor
    margin: Tensor
    steps: int

    @property
    def order(self) -> Tensor:
        """Dataset indices, most suspect first: ascending κ, then ascending margin."""
        by_margin = torch.argsort(self.margin, stable=True)
        return by_margin[torch.argsort(self.kappa[by_margin], stable=True)]

    @property
    def rank(self) -> Tensor:
        r = torch.empty_like(self.kappa)
        r[self.order] = torch.arange(len(self.kappa))
        return r

    def suspects(self, fraction: float = 0.1) -> Tensor:
        """The dataset indices of the most suspect ``fraction`` of the examples."""
        if not 0 < fraction <= 1:
            raise UserError(f"fraction must be in (0, 1], got {fraction!r}")
        return self.order[:max(1, round(fraction * len(self.kappa)))]

    def precision_recall(self, flipped: Tensor, fraction: Optional[float] = None) -> Dict[str, float]:
        """Against a bool mask of the examples known to be mislabelled: the precision and recall
        of the lowest-κ ``fraction`` (default: the flipped fraction), and the base rate."""
        flipped = torch.as_tensor(flipped, dtype=torch.bool).cpu()
        if flipped.shape != self.kappa.shape:
            raise UserError(f"flipped must have shape {tuple(self.kappa.shape)}, got "
                            f"{tuple(flipped.shape)}")
        n_flipped = int(flipped.sum())
        if fraction is None:
            if n_flipped == 0:
                raise UserError("flipped: no example is marked; give fraction= to score the "
                                "suspects anyway")
            fraction = n_flipped / len(flipped)
        picked = self.suspects(fraction)
        hits = int(flipped[picked].sum())
        return {"fraction": fraction, "picked": len(picked), "hits": hits,
                "precision": hits / len(picked), "recall": hits / max(n_flipped, 1),
                "base_rate": n_flipped / len(flipped)}

    def histogram(self, mask: Optional[Tensor] = None) -> list:
        """Counts of κ = 0 … steps (of the examples in ``mask``)."""
        k = self.kappa if mask is None else self.kappa[torch.as_tensor(mask, dtype=torch.bool)]
        return torch.bincount(k, minlength=self.steps + 1).tolist()

    def to_csv(self, path: str, flipped: Optional[Tensor] = None) -> None:
        """One row per example, most suspect first: rank, index, label, kappa, margin
        (and flipped, when known)."""
        from .training.run_folder import atomic_write
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["rank", "index", "label", "kappa", "margin"] + (["flipped"] if flipped is not None else []))
        for r, i in enumerate(self.order.tolist()):
            row = [r, i, int(self.labels[i]), int(self.kappa[i]), f"{float(self.margin[i]):.6g}"]
            w.writerow(row + ([int(bool(flipped[i]))] if flipped is not None else []))
        atomic_write(path, lambda f: f.write(buf.getvalue().encode()))

    def plot(self, path: str, flipped: Optional[Tensor] = None, title: str = "") -> None:
        """Histograms of κ (all examples; with ``flipped``, the mislabelled and the others
        apart, each as a share of its group) to a PNG."""
        from .reports import pyplot
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ks = list(range(self.steps + 1))
        groups = [("all examples", None)] if flipped is None else [
            ("correct labels", ~torch.as_tensor(flipped, dtype=torch.bool)),
            ("flipped labels", torch.as_tensor(flipped, dtype=torch.bool))]
        width = 0.8 / len(groups)
        for g, (name, mask) in enumerate(groups):
            counts = self.histogram(mask)
            total = max(sum(counts), 1)
            ax.bar([k + (g - (len(groups) - 1) / 2) * width for k in ks],
                   [100 * c / total for c in counts], width, label=f"{name} ({total})")
        ax.set_xlabel(f"κ: checks (of {self.steps}) at which the given label was still predicted")
        ax.set_ylabel("% of the group")
        ax.set_xticks(ks)
        ax.legend()
        ax.set_title(title or "κ label audit")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def kappa_audit(model: nn.Module, data, eps: float, alpha: Optional[float] = None,
                steps: int = 10, batch_size: int = 256, device=None,
                max_samples: Optional[int] = None, progress: Optional[bool] = False,
                seed: Optional[int] = 0) -> LabelAudit:
    """κ of every example of ``data`` (an ImageDataset, a tuple (x, y) or an iterable of batches,
    in dataset order; uint8 images are scaled to [0, 1]) under GA-PGD-``steps`` (ε, α = ε/4 by
    default, uniform start, CE on the given label): the number of checks k = 0 … K−1 at which
    the model predicts the given label. ``seed``: of the random starts, drawn from a forked RNG
    (None: the global RNG, advanced)."""
    from .training.checks import check_attack_budget, check_number
    if not isinstance(model, nn.Module):
        raise UserTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    alpha = eps / 4 if alpha is None else alpha
    check_attack_budget(eps, alpha, steps)
    check_number("batch_size", batch_size, minimum=1, integer=True)
    check_number("max_samples", max_samples, minimum=1, integer=True, allow_none=True)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if seed is None:
        return _kappa_audit(model, data, eps, alpha, steps, batch_size, device, max_samples,
                            progress)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)  # the caller's RNG streams are left as they were
        return _kappa_audit(model, data, eps, alpha, steps, batch_size, device, max_samples,
                            progress)


def _kappa_audit(model, data, eps, alpha, steps, batch_size, device, max_samples, progress):
    from .attacks import GAPGD
    from .evaluation import _batches, _num_batches
    from .training.logging import progress_bar, use_progress
    was_training = model.training
    model.eval()
    attack = GAPGD(model, eps=eps, alpha=alpha, steps=steps, random_start="uniform")
    labels, kappas, margins = [], [], []
    try:
        batches = _batches(data, batch_size, device, max_samples)
        total = _num_batches(data, batch_size, max_samples, 1)
        for x, y in progress_bar(batches, total, use_progress(progress), desc="kappa audit"):
            res = attack.run(x, y)
            with torch.no_grad():
                z = model(x).float()
                own = z.gather(1, y[:, None]).squeeze(1)
                other = z.scatter(1, y[:, None], -math.inf).amax(1)
            labels.append(y.cpu())
            kappas.append(res.kappa.cpu())
            margins.append((own - other).cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise UserError("data: no examples to audit")
    return LabelAudit(torch.cat(labels), torch.cat(kappas), torch.cat(margins), steps)


def flip_labels(labels: Tensor, fraction: float, num_classes: int, seed: int = 0):
    """``(noisy labels, flipped mask)``: exactly ``round(fraction·N)`` examples, chosen at
    random, moved to another class uniformly (the evidence's synthetic label noise)."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=g)[:round(fraction * n)]] = True
    shift = torch.randint(1, num_classes, (n,), generator=g)
    noisy = torch.where(flipped, (labels + shift) % num_classes, labels)
    return noisy, flipped


def summary_lines(audit: LabelAudit, top: int = 10) -> Sequence[str]:
    """The audit in a few lines: the κ histogram and the first suspects."""
    hist = audit.histogram()
    n = len(audit.kappa)
    lines = [f"{n} examples; kappa (0 … {audit.steps}) counts: "
             + " ".join(f"{k}:{c}" for k, c in enumerate(hist)),
             f"kappa = 0 (the model rejects the given label at every check): {hist[0]} "
             f"({100 * hist[0] / n:.1f} %)",
             "most suspect (index label kappa margin): " + ", ".join(
                 f"{i} {int(audit.labels[i])} {int(audit.kappa[i])} {float(audit.margin[i]):.2f}"
                 for i in audit.order[:top].tolist())]
    return lines
