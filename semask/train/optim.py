"""AdamW with no-decay parameter groups and the poly schedule with linear warmup."""
from __future__ import annotations

import inspect

import torch
from torch import nn

# The official configs' paramwise_cfg custom_keys with decay_mult 0 (SeMask-FPN configs, as
# Swin's mmseg configs): mmcv's DefaultOptimizerConstructor matches them as substrings of
# the parameter's full name; every other parameter decays (bias_decay_mult and
# norm_decay_mult default to 1), biases, the semantic layers' gamma and the head's
# BatchNorm (ConvModule names it "bn") included.
NO_DECAY_KEYS = ("absolute_pos_embed", "relative_position_bias_table", "norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups as the official configs make them: no decay for parameters whose
    name contains one of :data:`NO_DECAY_KEYS` (position embeddings, bias tables, the
    LayerNorms), decay for all others."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(k in name for k in NO_DECAY_KEYS) else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, name="decay"),
            dict(params=no_decay, weight_decay=0.0, name="no_decay")]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    fused: bool | None = None) -> torch.optim.AdamW:
    kwargs = {}
    if fused is not None and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kwargs["fused"] = fused
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), **kwargs)


def poly_warmup_factor(it: int, total: int, warmup_iters: int, warmup_ratio: float,
                       power: float = 1.0, min_lr_ratio: float = 0.0) -> float:
    """lr(it) / base_lr as mmcv's PolyLrUpdaterHook with linear warmup:
    poly = (1 - min_ratio) * (1 - it/total)^power + min_ratio, and during warmup
    poly * (1 - (1 - it/warmup) * (1 - warmup_ratio))."""
    progress = min(it, total) / max(total, 1)
    factor = (1 - min_lr_ratio) * (1 - progress) ** power + min_lr_ratio
    if it < warmup_iters:
        factor *= 1 - (1 - it / warmup_iters) * (1 - warmup_ratio)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_iters: int, warmup_ratio: float,
                    power: float = 1.0, min_lr: float = 0.0, base_lr: float = 1.0):
    """LambdaLR stepping once per optimizer step (iteration)."""
    min_ratio = min_lr / base_lr if base_lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: poly_warmup_factor(it, total, warmup_iters, warmup_ratio, power, min_ratio))
