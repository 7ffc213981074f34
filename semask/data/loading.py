"""Turning a raw dataset into batches: per-sample deterministic augmentation, an
infinite resumable (and DDP-sharded) sampler, and data loaders."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .transforms import JointCompose, to_tv_tensors


def sample_seed(seed: int, position: int) -> int:
    """Augmentation seed of the sample at ``position`` of the global training stream."""
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


class TransformedDataset(Dataset):
    """raw (image, label, name) -> (image float [3, H, W], label long [H, W], name).

    A key ``(index, seed)`` runs the transforms under ``torch.manual_seed(seed)`` inside a
    forked RNG, so augmentation depends on the key only: identical across workers,
    processes and resumed runs.
    """

    def __init__(self, raw, transforms: JointCompose):
        self.raw, self.transforms = raw, transforms

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label, name = self.raw[index]
        image, label = to_tv_tensors(image, label)
        if seed is None:
            image, label = self.transforms(image, label)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image, label = self.transforms(image, label)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor).long(), name


class InfiniteShardedSampler(Sampler):
    """Endless stream of ``(index, augmentation seed)``.

    The global stream is epoch after epoch of ``randperm(n)`` drawn from ``seed + epoch``;
    after ``start`` positions of it (drawn before a resume, by any number of processes),
    rank r of w takes positions start + r, start + r + w, start + r + 2w, ...
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.start, self.shuffle = start, shuffle

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        while True:
            epoch, offset = divmod(position, self.length)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(self.length, generator=g).tolist()
            else:
                order = list(range(self.length))
            while offset < self.length:
                yield order[offset], sample_seed(self.seed, position)
                position += self.world_size
                offset += self.world_size
            # the next epoch starts where this rank's stride lands past the end


def collate(batch):
    images, labels, names = zip(*batch)
    return torch.stack(images), torch.stack(labels), list(names)


def train_loader(dataset: TransformedDataset, batch_size: int, seed: int, rank: int, world_size: int,
                 start_sample: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Endless batches of ``dataset`` (:class:`InfiniteShardedSampler`) after ``start_sample``
    samples of the global stream (all ranks'); ``pin_memory``: in page-locked host memory,
    so that a copy to the GPU can run asynchronously."""
    sampler = InfiniteShardedSampler(len(dataset), seed, rank, world_size, start_sample)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed), drop_last=True,
                      pin_memory=pin_memory)


class DevicePrefetcher:
    """The batches (images, labels, names) of ``loader`` on ``device``, one batch ahead.

    On a GPU (give it a ``pin_memory`` loader) :meth:`prefetch` starts the next batch's
    host-to-device copy on a side stream: called once a step's work is queued, the copy
    overlaps that work instead of stalling the GPU between steps (an unpinned batch of 16
    512x512 crops, 84 MB with int64 labels, is a synchronous copy of several ms).
    :meth:`next` makes the current stream wait for the copy. Elsewhere a plain ``.to``.
    """

    def __init__(self, loader, device):
        self.batches = iter(loader)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.ahead = None

    def prefetch(self) -> None:
        """Fetch the next batch and start its copy (no-op when one is already fetched)."""
        if self.ahead is not None:
            return
        images, labels, names = next(self.batches)
        if self.stream is None:
            self.ahead = images, labels, names
            return
        with torch.cuda.stream(self.stream):
            self.ahead = (images.to(self.device, non_blocking=True),
                          labels.to(self.device, non_blocking=True), names)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The next batch, on ``device``, ready for the current stream."""
        self.prefetch()
        (images, labels, names), self.ahead = self.ahead, None
        if self.stream is None:
            return images.to(self.device), labels.to(self.device), names
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        # allocated on the side stream: their memory is not reused before the current
        # stream's work on them is done
        images.record_stream(current)
        labels.record_stream(current)
        return images, labels, names


def eval_loader(dataset: TransformedDataset, num_workers: int = 0, rank: int = 0,
                world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Batch size 1 (images keep their own size); rank r takes samples r, r + w, ..."""
    indices = list(range(rank, len(dataset), world_size))
    # its own generator: the workers' base seed is drawn from it, not from the global RNG
    # (an evaluation during training would shift the training's dropout stream)
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1, collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
