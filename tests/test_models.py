"""fastadv.models: shapes, parameter counts of the published architectures, create(), wrappers."""
import pytest
import torch
import torch.nn as nn

import fastadv.models as M


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name,in_ch,hw,classes", [
    ("small_cnn", 1, 8, 10),       # digits
    ("small_cnn", 1, 28, 10),      # MNIST
    ("small_cnn", 3, 32, 100),
    ("preact_resnet18", 3, 32, 10),
    ("resnet18", 3, 32, 100),
    ("resnet18", 1, 28, 10),
    ("wrn-16-2", 3, 32, 10),
])
def test_forward_shapes_and_input_gradient(name, in_ch, hw, classes):
    model = M.create(name, num_classes=classes, in_channels=in_ch)
    x = torch.rand(2, in_ch, hw, hw, requires_grad=True)
    out = model(x)
    assert out.shape == (2, classes) and out.dtype == torch.float32
    (g,) = torch.autograd.grad(out.logsumexp(1).sum(), x)  # attacks differentiate w.r.t. the input
    assert g.shape == x.shape and torch.isfinite(g).all()
    model.eval()
    assert torch.equal(model(x), model(x))  # eval mode is deterministic (BN running stats, no dropout)


@pytest.mark.parametrize("name,count", [
    ("small_cnn", 312_202),
    ("resnet18", 11_173_962),          # kuangliu/pytorch-cifar ResNet18
    ("preact_resnet18", 11_172_170),   # Rice et al. PreActResNet18 (with the final BN)
    ("wrn-28-10", 36_479_194),
    ("wrn-34-10", 46_160_474),         # TRADES WRN-34-10 without its unused sub_block1
    ("wrn-32-10", 46_160_474),         # FAT/GAIRAT's Madry-convention WRN-32-10: same network
])
def test_parameter_counts_match_the_published_architectures(name, count):
    in_ch = 1 if name == "small_cnn" else 3
    assert M.num_parameters(M.create(name, in_channels=in_ch)) == count


def test_wrn_depth_conventions_and_errors():
    assert M.create("wrn-28-10").blocks_per_stage == 4
    assert M.create("wrn-34-10").blocks_per_stage == 5 == M.create("wrn-32-10").blocks_per_stage
    assert M.create("WRN-16-4").blocks_per_stage == 2 and M.create("wrn-16-4").widen_factor == 4
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 4 .* got 30"):
        M.create("wrn-30-10")
    with pytest.raises(ValueError, match="widen_factor"):
        M.WideResNet(16, 0)
    m = M.create("wrn-16-1", dropout=0.3)
    assert m.block1.layer[0].droprate == 0.3


def test_create_errors_list_the_names():
    with pytest.raises(ValueError, match=r"model: unknown model 'vgg16'.*preact_resnet18.*resnet18.*"
                                         r"small_cnn.*wrn-34-10"):
        M.create("vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        M.create("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        M.create("resnet18", in_channels=0)


def test_small_cnn_rejects_tiny_inputs():
    with pytest.raises(ValueError, match="at least 8"):
        M.SmallCNN()(torch.rand(1, 1, 6, 6))


def test_no_normalisation_by_default_and_normalized_wrapper():
    base = M.create("small_cnn", in_channels=3).eval()
    assert not any(isinstance(m, M.Normalized) for m in base.modules())
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    wrapped = M.Normalized(base, mean, std).eval()
    x = torch.rand(2, 3, 16, 16)
    want = base((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(wrapped(x), want)
    assert isinstance(M.create("resnet18", normalize=(mean, std)), M.Normalized)
    with pytest.raises(ValueError, match="std must be > 0"):
        M.Normalized(base, mean, (0.1, 0.0, 0.1))


def test_official_checkpoint_names_load():
    """Attribute names follow the TRADES/FAT/kuangliu code; a DataParallel checkpoint with WRN's
    dead ``sub_block1`` keys loads and gives the same outputs."""
    src = M.create("wrn-16-2").eval()
    keys = set(src.state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.1.bn2.running_mean",
            "bn1.weight", "fc.bias"} <= keys
    r18 = set(M.create("resnet18").state_dict())
    assert {"linear.weight", "layer2.0.shortcut.1.running_var"} <= r18
    assert "layer4.1.shortcut.0.weight" not in r18  # identity shortcut in a stage's second block
    assert "layer2.0.shortcut.0.weight" in M.create("preact_resnet18").state_dict()
    official = {"module." + k: v for k, v in src.state_dict().items()}
    official["module.sub_block1.layer.0.conv1.weight"] = torch.zeros(32, 16, 3, 3)
    dst = M.create("wrn-16-2").eval()
    M.load_official_state_dict(dst, {"state_dict": official})
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(dst(x), src(x))


def test_register_custom_model(monkeypatch):
    monkeypatch.setattr(M, "_REGISTRY", dict(M._REGISTRY))  # keep the global registry clean
    M.register("tiny_linear_test", lambda num_classes, in_channels: nn.Sequential(
        nn.Flatten(), nn.LazyLinear(num_classes)))
    assert M.create("tiny_linear_test", num_classes=4)(torch.rand(2, 1, 8, 8)).shape == (2, 4)
