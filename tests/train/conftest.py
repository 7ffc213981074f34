"""A tiny training config: micro model, 64x64 crops, a handful of iterations."""
import pytest

from semask.train.config import load_config


def tiny(out_dir, **overrides):
    values = dict(variant="micro", head_channels=8, crop_size=[64, 64], img_scale=[96, 64], synthetic_size=[64, 80],
                  synthetic_train_size=16, synthetic_val_size=2, batch_size=2, iters=6, warmup_iters=2,
                  num_workers=0, progress=False, log_interval=1, ckpt_interval=0, drop_path_rate=0.1,
                  out_dir=str(out_dir))
    values.update(overrides)
    return load_config(None, **values)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny


@pytest.fixture
def ade_fixture(tmp_path):
    """A 3 + 2 image ADEChallengeData2016 folder (labels 0..150)."""
    import numpy as np
    from PIL import Image
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, n in (("training", 3), ("validation", 2)):
        for sub in ("images", "annotations"):
            (root / sub / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(rng.integers(0, 151, (48, 60), dtype=np.uint8)).save(root / "annotations" / split / f"{i}.png")
    return root
