"""Proposed additions to tests/train/test_resume.py."""
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from semask.models.semask import SeMaskSwin
from semask.train.plot import read_metrics
from semask.train.state import load_training_state, save_training_state, set_rng_state
from semask.train.trainer import train


def test_state_file_round_trips_the_grad_scaler_and_every_rng(tmp_path):
    """The scaler state (fp16 runs) and the numpy / Python RNG streams come back, not only
    torch's."""
    def parts(init_scale):
        model = SeMaskSwin("micro", num_classes=3, head_channels=8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        return model, opt, sched, torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=7)

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    save_training_state(tmp_path, *parts(1024.0), 5, {"lr": 1e-3})
    want = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    *_, scaler = dst = parts(65536.0)
    state = load_training_state(tmp_path, *dst)
    assert scaler.get_scale() == 1024.0 and scaler.get_growth_interval() == 7
    set_rng_state(state["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want


def test_accumulation_clipping_power_and_min_lr_reach_the_step(tmp_path, tiny_config, monkeypatch):
    """One run: with accum_steps 2 the logged losses are the means of each step's two
    micro-batch losses; the lr follows poly_power and min_lr (by hand); a gradient norm
    limit of 1e-12 makes AdamW's first steps (update ~ lr * g / (|g| + 1e-8)) negligible,
    where unclipped ones move every trained weight by about lr."""
    seen = []
    real_loss = SeMaskSwin.loss

    def recording_loss(self, out, target):
        losses = real_loss(self, out, target)
        seen.append([float(losses[k].detach()) for k in ("loss", "loss_main", "loss_semantic")])
        return losses

    monkeypatch.setattr(SeMaskSwin, "loss", recording_loss)
    cfg = tiny_config(tmp_path, iters=2, accum_steps=2, warmup_iters=0, lr=1e-2, weight_decay=0.0,
                      poly_power=0.5, min_lr=1e-4, grad_clip=1e-12, drop_path_rate=0.0, batch_size=1,
                      synthetic_train_size=4, synthetic_val_size=1)
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    init = SeMaskSwin("micro", num_classes=6, head_channels=8, drop_path_rate=0.0).state_dict()
    train(cfg, stop_at=2)  # leaves after the last step's checkpoint: no final evaluation
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["iter"] for r in records] == [1, 2]
    for i, r in enumerate(records):
        a, b = seen[2 * i], seen[2 * i + 1]
        for j, key in enumerate(("loss", "loss_main", "loss_semantic")):
            assert r[key] == pytest.approx((a[j] + b[j]) / 2, rel=1e-6), (i, key)
    # lr(it) = (1e-2 - 1e-4) (1 - it/2)^0.5 + 1e-4
    assert records[0]["lr"] == pytest.approx(1e-2)
    assert records[1]["lr"] == pytest.approx(0.99e-2 * 0.5 ** 0.5 + 1e-4)
    final = load_file(tmp_path / "last.safetensors")
    params = dict(SeMaskSwin("micro", num_classes=6, head_channels=8).named_parameters())
    moved = max((final[k].float() - init[k].float()).abs().max().item() for k in params)
    assert moved < 1e-5
