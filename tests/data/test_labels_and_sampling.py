"""Proposed additions to tests/data/test_folders.py (first test) and
tests/data/test_synthetic_transforms.py / test_loading.py (sampler, eval loader)."""
import numpy as np
import torch

from semask.data import InfiniteShardedSampler, TransformedDataset, ade20k
from semask.data.loading import eval_loader


def test_ade20k_label_255_stays_ignored(tmp_path):
    """mmseg reduce_zero_label: 0 -> 255, k -> k - 1, and 255 stays 255 (not 254)."""
    from PIL import Image
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        (root / sub / "training").mkdir(parents=True)
    label = np.array([[0, 1, 255, 150]], np.uint8)
    Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(root / "images" / "training" / "a.jpg")
    Image.fromarray(label).save(root / "annotations" / "training" / "a.png")
    assert ade20k(root, "train")[0][1].tolist() == [[255, 0, 255, 149]]


def test_sampler_resumes_every_rank_and_reshuffles_each_epoch():
    """Rank r of w after ``start`` samples of the global stream continues at global
    position start + r; each epoch is randperm(n) from seed + epoch; augmentation seeds differ
    between epochs (a sample seen again gets new augmentation)."""
    n, seed = 7, 1
    it = iter(InfiniteShardedSampler(n, seed=seed))
    stream = [next(it) for _ in range(21)]
    for epoch in range(3):
        want = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        assert [i for i, _ in stream[epoch * n:(epoch + 1) * n]] == want
    assert len({s for _, s in stream}) == len(stream)
    for rank in (0, 1):
        resumed = iter(InfiniteShardedSampler(n, seed, rank=rank, world_size=2, start=6))
        assert [next(resumed) for _ in range(5)] == stream[rank + 6:rank + 16:2]


def test_eval_loader_shards_by_rank():
    raw = [(np.full((2, 2, 3), i, np.uint8), np.zeros((2, 2), np.uint8), f"s{i}") for i in range(5)]
    ds = TransformedDataset(raw, lambda image, label: (image, label))
    names = lambda rank: [n for _, _, (n,) in eval_loader(ds, 0, rank, 2)]
    assert names(0) == ["s0", "s2", "s4"] and names(1) == ["s1", "s3"]
