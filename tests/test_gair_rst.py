"""GAIR with extra data (issue #13 item 7): the GAIR-TRADES objective, its two attacks, extra-data
files, batches that mix them, and gair-rst on MNIST with a pseudo-labelled part of its training
split."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastadv
from fastadv import models
from fastadv.data import BatchLoader, load_dataset
from fastadv.data.extra import MixedBatchLoader, extra_batch_size, load_extra_data
from fastadv.training import Trainer
from fastadv.training.objectives import EpochPlan, GairTrades

TIMING = {"seconds", "images_per_sec", "eval_seconds"}


def _model():
    torch.manual_seed(0)
    return models.create("small_cnn", num_classes=10, in_channels=1)


def test_gair_trades_is_the_official_formula():
    model = _model().eval()
    x, x_kl, x_cw = (torch.rand(6, 1, 8, 8) for _ in range(3))
    y = torch.randint(0, 10, (6,))

    class Res:
        x_adv, extras, kappa = x_kl, {"x_cw": x_cw}, torch.tensor([0, 1, 5, 9, 10, 3])
    plan = EpochPlan(settings={"beta": 6.0}, values={"lam": -1.0}, steps=10)
    loss, logits = GairTrades()(model, x, y, Res, plan)
    p = F.softmax(model(x), dim=1)
    kl = lambda z: (p * (p.log() - F.log_softmax(z, dim=1))).sum(1)  # noqa: E731
    w = (torch.tanh(-1.0 + 5 - Res.kappa.float()) + 1) / 2
    want = F.cross_entropy(model(x), y) + 6.0 * (w * kl(model(x_kl)) + (1 - w) * kl(model(x_cw))).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # Before gair_start (λ off): plain TRADES on x_kl alone.
    from fastadv.training.objectives import trades_loss
    off = EpochPlan(settings={"beta": 6.0}, values={"lam": None}, steps=10)
    assert GairTrades()(model, x, y, Res, off)[0].item() == pytest.approx(
        trades_loss(model(x), model(x_kl), y, 6.0).item(), rel=1e-6)


def test_the_second_attack_runs_from_gair_start_on():
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), "gair-rst", eps=0.2,
                 alpha=0.05, steps=3, epochs=4)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    assert tr.gair_start == 2 and tr.train_step(x, y)["bp"] == 8 * 3  # KL attack only
    tr.set_epoch(2)
    s = tr.train_step(x, y)
    assert tr.current_lam == 0.0 and s["bp"] == 8 * 3 * 2  # + the C&W attack
    with pytest.raises(ValueError, match="weight_func: method 'gair-rst' has no"):
        fastadv.training.config.resolve_config("gair-rst", weight_func="tanh")
    # λ > 10 is the official "off" (plain TRADES, no C&W attack); lam_at knows it.
    model = _model()
    off = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), "gair-rst", eps=0.2,
                  alpha=0.05, steps=3, epochs=4, lam=100.0)
    off.set_epoch(3)
    assert off.current_lam is None and off.train_step(x, y)["bp"] == 8 * 3
    from fastadv.training.methods import lam_at
    assert (lam_at("gair-rst", 0.0, 3, 2), lam_at("gair-rst", 100.0, 3, 2)) == (0.0, None)


def _digits_extra(tmp_path, fmt):
    ds = load_dataset("digits", split="train")
    imgs, labs = ds.images[1000:1200], ds.labels[1000:1200]
    path = tmp_path / f"extra.{fmt}"
    if fmt == "npz":
        np.savez(path, images=imgs.numpy(), labels=labs.numpy())
    elif fmt == "pt":
        torch.save({"data": imgs, "extrapolated_targets": labs}, path)
    else:  # the official pickle layout: NHWC uint8 and 'extrapolated_targets'
        with open(path, "wb") as f:
            pickle.dump({"data": imgs.permute(0, 2, 3, 1).numpy(),
                         "extrapolated_targets": labs.numpy()}, f)
    return ds, path, imgs, labs


@pytest.mark.parametrize("fmt", ["npz", "pt", "pickle"])
def test_extra_data_files(tmp_path, fmt):
    ds, path, imgs, labs = _digits_extra(tmp_path, fmt)
    extra = load_extra_data(str(path), ds)
    assert torch.equal(extra.images, imgs) and torch.equal(extra.labels, labs)
    assert extra.num_classes == 10 and extra.shape == ds.shape


def test_extra_data_errors_name_the_option(tmp_path):
    ds = load_dataset("digits", split="train")
    cases = {"shape.npz": dict(images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.zeros(4, np.int64)),
             "labels.npz": dict(images=np.zeros((4, 1, 8, 8), np.uint8), labels=np.full(4, 10)),
             "keys.npz": dict(pixels=np.zeros((4, 1, 8, 8), np.uint8))}
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match="extra_data: "):
            load_extra_data(str(tmp_path / name), ds)
    with pytest.raises(ValueError, match="extra_data: no file"):
        load_extra_data(str(tmp_path / "missing.npz"), ds)
    with pytest.raises(ValueError, match="extra_fraction: applies only with extra_data"):
        fastadv.training.config.resolve_config("gair-rst", extra_fraction=0.3)


def test_mixed_batches_take_their_share_and_repeat_by_epoch(tmp_path):
    ds, path, _, _ = _digits_extra(tmp_path, "npz")
    extra = load_extra_data(str(path), ds)
    train = ds.subset(slice(0, 300))
    b = extra_batch_size(64, 0.5)
    mk = lambda: MixedBatchLoader(BatchLoader(train, batch_size=64 - b, seed=0, device="cpu"),  # noqa: E731
                                  BatchLoader(extra, batch_size=b, seed=1, drop_last=True, device="cpu"))
    loader = mk()
    batches = list(loader.epoch_batches(0))
    assert len(batches) == len(loader) == 10  # ceil(300 / 32)
    assert all(x.shape[0] == y.shape[0] for x, y in batches)
    assert all(x.shape[0] == 64 for x, _ in batches[:-1]) and batches[-1][0].shape[0] == 12 + 32
    again = list(mk().epoch_batches(0))
    assert all(torch.equal(a[0], c[0]) for a, c in zip(batches, again))  # a function of the epoch
    assert not torch.equal(batches[0][0], list(mk().epoch_batches(1))[0][0])


def test_gair_rst_resumes_exactly_with_extra_data(tmp_path):
    _, path, _, _ = _digits_extra(tmp_path, "npz")
    common = dict(dataset="digits", train_samples=200, eval_samples=32, batch_size=32, steps=2,
                  progress=False, verbose=False, lr_schedule="constant", extra_data=str(path),
                  gair_start=1)
    full = fastadv.train("gair-rst", epochs=3, out_dir=str(tmp_path / "full"), **common)
    assert [r["bp_avg"] for r in full.history] == [2.0, 4.0, 4.0]  # the C&W attack from epoch 1
    fastadv.train("gair-rst", epochs=2, out_dir=str(tmp_path / "part"), **common)
    with pytest.raises(ValueError, match="extra_data: the run in .* trained with extra data"):
        fastadv.train(epochs=3, out_dir=str(tmp_path / "part"), resume=True, verbose=False,
                      progress=False)
    other = tmp_path / "other.npz"
    ds = load_dataset("digits", split="train")
    np.savez(other, images=ds.images[1300:1500].numpy(), labels=ds.labels[1300:1500].numpy())
    with pytest.raises(ValueError, match="extra_data: .*other.npz is not the extra data the run"):
        fastadv.train(epochs=3, out_dir=str(tmp_path / "part"), resume=True,
                      extra_data=str(other), verbose=False, progress=False)
    resumed = fastadv.train(epochs=3, out_dir=str(tmp_path / "part"), resume=True,
                            extra_data=str(path), verbose=False, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_gair_rst_on_mnist_with_pseudo_labelled_training_images(tmp_path):
    """The issue's check: a model trained on 1,000 MNIST images pseudo-labels 2,000 others; GAIR-RST
    trains on 400 of the 1,000 with the 2,000 as extra data (half of every batch)."""
    from shared_data import build_mnist, require_shared_data
    root = require_shared_data()
    build_mnist(root, tmp_path)
    train = load_dataset("mnist", data_dir=str(tmp_path), download=False, split="train")
    teacher = fastadv.train("standard", dataset="mnist", data_dir=str(tmp_path), download=False,
                            train_samples=1000, epochs=4, eval_samples=200, out_dir=False,
                            verbose=False, progress=False, lr=0.05, batch_size=32,
                            lr_schedule="constant")
    pool = train.subset(slice(1000, 3000))
    with torch.no_grad():
        pseudo = teacher.model.eval()(pool.float_images()).argmax(1)
    agree = float((pseudo == pool.labels).float().mean())
    assert agree > 0.7, agree  # pseudo-labels, mostly right (82 % when written)
    np.savez(tmp_path / "pseudo.npz", images=pool.images.numpy(), labels=pseudo.numpy())
    r = fastadv.train("gair-rst", dataset="mnist", data_dir=str(tmp_path), download=False,
                      train_samples=400, epochs=2, eval_samples=200, steps=2, eps=0.1,
                      alpha=0.025, lr=0.05, batch_size=32, lr_schedule="constant", out_dir=False,
                      verbose=False, progress=False, extra_data=str(tmp_path / "pseudo.npz"))
    rows = r.history
    assert [row["bp_avg"] for row in rows] == [2.0, 4.0]  # the C&W attack from epoch 2 of 2
    assert rows[0]["train_loss"] > rows[-1]["train_loss"]  # it learns from the mixed batches ...
    assert rows[-1]["test_nat_acc"] > 20.0, rows[-1]  # ... above chance (28 % when written)
