"""The torchattacks habits every fastadv attack has (issue #12 §4): a normalisation hook and the
targeted modes. A targeted attack pulls each point towards its target class instead of away
from its label."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from ..errors import UserError

TARGET_MODES = ("default", "label", "random", "least_likely")


class TorchattacksHabits:
    _mean: Optional[Tensor] = None
    _std: Optional[Tensor] = None
    target_mode: str = "default"

    def set_normalization_used(self, mean, std):
        """The model expects (x − mean)/std: the attack works on [0, 1] images and normalises each
        input it gives the model. ``mean``/``std``: one value per channel."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape or mean.numel() == 0:
            raise UserError(f"mean and std must have one value per channel, got {tuple(mean.shape)} "
                            f"and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise UserError("std must be > 0")
        self._mean, self._std = mean, std
        return self

    def set_mode_default(self):
        """Untargeted: a point is broken when it is misclassified."""
        self.target_mode = "default"
        return self

    def set_mode_targeted_by_label(self):
        """Targeted: ``atk(x, targets)`` takes the target classes in place of the labels (the
        model's predictions stand in for the labels)."""
        self.target_mode = "label"
        return self

    def set_mode_targeted_random(self):
        """Targeted at a random class other than the label (drawn from the attack's seed, or the
        global generator for the training attacks)."""
        self.target_mode = "random"
        return self

    def set_mode_targeted_least_likely(self):
        """Targeted at the class with the smallest clean logit."""
        self.target_mode = "least_likely"
        return self

    def _normalized(self, x: Tensor) -> Tensor:
        """``x`` as the model expects it (normalised when ``set_normalization_used`` was called)."""
        if self._mean is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self._mean.to(x).view(shape)) / self._std.to(x).view(shape)

    def _targets_and_labels(self, clean: Tensor, y: Tensor, targets: Optional[Tensor],
                            gen: Optional[torch.Generator] = None):
        """(targets or None, labels) for a run: ``targets`` given, or made by the mode from the
        clean logits; in the "label" mode the labels given are the targets and the model's
        predictions become the labels."""
        if targets is not None or self.target_mode == "default":
            return targets, y
        if self.target_mode == "label":
            return y, clean.argmax(1)
        if self.target_mode == "least_likely":
            return clean.argmin(1), y
        c = clean.shape[1]  # random: a uniform class among the C − 1 others (skip over y)
        r = (torch.rand(y.shape[0], generator=gen) * (c - 1)).long().to(y.device)
        return r + (r >= y).long(), y
