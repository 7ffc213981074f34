"""Model FLOPs table, counted with FlopCounterMode on meta tensors (no memory, no time).

FLOPs are reported as GMACs (multiply-adds = FlopCounterMode's count / 2), the unit of
the published Swin figures (Liu et al. 2021, Table 1): only matmuls and convolutions
count; LayerNorm, softmax, GELU and the classifier are left out (the classifier of
Swin-T adds 0.0008 G). Swin-B and Swin-L at 224 are published with window 7, at 384
with window 12.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import semask

from .cases import ADE_CLASSES

# (variant, input, window) -> published GFLOPs (multiply-adds) and params (M, with the
# 1000-class head) of the ImageNet Swin models (Liu et al. 2021, Table 1)
PUBLISHED_SWIN = {
    ("tiny", 224, 7): (4.5, 28), ("small", 224, 7): (8.7, 50), ("base", 224, 7): (15.4, 88),
    ("base", 384, 12): (47.0, 88), ("large", 224, 7): (34.5, 197), ("large", 384, 12): (103.9, 197),
}
# published params (M) of SeMask-Swin FPN on ADE20K (arXiv 2112.12782; shared/SEMASK_SPEC.md)
PUBLISHED_SEMASK_PARAMS = {"tiny": 35, "small": 56, "base": 96, "large": 211}


def _gmacs(module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2e9


def _params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def swin_rows() -> list[dict]:
    """Our Swin backbone (no semantic layers) against the published ImageNet figures."""
    rows = []
    for (variant, size, window), (gflops, params) in PUBLISHED_SWIN.items():
        with torch.device("meta"):
            model = semask.SeMaskSwin(variant, num_classes=ADE_CLASSES, semantic=False,
                                      window_size=window)
        ours = _gmacs(model.backbone, size)
        rows.append(dict(model=f"swin_{variant}", input=size, window=window, gmacs=ours,
                         published_gmacs=gflops, rel_diff=ours / gflops - 1,
                         backbone_params_m=_params_m(model.backbone), published_params_m=params))
    return rows


def semask_rows(size: int = 512, num_classes: int = ADE_CLASSES) -> list[dict]:
    """What SeMask adds: backbone with and without semantic layers, FPN head, totals."""
    rows = []
    for variant, params in PUBLISHED_SEMASK_PARAMS.items():
        with torch.device("meta"):
            sem = semask.SeMaskSwin(variant, num_classes=num_classes, semantic=True)
            base = semask.SeMaskSwin(variant, num_classes=num_classes, semantic=False)
        swin_bb, semask_bb = _gmacs(base.backbone, size), _gmacs(sem.backbone, size)
        total = _gmacs(sem, size)
        rows.append(dict(model=f"semask_swin_{variant}_fpn", input=size, classes=num_classes,
                         semantic_windowed=list(sem.semantic_windowed),
                         swin_backbone_gmacs=swin_bb, semantic_layers_gmacs=semask_bb - swin_bb,
                         fpn_head_gmacs=total - semask_bb, total_gmacs=total,
                         swin_fpn_total_gmacs=_gmacs(base, size),
                         params_m=_params_m(sem), swin_fpn_params_m=_params_m(base),
                         published_params_m=params))
    return rows


def model_flops() -> dict:
    return dict(unit="GMACs (multiply-adds), FlopCounterMode count / 2", swin=swin_rows(),
                semask=semask_rows())
