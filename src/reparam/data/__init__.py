"""Datasets as seeded, stratified splits (`load_dataset`), single images (`load_image`) and batch
augmentations (`make_augment`). Nothing here downloads anything."""

from reparam.data.base import RawDataset
from reparam.data.datasets import DATASETS, DatasetSplits, limit_test, load_dataset, register_dataset
from reparam.data.images import BUNDLED_IMAGES, load_image
from reparam.data.transforms import make_augment

__all__ = [
    "BUNDLED_IMAGES",
    "DATASETS",
    "DatasetSplits",
    "RawDataset",
    "limit_test",
    "load_dataset",
    "load_image",
    "make_augment",
    "register_dataset",
]
