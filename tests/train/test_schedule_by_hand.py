"""Proposed additions to tests/train/test_config_optim.py."""
import pytest
import torch

from semask.train.config import load_config
from semask.train.optim import build_optimizer, build_scheduler, poly_warmup_factor


def test_poly_schedule_power_and_floor_by_hand():
    """mmcv PolyLrUpdaterHook: lr = (base - min_lr) * (1 - it/total)^power + min_lr."""
    # total 100, no warmup, power 0.9, min_lr / base = 0.1: at 50 (0.9 * 0.5^0.9 + 0.1)
    assert poly_warmup_factor(50, 100, 0, 1e-6, 0.9, 0.1) == pytest.approx(0.9 * 0.5 ** 0.9 + 0.1)
    assert poly_warmup_factor(100, 100, 0, 1e-6, 0.9, 0.1) == pytest.approx(0.1)
    opt = build_optimizer(torch.nn.Linear(2, 2), 0.5, 0.01)
    sched = build_scheduler(opt, 10, 0, 1e-6, power=2.0, min_lr=0.05, base_lr=0.5)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[5] == pytest.approx(0.45 * 0.25 + 0.05) and lrs[10] == pytest.approx(0.05)


def test_optimizer_takes_the_betas():
    opt = build_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.01, betas=[0.8, 0.95])
    assert all(g["betas"] == (0.8, 0.95) for g in opt.param_groups)


@pytest.mark.parametrize("values,message", [
    (dict(crop_size=[64, 64, 3]), "crop_size must be two positive numbers"),
    (dict(slide_stride=[32]), "slide_stride must be two positive numbers"),
    (dict(warmup_iters=-1), "warmup_iters must be at least 0"),
])
def test_more_config_values_out_of_range_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, **values)
