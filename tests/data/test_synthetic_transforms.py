"""Synthetic data set, recipe augmentations (joint image / mask) and the resumable sampler."""
import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from semask.data import (IMAGENET_MEAN, IMAGENET_STD, InfiniteShardedSampler, SyntheticShapes,
                         TransformedDataset, keep_ratio_size, render_sample, train_transforms)
from semask.data.transforms import CatMaxRatioCrop, PadTo, RandomResize


def test_synthetic_is_deterministic_varied_and_uses_every_class():
    a, b = render_sample(3, "train", 7), render_sample(3, "train", 7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(render_sample(3, "val", 7)[1], a[1])
    ds = SyntheticShapes("train", 30, seed=3, size_range=(64, 100))
    sizes, counts = set(), np.zeros(6)
    for i in range(len(ds)):
        image, label, _ = ds[i]
        assert image.dtype == np.uint8 and image.shape[:2] == label.shape
        assert 64 <= min(label.shape) and max(label.shape) <= 100
        sizes.add(label.shape)
        counts += np.bincount(label.ravel(), minlength=6)
    assert len(sizes) > 20 and (counts > 0).all()


def test_synthetic_colour_alone_does_not_tell_the_class():
    """Mean colours of disks and squares cover the same range: the class needs shape."""
    means = {1: [], 2: []}
    for i in range(60):
        image, label, _ = SyntheticShapes("train", 60, seed=0)[i]
        for cls in means:
            if (label == cls).sum() > 50:
                means[cls].append(image[label == cls].mean(0))
    disks, squares = np.array(means[1]), np.array(means[2])
    assert len(disks) > 5 and len(squares) > 5
    for c in range(3):
        assert disks[:, c].min() < squares[:, c].mean() < disks[:, c].max()


def test_no_single_pixel_colour_rule_segments_the_synthetic_data():
    """The best colour -> class lookup (RGB quantised to 8 levels, majority class per colour
    bin on training images) scores about as always predicting background on validation
    images (mIoU 0.12 against 0.11): every class needs a neighbourhood (texture) or the
    outline."""
    def bins(image):
        return ((image // 32).astype(np.int64) * np.array([64, 8, 1])).sum(-1)

    counts = np.zeros((512, 6))
    train = SyntheticShapes("train", 60, seed=0)
    for i in range(len(train)):
        image, label, _ = train[i]
        np.add.at(counts, (bins(image).ravel(), label.ravel()), 1)
    lookup = counts.argmax(1)
    conf = np.zeros((6, 6), np.int64)
    val = SyntheticShapes("val", 20, seed=0)
    for i in range(len(val)):
        image, label, _ = val[i]
        conf += np.bincount(label.ravel().astype(np.int64) * 6 + lookup[bins(image)].ravel(),
                            minlength=36).reshape(6, 6)
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert (conf.sum(1) > 0).all() and iou.mean() < 0.2
    assert iou[1:].max() < 0.15                               # no object class is told by colour


def test_keep_ratio_size_by_hand():
    # mmseg Resize(img_scale=(2048, 512), keep_ratio): factor = min(2048 / long, 512 / short)
    assert keep_ratio_size(512, 683, (2048, 512)) == (512, 683)
    assert keep_ratio_size(1000, 500, (2048, 512)) == (1024, 512)
    assert keep_ratio_size(256, 2048, (2048, 512), ratio=0.5) == (128, 1024)   # long edge binds
    # mmseg scales the edges to int(512 * 0.701) = 358 first (not 358.912 -> 359 pixels)
    assert keep_ratio_size(1000, 1000, (2048, 512), ratio=0.701) == (358, 358)


def test_random_resize_draws_from_ratio_choices():
    """With choices the ratio is one of them (mmseg Resize with a list ratio_range), each
    drawn; without, any ratio of the range."""
    image = tv_tensors.Image(torch.zeros(3, 100, 100, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(100, 100, dtype=torch.long))
    torch.manual_seed(0)
    listed = RandomResize((400, 100), (0.5, 2.0), choices=(0.5, 2.0))
    sides = {listed(image, mask)[0].shape[-1] for _ in range(40)}
    assert sides == {50, 200}
    ranged = RandomResize((400, 100), (0.5, 2.0))
    assert len({ranged(image, mask)[0].shape[-1] for _ in range(40)}) > 10


def _colour_coded(label: np.ndarray) -> np.ndarray:
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [200, 200, 10]], np.uint8)
    return palette[label]


def test_train_pipeline_keeps_image_and_mask_aligned():
    """Image colour encodes the label; after resize / crop / flip / pad both still agree."""
    label = np.zeros((90, 120), np.uint8)
    label[10:60, 5:50], label[40:85, 60:115], label[:, 100:] = 1, 2, 3
    image = _colour_coded(label)
    pipe = train_transforms((64, 96), (160, 80), (0.5, 1.5), cat_max_ratio=1.0, photometric=False)
    ds = TransformedDataset([(image, label, "x")], pipe)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    palette = torch.tensor(_colour_coded(np.arange(4)), dtype=torch.float32)
    flipped = set()
    for seed in range(12):
        img, mask, _ = ds[(0, seed)]
        assert img.shape == (3, 64, 96) and img.dtype == torch.float32 and mask.shape == (64, 96)
        valid = mask != 255
        pixels = (img * std + mean).permute(1, 2, 0)[valid]
        nearest = torch.cdist(pixels, palette).argmin(1)
        assert (nearest == mask[valid]).float().mean() > 0.95, seed
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 255}
        assert (img[:, ~valid] == 0).all()   # padded after Normalize with 0, as mmseg's Pad
        flipped.add(bool((mask[:, -1] == 3).float().mean() < (mask[:, 0] == 3).float().mean()))
    assert flipped == {True, False}    # class 3 (right edge) ends up on either side
    a, b = ds[(0, 5)], ds[(0, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])   # same key, same sample


def test_pad_and_cat_max_ratio_crop():
    img = tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(20, 30, dtype=torch.long))
    pimg, pmask = PadTo((25, 40))(img, mask)
    assert pimg.shape == (3, 25, 40) and (pmask[20:] == 255).all() and (pmask[:, 30:] == 255).all()
    assert (pmask[:20, :30] == 0).all()
    # class 1 fills columns 70..99: a uniform 50x50 crop has class 0 below 75% only when its
    # left edge is >= 33 (18 of 51 offsets, 35%); with 10 retries that becomes ~99%
    label = torch.zeros(100, 100, dtype=torch.long)
    label[:, 70:] = 1
    torch.manual_seed(0)
    crop = CatMaxRatioCrop((50, 50), 0.75)
    balanced = 0
    for _ in range(30):
        m = crop(img.new_zeros(3, 100, 100), tv_tensors.Mask(label))[1]
        assert m.shape == (50, 50)
        balanced += int((m == 0).float().mean() < 0.75)
    assert balanced >= 25


def test_cat_max_ratio_leaves_ignored_pixels_out(monkeypatch):
    """mmseg's RandomCrop: the class ratio counts labelled pixels only (np.unique's counts
    without the ignore index), and a crop with a single class (or none) is redrawn. A label
    80% ignored with classes 0 and 1 at 10% each: every crop is balanced (0.5 < 0.75), so the
    first draw is kept; counting the 255s (0.8) would redraw 10 times."""
    label = torch.full((50, 50), 255, dtype=torch.long)
    label[:5], label[5:10] = 0, 1
    crop = CatMaxRatioCrop((50, 50), 0.75)
    draws = []
    real = crop._offsets
    monkeypatch.setattr(crop, "_offsets", lambda h, w: draws.append(1) or real(h, w))
    crop(torch.zeros(3, 50, 50), tv_tensors.Mask(label))
    assert len(draws) == 1
    # nothing but ignored pixels in every crop: redrawn up to 10 times, then kept, no error
    draws.clear()
    out = crop(torch.zeros(3, 80, 80), tv_tensors.Mask(torch.full((80, 80), 255)))[1]
    assert out.shape == (50, 50) and len(draws) == 11


def test_sampler_shards_and_resumes():
    full = InfiniteShardedSampler(7, seed=1)
    it = iter(full)
    stream = [next(it) for _ in range(20)]
    assert sorted(i for i, _ in stream[:7]) == list(range(7))           # one permutation per epoch
    r0, r1 = iter(InfiniteShardedSampler(7, 1, rank=0, world_size=2)), iter(InfiniteShardedSampler(7, 1, rank=1, world_size=2))
    assert [next(r0) for _ in range(10)] == stream[0:20:2]
    assert [next(r1) for _ in range(10)] == stream[1:20:2]
    resumed = iter(InfiniteShardedSampler(7, 1, start=5))
    assert [next(resumed) for _ in range(15)] == stream[5:]


def test_no_img_scale_rescales_the_image_by_its_own_size():
    """mmseg Resize(img_scale=None, ratio_range): scale = (int(w * r), int(h * r)) of the
    image itself. A 20x30 image at r = 2 becomes 40x60 (labelled pixels of the padded
    crop); at r = 0.55 the edges truncate first: int(30 * 0.55) = 16, int(20 * 0.55) = 11,
    factor min(16 / 30, 11 / 20) = 0.533 -> 11x16 (sides rounded half up; 30 * 0.55 = 16.5)."""
    image = tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(20, 30, dtype=torch.long))
    pipeline = train_transforms((100, 100), None, (2.0, 2.0), cat_max_ratio=1.0, flip_prob=0.0, photometric=False)
    _, out = pipeline(image, mask)
    assert out.shape == (100, 100)
    assert (out[:40, :60] == 1).all() and (out[40:] == 255).all() and (out[:, 60:] == 255).all()
    assert RandomResize(None, (0.55, 0.55))(image, mask)[1].shape == (11, 16)
    # ratio 1: no resize, and no random draw for one (the crop's offsets are its first draws)
    textured = tv_tensors.Image(torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8))
    for seed in range(3):
        torch.manual_seed(seed)
        kept = train_transforms((10, 10), None, (1.0, 1.0), cat_max_ratio=1.0, flip_prob=0.0,
                                photometric=False)(textured, mask)[0]
        torch.manual_seed(seed)
        top, left = CatMaxRatioCrop((10, 10), 1.0)._offsets(20, 30)
        want = (textured[:, top:top + 10, left:left + 10].float() - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
            / torch.tensor(IMAGENET_STD)[:, None, None]
        torch.testing.assert_close(kept, want)


@pytest.mark.parametrize("img_scale,ratio_choices", [((60, 40), None), (None, (2.0,))])
def test_ratio_range_1_still_resizes_to_an_img_scale_or_a_ratio_choice(img_scale, ratio_choices):
    """ratio_range (1, 1) skips the resize only when nothing else asks for one: an
    img_scale (60, 40) keep-ratio rescales a 20x30 image by min(60 / 30, 40 / 20) = 2, and
    ratio_choices (2.0,) scale its own size by 2: 40x60 labelled pixels in the 100x100 crop."""
    image = tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(20, 30, dtype=torch.long))
    _, out = train_transforms((100, 100), img_scale, (1.0, 1.0), cat_max_ratio=1.0, flip_prob=0.0,
                              photometric=False, ratio_choices=ratio_choices)(image, mask)
    assert out.shape == (100, 100)
    assert (out[:40, :60] == 1).all() and (out[40:] == 255).all() and (out[:, 60:] == 255).all()
