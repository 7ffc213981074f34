"""Bilinear x2 upsampling (align_corners=False), on the Triton kernels where they run.

``upsample2x(x, fused)`` equals ``F.interpolate(x, scale_factor=2, mode="bilinear",
align_corners=False)``. With ``fused`` it runs :mod:`semask.kernels.bilinear_upsample`
(the backward a gather, stored once, instead of PyTorch's atomic scatter) in eager mode on
CUDA tensors (CPU ones under ``TRITON_INTERPRET=1``); otherwise, and under torch.compile
(which generates its own kernel for it), PyTorch's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import eager_dispatch, single_backward

OP = "bilinear_upsample"


class _Upsample2x(torch.autograd.Function):
    """x [B, C, H, W] -> [B, C, 2H, 2W] by the Triton kernels; differentiates once."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        from semask.kernels import bilinear_upsample as kernels
        ctx.dtype, ctx.channels_last = x.dtype, kernels.is_channels_last(x)
        return kernels.upsample2x(x)

    @staticmethod
    def backward(ctx, dy: Tensor):
        from semask.kernels import bilinear_upsample as kernels
        dx = kernels.upsample2x_backward(dy, ctx.dtype, ctx.channels_last)
        return single_backward((dx,), "the fused upsampling", (dy,))  # linear: dx depends on dy only


def fused_upsample_reasons(x: Tensor) -> list[str]:
    """Why the Triton kernels cannot upsample x (empty: they can)."""
    from semask.kernels.provider import PROVIDER
    return PROVIDER.reasons(OP, [x], {})


def upsample2x(x: Tensor, fused: bool = False) -> Tensor:
    """x [B, C, H, W] -> [B, C, 2H, 2W], bilinear, align_corners=False (see module)."""
    if fused and eager_dispatch((x,)) and not fused_upsample_reasons(x):
        return _Upsample2x.apply(x)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
