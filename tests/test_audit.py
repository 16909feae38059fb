"""The κ label audit (issue #13 item 6): kappa_audit, its ranking and scores, and
`fastadv audit-labels` on a run folder."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fastadv
from fastadv.audit import LabelAudit, flip_labels, kappa_audit

REPO = Path(__file__).resolve().parents[1]


class Fixed(nn.Module):
    """Predicts class ``x[:, 0] * 10`` (rounded) with a margin that shrinks near the class
    boundary: a model whose κ we can foresee (ε = 0 keeps every iterate at x)."""
    def forward(self, x):
        v = x.flatten(1)[:, 0] * 10
        centers = torch.arange(10, dtype=x.dtype)
        return -(v[:, None] - centers) ** 2 + 0 * self.w

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def test_kappa_counts_the_checks_that_keep_the_given_label():
    x = torch.tensor([[0.2], [0.5], [0.71], [0.9]]).view(4, 1, 1, 1)
    y = torch.tensor([2, 4, 7, 9])  # the second is "mislabelled": the model says 5
    audit = kappa_audit(Fixed(), (x, y), eps=0.0, alpha=0.0, steps=5)
    assert audit.kappa.tolist() == [5, 0, 5, 5]
    assert audit.order[0].item() == 1 and audit.rank[1].item() == 0
    assert audit.suspects(0.25).tolist() == [1]
    pr = audit.precision_recall(torch.tensor([False, True, False, False]))
    assert (pr["precision"], pr["recall"], pr["base_rate"]) == (1.0, 1.0, 0.25)
    assert audit.histogram() == [1, 0, 0, 0, 0, 3]
    with pytest.raises(ValueError, match="flipped: no example is marked"):
        audit.precision_recall(torch.zeros(4, dtype=torch.bool))
    assert audit.precision_recall(torch.zeros(4, dtype=torch.bool), fraction=0.25)["hits"] == 0


def test_ties_in_kappa_are_broken_by_the_margin():
    audit = LabelAudit(labels=torch.zeros(4, dtype=torch.long), kappa=torch.tensor([3, 0, 0, 3]),
                       margin=torch.tensor([0.5, 2.0, -1.0, -4.0]), steps=5)
    assert audit.order.tolist() == [2, 1, 3, 0]


def test_flip_labels_flips_exactly_that_share_to_other_classes():
    y = torch.arange(1000) % 10
    noisy, flipped = flip_labels(y, 0.1, 10, seed=3)
    assert int(flipped.sum()) == 100 and bool((noisy[flipped] != y[flipped]).all())
    assert torch.equal(noisy[~flipped], y[~flipped])


def test_audit_finds_flipped_digits_after_training(tmp_path):
    """A small AT run on digits with 10 % of its labels flipped: the lowest-κ 10 % hold far more
    flipped examples than the 10 % base rate (the MNIST figures: benchmarks/label_audit_mnist.py)."""
    from fastadv import models
    from fastadv.data import BatchLoader, ImageDataset, load_dataset
    from fastadv.training import Trainer
    ds = load_dataset("digits", split="train")
    noisy_y, flipped = flip_labels(ds.labels, 0.1, 10, seed=0)
    noisy = ImageDataset(ds.images, noisy_y, 10, name="digits-noisy")
    torch.manual_seed(0)
    model = models.create("small_cnn", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tr = Trainer(model, opt, "at", eps=0.1, alpha=0.025, steps=5, epochs=6)
    tr.fit(BatchLoader(noisy, batch_size=64, seed=0, augment=None), None, 6)
    audit = kappa_audit(model, noisy, eps=0.1, alpha=0.025, steps=5)
    pr = audit.precision_recall(flipped)
    assert pr["base_rate"] == pytest.approx(0.1, abs=0.001)
    assert pr["precision"] > 0.5, pr  # five times the base rate at least


def test_audit_labels_cli_writes_the_ranking_beside_the_run(tmp_path):
    run = tmp_path / "run"
    fastadv.train("at", dataset="digits", epochs=1, train_samples=96, eval_samples=32,
                  steps=2, out_dir=str(run), verbose=False, progress=False)
    p = subprocess.run([sys.executable, "-m", "fastadv", "audit-labels", str(run)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "96 examples; kappa (0 … 2) counts:" in p.stdout  # the run's 96 images, its K = 2
    with open(run / "label_audit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 96 and [int(r["rank"]) for r in rows] == list(range(96))
    assert sorted(int(r["index"]) for r in rows) == list(range(96))
    kappas = [int(r["kappa"]) for r in rows]
    assert kappas == sorted(kappas)  # most suspect (lowest κ) first
    assert (run / "label_audit.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "fastadv", "audit-labels", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "holds no last.pt" in bad.stderr
    from fastadv.cli import main
    assert main(["audit-labels", str(run), "--fraction", "2"]) == 2  # refused before any work
