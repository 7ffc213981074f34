"""Read a whole dataset as training and evaluation read it: every bad sample, and the classes.

Training stops at the first bad file it draws (a label of another size, values outside the
classes, an unreadable image), which may come hours in; :func:`check_dataset` reads every
sample once and lists all of them, with each class's share of the labelled pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .folders import DataError
from .transforms import IGNORE_INDEX


@dataclass
class DatasetSummary:
    """``problems``: (sample index, message naming the file); ``class_pixels`` [K] and
    ``class_images`` [K]: labelled pixels of each class and samples holding it, over the
    readable samples; ``ignored_pixels``: pixels labelled 255 (ignore)."""

    samples: int
    problems: list[tuple[int, str]]
    class_pixels: np.ndarray
    class_images: np.ndarray
    ignored_pixels: int

    def table(self, class_names=None) -> str:
        """Markdown: class, share of the labelled pixels, samples holding it."""
        names = class_names or [str(i) for i in range(len(self.class_pixels))]
        total = max(int(self.class_pixels.sum()), 1)
        lines = ["| class | pixels | images |", "|---|---|---|"]
        lines += [f"| {name} | {100 * pixels / total:.2f}% | {images} |"
                  for name, pixels, images in zip(names, self.class_pixels.tolist(), self.class_images.tolist())]
        return "\n".join(lines)


class _Counts(torch.utils.data.Dataset):
    """index -> (index, per-value pixel counts [256] of the sample's label or None, problem or None)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            _, label, _ = self.dataset[index]
        except DataError as exc:
            return index, None, str(exc)
        return index, np.bincount(label.ravel(), minlength=256), None


def _unbatched(item):
    return item


def check_dataset(dataset, num_classes: int, num_workers: int = 0, progress: bool = True,
                  desc: str = "check") -> DatasetSummary:
    """Read every sample of ``dataset`` (items: image [H, W, 3], label [H, W] uint8 of class ids
    0..num_classes-1 and 255; a bad file raises :class:`DataError`) with ``num_workers``
    loader processes."""
    loader = torch.utils.data.DataLoader(_Counts(dataset), batch_size=None, num_workers=num_workers,
                                         collate_fn=_unbatched)
    problems, pixels, images = [], np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    ignored = 0
    for index, counts, problem in tqdm(loader, desc=desc, total=len(dataset), disable=not progress,
                                       dynamic_ncols=True):
        if problem is not None:
            problems.append((index, problem))
            continue
        pixels += counts[:num_classes]
        images += counts[:num_classes] > 0
        ignored += int(counts[IGNORE_INDEX])
    return DatasetSummary(len(dataset), sorted(problems), pixels, images, ignored)
