"""CIFS-ResNet-18 and DS-Net (issue #14): the closed-form CIFS masks against the official
autograd construction, multi-head losses in the objectives and the attacks, DS-Net's blocks and
parameter counts against the official model, and its α trained by its own optimizer."""

import math

import pytest
import torch
import torch.nn.functional as F

import fastadv
from fastadv import models
from fastadv.attacks import PGD
from fastadv.models.cifs import CIFSBlock, LinearProbe, NonlinearProbe
from fastadv.models.dsnet import (AdaptiveRungeKutta, Dense, DLATree, MBConv, PreActResidual,
                                  ResNeXt)
from fastadv.training import Trainer
from fastadv.training.objectives import CE, EpochPlan, Trades


def official_mask(probe, f, labels=None):
    """The official CIFS mask: autograd of z_t1 + z_t2 w.r.t. the detached features with
    create_graph, summed over space, softmax over the channels."""
    fd = f.detach().clone().requires_grad_(True)
    z = probe(fd.mean((2, 3)))
    top2 = z.topk(2, 1).indices
    t1 = top2[:, 0] if labels is None else labels
    t2 = top2[:, 1]
    g = torch.autograd.grad(z.gather(1, t1[:, None]).sum() + z.gather(1, t2[:, None]).sum(), fd,
                            create_graph=True)[0]
    return F.softmax(g.sum((2, 3)), dim=1)


@pytest.mark.parametrize("probe_type", [LinearProbe, NonlinearProbe])
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: Softplus's linear region (β·u > 20) too
def test_closed_form_mask_equals_the_official_autograd_mask(probe_type, scale):
    torch.manual_seed(0)
    probe = probe_type(12, 5).double()
    f = torch.randn(7, 12, 3, 3, dtype=torch.float64) * scale
    z = probe(f.mean((2, 3)))
    t = z.topk(2, 1).indices
    ours = F.softmax(probe.mask_logits(f.mean((2, 3)), t[:, 0], t[:, 1]), dim=1)
    ref = official_mask(probe, f)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    # The probe's weights get the same gradient through the mask (official: create_graph=True).
    w = torch.randn_like(ref)
    params = list(probe.parameters())
    g_ref = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    g_ours = torch.autograd.grad((ours * w).sum(), params, allow_unused=True)
    for a, b in zip(g_ref, g_ours):
        if a is None or b is None:  # biases that do not enter the mask (torch says None or 0)
            assert (a is None or a.abs().max() == 0) and (b is None or b.abs().max() == 0)
        else:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    if probe_type is NonlinearProbe and scale > 1:
        assert bool(((probe.fc1(f.mean((2, 3))) * 5) > 20).any())  # the linear region was hit


def test_cifs_block_in_training_uses_the_label_and_the_probes_second_class():
    torch.manual_seed(1)
    block = CIFSBlock(4, 6, 1, LinearProbe(6, 5)).double().train()
    x = torch.randn(9, 4, 5, 5, dtype=torch.float64)
    f = block.block(x)
    z = block.probe(f.mean((2, 3)))
    top2 = z.topk(2, 1).indices
    labels = top2[:, 1].clone()  # t1 = t2 = y when y ranks second (as the official code)
    labels[:3] = top2[:3, 0]
    labels[3:5] = z.argmin(1)[3:5]
    out, logits = block(x, labels)
    torch.testing.assert_close(logits, z)
    torch.testing.assert_close(out, f * official_mask(block.probe, f, labels)[:, :, None, None])
    twice_y = F.softmax(2 * block.probe.fc.weight[labels[5:]], 1)  # t1 = t2 = y
    torch.testing.assert_close(out[5:], f[5:] * twice_y[:, :, None, None])


def test_cifs_model_heads_weights_and_modes():
    torch.manual_seed(0)
    model = models.create("cifs_resnet18", num_classes=7, in_channels=1)
    assert models.head_weights(model) == (1.0, 1.0, 1.0)  # 3/(β+1)·[CE + β·mean CE(probes)], β = 2
    assert models.create("cifs_resnet18", beta=0).head_weights == (3.0, 0.0, 0.0)
    x, y = torch.rand(3, 1, 12, 12), torch.tensor([0, 4, 6])
    model.eval()
    heads = model(x, heads=True)
    assert len(heads) == 3 and all(h.shape == (3, 7) for h in heads)
    torch.testing.assert_close(model(x), heads[0])
    torch.testing.assert_close(model(x, labels=y), model(x))  # eval mode: the top-1, not labels
    for n in (0, 1):
        assert model(x[:n]).shape == (n, 7)
    wrapped = models.Normalized(model, [0.5], [0.25])
    assert models.head_weights(wrapped) == (1.0, 1.0, 1.0)
    torch.testing.assert_close(wrapped(x, heads=True)[1], model((x - 0.5) / 0.25, heads=True)[1])
    model.train()
    assert not torch.allclose(model(x, labels=y, heads=True)[0], model(x, heads=True)[0])


def test_objectives_add_every_heads_loss_with_its_weight():
    torch.manual_seed(0)
    model = models.create("cifs_resnet18", in_channels=1, beta=3.0).train()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])

    class Res:  # what the objective reads of an attack's result
        x_adv = (x + 0.05).clamp(0, 1)

    torch.manual_seed(5)
    loss, logits = CE()(model, x, y, Res, EpochPlan())
    torch.manual_seed(5)
    h = model(Res.x_adv, labels=y, heads=True)
    want = 3 / 4 * (F.cross_entropy(h[0], y) + 3 * (F.cross_entropy(h[1], y) + F.cross_entropy(h[2], y)) / 2)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logits, h[0].float())
    loss, _ = Trades()(model, x, y, Res, EpochPlan(settings={"beta": 6.0}))
    hn, ha = model(x, labels=y, heads=True), model(Res.x_adv, labels=y, heads=True)
    parts = [fastadv.training.objectives.trades_loss(a, b, y, 6.0) for a, b in zip(hn, ha)]
    torch.testing.assert_close(loss, 3 / 4 * (parts[0] + 1.5 * (parts[1] + parts[2])))


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_attack_gradient_is_that_of_the_joint_loss(loss):
    torch.manual_seed(0)
    model = models.create("cifs_resnet18", in_channels=1).eval()
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    atk = PGD(model, eps=0.1, alpha=0.02, steps=1, random_start=None, loss=loss)
    clean = atk._clean_logits(x)
    assert clean.shape == (3, 30)  # every head's clean logits side by side (TRADES)
    atk._classes, atk._targets, atk._check_labels = None, None, None
    atk._flags = torch.zeros(3, dtype=torch.bool)
    logits, grad = atk._check(x + 0.01, y, clean if loss == "kl" else None)
    xr = (x + 0.01).requires_grad_(True)
    heads = model(xr, heads=True)
    if loss == "ce":
        total = sum(F.cross_entropy(h, y, reduction="sum") for h in heads)
    else:
        total = sum(F.kl_div(F.log_softmax(h, 1), F.softmax(c, 1), reduction="sum")
                    for h, c in zip(heads, clean.split(10, 1)))
    (want,) = torch.autograd.grad(total, xr)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(logits, heads[0].detach())


# ----------------------------------------------------------------------------- DS-Net


def test_dsnet_matches_the_official_parameter_counts_and_layout():
    # The official CIFAR10_DS_NET (factor 4, 20 channels, 15 modules), built and counted from
    # d12306/dsnet: 20,780,245 weights (v1) and 24,035,815 (v2) besides α.
    for space, official in (("v1", 20_780_245), ("v2", 24_035_815)):
        torch.manual_seed(0)
        net = models.create(f"dsnet-{space}")
        assert models.num_parameters(net) - net.alpha.numel() == official
        assert net.alpha.shape == (15, 4) and net.alpha.abs().max() < 1e-2
    net = models.create("dsnet")
    assert sorted(int(k) for k in net.downsample) == [4, 9]  # after modules 5 and 10
    assert net.linear.in_features == 160
    # the atomic blocks' own counts at 20 channels (the official ones)
    counts = {PreActResidual: 7360, MBConv: 2645, Dense: 34080, AdaptiveRungeKutta: 7362,
              ResNeXt: 10800, DLATree: 38880}
    for block, n in counts.items():
        assert models.num_parameters(block(20)) == n, block.__name__


def test_dsnet_module_is_the_softmax_mixture_of_its_blocks():
    torch.manual_seed(0)
    net = models.create("dsnet-3-4", in_channels=1).eval()
    with torch.no_grad():
        net.alpha.normal_()
    x = torch.rand(2, 1, 8, 8)
    out = net.stem(x)
    w = F.softmax(net.alpha, 1)
    for i, cell in enumerate(net.cells):
        out = sum(w[i, j] * b(out) for j, b in enumerate(cell))
        if str(i) in net.downsample:
            out = net.downsample[str(i)](out)
    torch.testing.assert_close(net(x), net.linear(out.mean((2, 3))))
    for n in (0, 1):
        assert net(x[:n]).shape == (n, 10)


def test_runge_kutta_block_is_the_learned_second_order_step():
    torch.manual_seed(0)
    blk = AdaptiveRungeKutta(3).eval()
    x = torch.randn(2, 3, 4, 4)
    a, b = torch.sigmoid(blk.a21), torch.sigmoid(blk.b10)
    fx = blk.f(x)
    x1 = x + b * fx
    want = blk.bn((1 - a) * x + (1 - 1 / (2 * b) - a * b) * fx + a * x1 + 1 / (2 * b) * blk.f(x1))
    torch.testing.assert_close(blk(x), want)
    # consistency of the step (weights of f(x) and f(x1) sum to 1): second order for any a, b
    assert float(((1 - 1 / (2 * b) - a * b) + a * b + 1 / (2 * b)).detach()) == pytest.approx(1.0)


def test_trainer_steps_alpha_with_its_own_adam_and_refuses_double_stepping():
    torch.manual_seed(0)
    net = models.create("dsnet-3-4", in_channels=1)
    with pytest.raises(ValueError, match="optimizer: also updates DS-Net's architecture weights"):
        Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), "at", eps=0.1, alpha=0.02, steps=2)
    opt = torch.optim.SGD(models.weight_parameters(net), lr=0.1)
    tr = Trainer(net, opt, "at", eps=0.1, alpha=0.02, steps=2)
    adam = tr.own_optimizers["DS-Net's architecture weights alpha"]
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.999)
    assert adam.defaults["lr"] == 1e-3 and adam.defaults["weight_decay"] == 1e-3
    before = net.alpha.detach().clone()
    tr.train_step(torch.rand(8, 1, 8, 8), torch.arange(8) % 10)
    moved = (net.alpha.detach() - before).abs()
    assert moved.max() > 0 and moved.max() < 2e-3  # Adam's first step is about lr per entry
    assert adam.state[net.alpha]["step"] == 1
    snap = tr.snapshot()
    tr.train_step(torch.rand(8, 1, 8, 8), torch.arange(8) % 10)
    tr.restore(snap)  # CAT's rollback puts α's Adam state back too
    assert adam.state[net.alpha]["step"] == 1


def test_dsnet_run_resumes_exactly_with_alphas_optimizer(tmp_path):
    common = dict(method="at", model="dsnet-3-4", dataset="digits", train_samples=64,
                  eval_samples=16, batch_size=32, verbose=False, progress=False, threads=1)
    full = fastadv.train(epochs=2, out_dir=str(tmp_path / "full"), **common)
    fastadv.train(epochs=1, out_dir=str(tmp_path / "part"), **common)
    resumed = fastadv.train(epochs=2, out_dir=str(tmp_path / "part"), resume=True, **common)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    torch.testing.assert_close(a["model"]["alpha"], b["model"]["alpha"], rtol=0, atol=0)
    assert list(a["own_optimizers"]) == ["DS-Net's architecture weights alpha"]
    torch.testing.assert_close(a["own_optimizers"], b["own_optimizers"], rtol=0, atol=0)
    assert full.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]


def test_dsnet_learns_digits():
    torch.manual_seed(0)
    r = fastadv.train(method="standard", model="dsnet-3-4", dataset="digits", epochs=3,
                      train_samples=400, eval_samples=200, batch_size=32, lr=0.05, out_dir=False,
                      verbose=False, progress=False, threads=1)
    assert r.history[-1]["test_nat_acc"] > 60.0  # 87 % measured (chance: 10 %)


def test_cifs_probes_learn_while_the_masked_head_starts_slowly():
    """The softmax mask sums to 1 over 512 channels, so the final head starts on features ~1/512
    of their size and learns slowly (the official clean CIFS run sat at 10 % for its first two
    CIFAR-10 epochs, experiments/Cln_Res18_cifar10_CIFS/logging.txt); the probes learn at once."""
    from fastadv.data import load_dataset
    torch.manual_seed(0)
    d = load_dataset("digits", split="train")
    x, y = d.images[:256].float() / 255, d.labels[:256].long()
    model = models.create("cifs_resnet18", in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pooled = {}
    model.linear.register_forward_pre_hook(lambda mod, inp: pooled.__setitem__("f", inp[0]))
    for _ in range(100):  # 30 steps left the linear probe near chance on some CPUs (AVX2)
        i = torch.randint(0, 256, (32,))
        model.train()
        loss = sum(F.cross_entropy(z, y[i]) for z in model(x[i], labels=y[i], heads=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        heads = model(x[:128], heads=True)
    acc = [float((z.argmax(1) == y[:128]).float().mean()) for z in heads]
    assert acc[1] > 0.6 and acc[2] > 0.6  # the probes: 0.91-0.98 measured over 3 seeds (chance 0.1)
    assert acc[0] < 0.3  # the masked final head: still at chance (0.11-0.12)
    assert float(pooled["f"].abs().mean()) < 0.01  # the masked features: about 1/512 of f


@pytest.mark.parametrize("method", ["at", "fat", "trades", "mart", "gairat", "gair-fat"])
@pytest.mark.parametrize("model", ["cifs_resnet18", "dsnet-3-4"])
def test_every_method_trains_both_architectures(method, model):
    torch.manual_seed(0)
    net = models.create(model, in_channels=1)
    opt = torch.optim.SGD(models.weight_parameters(net), lr=0.01, momentum=0.9)
    extra = dict(gair_start=0) if "gair" in method else {}  # reweighting from the first epoch
    tr = Trainer(net, opt, method, eps=0.1, alpha=0.03, steps=3, epochs=2, **extra)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = tr.train_step(torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5]))
    assert math.isfinite(float(out["loss"])) and out["n"] == 6
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert "linear.weight" in changed
    if model.startswith("dsnet"):
        assert "alpha" in changed  # α stepped by its own Adam
    else:  # the probes are trained by their heads' losses
        assert "layer4.0.probe.fc1.weight" in changed and "layer4.1.probe.fc.weight" in changed


def test_wrapped_models_keep_their_own_optimizers():
    net = models.create("dsnet-3-4", in_channels=1, normalize=([0.5], [0.5]))
    groups = models.own_optimizers(net)
    assert len(groups) == 1 and groups[0].params[0] is net.model.alpha
    assert all(p is not net.model.alpha for p in models.weight_parameters(net))
    dp = torch.nn.DataParallel(models.create("dsnet-3-4", in_channels=1))
    assert len(models.own_optimizers(dp)) == 1
    assert models.head_weights(torch.nn.DataParallel(models.create("cifs_resnet18"))) == (1.0, 1.0, 1.0)
