"""Config presets / overrides, no-decay parameter groups and the lr schedule."""
import json

import pytest
import torch

import semask
from semask.train.config import CONFIG_DIR, TrainConfig, apply_overrides, load_config, load_preset
from semask.train.trainer import build_model
from semask.train.optim import build_optimizer, build_scheduler, param_groups, poly_warmup_factor


def test_default_config_is_the_synthetic_preset():
    assert load_preset("synthetic_cpu") == TrainConfig()


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_preset_loads(path):
    cfg = load_preset(str(path))
    assert cfg.name == path.stem
    if cfg.dataset == "ade20k":
        # official SeMask-FPN configs semfpn_semask_swin_*_80k_ade20k.py and their datasets/semask
        # bases (ade20k_tiny.py, ade20k.py, ade20k_640x640.py)
        large = cfg.variant == "large"
        assert (cfg.num_classes, cfg.lr, cfg.weight_decay, cfg.warmup_iters) == (150, 1e-4, 1e-4, 1500)
        assert cfg.crop_size == ([640, 640] if large else [512, 512])
        assert cfg.img_scale == cfg.test_scale == ([2560, 640] if large else [2048, 512])
        assert cfg.ratio_choices == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        assert cfg.cat_max_ratio == (0.75 if cfg.variant == "tiny" else 1.0)
        assert cfg.ohem_min_kept == (100000 if large else None)
        assert cfg.batch_size == (4 if large else 8)  # samples_per_gpu
    if cfg.dataset == "cityscapes":
        # official SeMask-FPN configs semfpn_semask_swin_*_768x768_80k_cityscapes.py
        assert (cfg.num_classes, cfg.lr, cfg.weight_decay, cfg.crop_size) == (19, 1e-3, 0.05, [768, 768])
        assert cfg.warmup_ratio == (1e-6 if cfg.variant == "base" else 1e-5)
        assert cfg.batch_size == (2 if cfg.variant == "large" else 4)  # samples_per_gpu


def test_overrides_parse_types_and_reject_unknown():
    cfg = apply_overrides(TrainConfig(), {"lr": "2e-4", "crop-size": "64,96", "pretrained": "x.pth",
                                          "test_scale": "none", "photometric": "false", "ms_ratios": "[0.5, 1]"})
    assert (cfg.lr, cfg.crop_size, cfg.pretrained, cfg.test_scale, cfg.photometric, cfg.ms_ratios) == \
        (2e-4, [64, 96], "x.pth", None, False, [0.5, 1.0])
    with pytest.raises(ValueError, match="unknown option --bogus"):
        apply_overrides(TrainConfig(), {"bogus": "1"})
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(TrainConfig(), {"iters": "many"})
    with pytest.raises(ValueError, match="unknown config"):
        load_config(None, bogus=1)
    assert json.loads(TrainConfig().to_json())["variant"] == "micro"


@pytest.mark.parametrize("values,message", [
    (dict(photometric="false"), "photometric must be bool, got 'false'"),  # a JSON string is truthy
    (dict(lr="1e-4"), "lr must be float"), (dict(iters="100"), "iters must be int"),
    (dict(batch_size=2.5), "batch_size must be int"), (dict(crop_size=64), "crop_size must be a list"),
    (dict(variant=None), "variant must not be none"),
    (dict(grad_clip=-1.0), "grad_clip must be positive or none"),  # a negative limit flips the gradient
    (dict(min_lr=1.0), "min_lr must be between 0 and lr"), (dict(lr=-1e-4), "lr must be at least 0"),
    (dict(betas=[0.9, 1.5]), r"betas must be in \[0, 1\)"), (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(warmup_ratio=2.0), "warmup_ratio"), (dict(cat_max_ratio=0.0), "cat_max_ratio"),
    (dict(synthetic_size=[192, 96]), "synthetic_size must be min, max"), (dict(device="gpu"), "device must be"),
    (dict(device="mps"), "device must be auto, cpu, cuda or cuda:N, got 'mps'")])  # training runs on cpu / cuda
def test_config_values_of_the_wrong_type_or_range_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, **values)


def test_ratio_choices_and_ohem_options():
    cfg = apply_overrides(TrainConfig(), {"ratio-choices": "0.5,1.75", "ohem-min-kept": "1000"})
    assert (cfg.ratio_choices, cfg.ohem_min_kept) == ([0.5, 1.75], 1000)
    assert build_model(cfg, 6).ohem_min_kept == 1000
    for key, text, message in (("ratio_choices", "[]", "ratio_choices must be positive"),
                               ("ratio_choices", "0.5,-1", "ratio_choices must be positive"),
                               ("ohem_min_kept", "0", "ohem_min_kept must be at least 1")):
        with pytest.raises(ValueError, match=message):
            apply_overrides(TrainConfig(), {key: text})


def test_no_decay_groups():
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=8)
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    ids = {n: id(p) for n, p in model.named_parameters()}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    decay = {id(p) for p in groups["decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05
    for name, pid in ids.items():
        # the release's custom_keys, matched as substrings as mmcv does: biases, gamma and
        # the head's BatchNorm ("bn") decay
        expect_no_decay = any(k in name for k in ("relative_position_bias_table", "absolute_pos_embed", "norm"))
        assert (pid in no_decay) == expect_no_decay, name
        assert (pid in decay) != expect_no_decay, name
    assert len(no_decay) + len(decay) == len(ids)


def test_poly_schedule_with_warmup_by_hand():
    # total 100, warmup 10 from ratio 1e-6, power 1: lr(it) = (1 - it/100) * (1 - (1 - it/10)(1 - 1e-6))
    assert poly_warmup_factor(0, 100, 10, 1e-6) == pytest.approx(1e-6)
    assert poly_warmup_factor(5, 100, 10, 1e-6) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert poly_warmup_factor(10, 100, 10, 1e-6) == pytest.approx(0.9)
    assert poly_warmup_factor(100, 100, 10, 1e-6) == 0.0
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, 0.5, 0.01)
    sched = build_scheduler(opt, 100, 10, 1e-6, base_lr=0.5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[10] == pytest.approx(0.45) and lrs[15] == pytest.approx(0.5 * 0.85)
