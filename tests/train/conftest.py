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
