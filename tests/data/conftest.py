"""Small ADE20K / Cityscapes folders generated on the fly."""
import numpy as np
import pytest
from PIL import Image


def write_pair(image_path, label_path, label: np.ndarray, image_size=None, rng=None):
    rng = rng or np.random.default_rng(0)
    h, w = image_size or label.shape
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_path)
    Image.fromarray(label.astype(np.uint8)).save(label_path)


@pytest.fixture(name="write_pair")
def write_pair_fixture():
    return write_pair


@pytest.fixture
def ade_root(tmp_path):
    """ADEChallengeData2016 with 3 training and 2 validation images; labels 0..150."""
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(1)
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            label = rng.integers(0, 151, (40 + i, 50), dtype=np.uint8)
            label[0, :4] = [0, 1, 150, 75]
            write_pair(root / "images" / split / f"ADE_{split}_{i:08d}.jpg",
                       root / "annotations" / split / f"ADE_{split}_{i:08d}.png", label, rng=rng)
    return root


@pytest.fixture
def cityscapes_root(tmp_path):
    """Cityscapes with 2 train cities (3 images) and 1 val image; labels 0..18 and 255."""
    root = tmp_path / "cityscapes"
    rng = np.random.default_rng(2)
    for split, city, n in (("train", "aachen", 2), ("train", "bochum", 1), ("val", "frankfurt", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            label = rng.integers(0, 19, (32, 64), dtype=np.uint8)
            label[0, :3] = [255, 0, 18]
            write_pair(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                       root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", label, rng=rng)
    return root
