"""The module under the wrappers that do not forward attributes."""
from __future__ import annotations


def inner_module(model):
    """``model`` without its ``torch.compile`` and (Distributed)DataParallel wrappers
    (:class:`~fastadv.models.Normalized` forwards the multi-head and own-optimizer protocols
    itself)."""
    model = getattr(model, "_orig_mod", model)
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
