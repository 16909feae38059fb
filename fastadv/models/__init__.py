"""Models for adversarial training on CIFAR/SVHN/MNIST-style data; all take [0, 1] inputs.

``create(name, num_classes=10, in_channels=3, normalize=None, **kwargs)`` builds one by name:

==================  ==========================================================================
name                model
==================  ==========================================================================
``small_cnn``       :class:`SmallCNN` (MNIST/digits; any input >= 8×8)
``preact_resnet18`` :class:`PreActResNet18`
``resnet18``        :class:`ResNet18`
``wrn-D-W``         :class:`WideResNet` of depth D and width W, e.g. ``wrn-28-10``, ``wrn-32-10``,
                    ``wrn-34-10`` (TRADES/FAT/GAIRAT), ``wrn-16-2``; kwargs: ``dropout``
``cifs_resnet18``   :class:`CIFSResNet18`, ResNet-18 with CIFS channel masks (a multi-head model,
                    :mod:`fastadv.models.heads`); kwargs: ``beta`` (its probes' loss weight, 2)
``dsnet``           :class:`DSNet`, DS-Net's 15 diverse-structured modules, 20 channels, with their
                    own α optimizer (:mod:`fastadv.models.own_optimizers`); ``dsnet-v2`` the
                    second block set; ``dsnet[-v2]-D-C`` D modules from C channels (e.g.
                    ``dsnet-6-8``, a small one); kwargs: ``factor``
==================  ==========================================================================

There is no normalisation layer by default (attacks work in [0, 1] pixel space); pass
``normalize=(mean, std)`` to wrap the model in :class:`Normalized`.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .cifs import CIFSResNet18, cifs_resnet18
from .dsnet import DSNet, dsnet
from .heads import forward_heads, head_weights
from .own_optimizers import OwnOptimizer, own_optimizers, weight_parameters
from .preact_resnet import PreActResNet, PreActResNet18
from .resnet import ResNet, ResNet18
from .small_cnn import SmallCNN
from .wide_resnet import WideResNet
from ..errors import UserError, did_you_mean

__all__ = ["create", "available_models", "is_model_name", "register", "Normalized", "SmallCNN", "PreActResNet18",
           "PreActResNet", "ResNet18", "ResNet", "WideResNet", "load_official_state_dict",
           "num_parameters", "CIFSResNet18", "cifs_resnet18", "DSNet", "dsnet", "forward_heads",
           "head_weights", "OwnOptimizer", "own_optimizers", "weight_parameters"]

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda num_classes, in_channels, **kw: SmallCNN(in_channels, num_classes, **kw),
    "preact_resnet18": lambda num_classes, in_channels, **kw: PreActResNet18(num_classes, in_channels, **kw),
    "resnet18": lambda num_classes, in_channels, **kw: ResNet18(num_classes, in_channels, **kw),
    "cifs_resnet18": lambda num_classes, in_channels, **kw: cifs_resnet18(num_classes, in_channels, **kw),
}
_WRN = re.compile(r"^(?:wrn|wideresnet|wide_resnet)-(\d+)-(\d+)$")
_DSNET = re.compile(r"^dsnet(?:-(v1|v2))?(?:-(\d+)-(\d+))?$")


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a model: ``factory(num_classes=..., in_channels=..., **kwargs) -> nn.Module``."""
    if not isinstance(name, str) or not name:
        raise UserError(f"name must be a non-empty string, got {name!r}")
    _REGISTRY[name.lower()] = factory


def available_models() -> list:
    return sorted(_REGISTRY) + ["wrn-28-10", "wrn-32-10", "wrn-34-10", "wrn-D-W", "dsnet",
                                "dsnet-v2", "dsnet-D-C", "dsnet-v2-D-C"]


def is_model_name(name) -> bool:
    """Whether :func:`create` knows ``name`` (a registered name or ``wrn-D-W``)."""
    return isinstance(name, str) and (name.lower() in _REGISTRY or bool(_WRN.match(name.lower()))
                                      or bool(_DSNET.match(name.lower())))


class Normalized(nn.Module):
    """``model((x - mean) / std)``: for models trained on normalised inputs; attacks still see
    [0, 1] pixels. The wrapped model is ``.model``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if mean_t.numel() != std_t.numel():
            raise UserError(f"normalize: mean and std differ in length ({mean_t.numel()} vs "
                            f"{std_t.numel()})")
        if not bool((std_t > 0).all()):
            raise UserError(f"normalize: std must be > 0, got {list(std)}")
        self.model = model
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    @property
    def head_weights(self):
        """The wrapped model's head weights (a multi-head model, :mod:`fastadv.models.heads`)."""
        return getattr(self.model, "head_weights", None)

    def own_optimizers(self):
        """The wrapped model's parameters with an optimizer of their own (DS-Net's α)."""
        return own_optimizers(self.model)

    def forward(self, x, **kwargs):  # kwargs: a multi-head model's labels= and heads=
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype), **kwargs)


def create(name: str, num_classes: int = 10, in_channels: int = 3,
           normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None, **kwargs) -> nn.Module:
    """Build a model by name (see the module docstring); unknown names raise ``ValueError``."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(f"in_channels must be a positive int, got {in_channels!r}")
    key = name.lower() if isinstance(name, str) else name
    if key in _REGISTRY:
        model = _REGISTRY[key](num_classes=num_classes, in_channels=in_channels, **kwargs)
    elif isinstance(key, str) and _WRN.match(key):
        depth, width = map(int, _WRN.match(key).groups())
        model = WideResNet(depth, width, num_classes=num_classes, in_channels=in_channels, **kwargs)
    elif isinstance(key, str) and _DSNET.match(key):
        space, depth, channels = _DSNET.match(key).groups()
        sizes = dict(depth=int(depth), init_channels=int(channels)) if depth else {}
        model = dsnet(num_classes, in_channels, space=space or "v1", **sizes, **kwargs)
    else:
        raise UserError(f"model: unknown model {name!r}{did_you_mean(name, available_models())}; "
                        f"available: {', '.join(available_models())}")
    if normalize is not None:
        mean, std = normalize
        model = Normalized(model, mean, std)
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_official_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                             strict: bool = True):
    """Load a checkpoint saved by the official TRADES/FAT/GAIRAT/AWP code into a fastadv model:
    strips ``module.`` (DataParallel) prefixes and drops WRN's unused ``sub_block1`` keys.
    A checkpoint dict holding the weights under ``state_dict``/``model`` is unwrapped first."""
    for k in ("state_dict", "model", "net"):
        if k in state_dict and isinstance(state_dict[k], Mapping):
            state_dict = state_dict[k]
            break
    clean = {}
    for k, v in state_dict.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith("sub_block1."):
            continue
        clean[k] = v
    target = model.model if isinstance(model, Normalized) else model
    return target.load_state_dict(clean, strict=strict)
