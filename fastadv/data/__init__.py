"""Datasets and a device-resident batch loader.

``load_dataset(name, data_dir=None, split="train", download=True)`` → :class:`ImageDataset`
(uint8 ``images`` [N, C, H, W], int64 ``labels``, ``float_images()`` in [0, 1]).
``BatchLoader(data, batch_size, ...)`` iterates augmented float batches from device memory.
"""
from .dataset import ImageDataset
from .datasets import (DATASETS, RESOURCES, DatasetInfo, available_datasets, default_data_dir,
                       load_dataset)
from .digits import load_digits
from .download import DownloadError, download_url, md5sum
from .loader import BatchLoader, augment_batch

__all__ = ["ImageDataset", "load_dataset", "available_datasets", "default_data_dir", "DATASETS",
           "DatasetInfo", "RESOURCES", "load_digits", "DownloadError", "download_url", "md5sum",
           "BatchLoader", "augment_batch"]
