"""Datasets (synthetic default, ADE20K, Cityscapes, your own folders), recipe augmentations, loaders."""
from __future__ import annotations

from .folders import (CITYSCAPES_CLASSES, DataError, FolderLayout, SegmentationFolder, ade20k, cityscapes,
                      custom_folder)
from .loading import (DevicePrefetcher, InfiniteShardedSampler, TransformedDataset, collate, eval_loader,
                      train_loader)
from .synthetic import SYNTHETIC_CLASSES, SyntheticShapes, render_sample
from .transforms import (IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, eval_transforms, keep_ratio_size,
                         train_transforms)

DATASETS = ("synthetic", "ade20k", "cityscapes", "folder")


def build_raw_dataset(name: str, split: str, root: str | None = None, num_classes: int | None = None,
                      seed: int = 0, length: int | None = None, size_range: tuple[int, int] = (96, 192),
                      layout: FolderLayout | None = None):
    """Raw dataset: items (image [H, W, 3] uint8, label [H, W] uint8, name). ``layout``: the
    folder dataset's (its default: images/<split>, annotations/<split>, .png labels)."""
    if name == "synthetic":
        return SyntheticShapes(split, length or (2000 if split == "train" else 100), seed, tuple(size_range))
    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root (--data-root)")
    if name == "ade20k":
        return ade20k(root, split, num_classes or 150)
    if name == "cityscapes":
        return cityscapes(root, split)
    if name == "folder":
        if num_classes is None:
            raise ValueError("dataset 'folder' needs num_classes")
        return (layout or FolderLayout()).read(root, split, num_classes)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["CITYSCAPES_CLASSES", "DATASETS", "DataError", "DevicePrefetcher", "FolderLayout", "IGNORE_INDEX",
           "IMAGENET_MEAN", "IMAGENET_STD", "InfiniteShardedSampler", "SYNTHETIC_CLASSES", "SegmentationFolder",
           "SyntheticShapes", "TransformedDataset", "ade20k", "build_raw_dataset", "cityscapes", "collate",
           "custom_folder", "eval_loader", "eval_transforms", "keep_ratio_size", "render_sample", "train_loader",
           "train_transforms"]
