"""AdamW with no-decay parameter groups and the poly schedule with linear warmup."""
from __future__ import annotations

import inspect

import torch
from torch import nn

# Names the official SeMask / Swin configs exempt from weight decay (paramwise custom_keys).
NO_DECAY_KEYWORDS = ("relative_position_bias_table", "absolute_pos_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for weight matrices / conv kernels; no decay for the bias
    tables, position embeddings and every 1-d tensor (LayerNorm / BatchNorm weights and
    biases, Linear / conv biases, the semantic layers' gamma).

    The official configs exempt only ``norm`` layers and the two tables; we also exempt
    biases and gamma, as Swin's own ImageNet recipe does (decaying a bias or a residual
    gate toward 0 has no regularising purpose).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS):
            no_decay.append(p)
        else:
            decay.append(p)
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
