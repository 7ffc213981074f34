"""Semantic FPN head (as mmseg's FPNHead, used by the SeMask release) and the
parameter-free semantic decoder of SeMask.

With ``fused`` both upsample on the Triton kernels (:func:`semask.ops.upsample.upsample2x`)
and take their linear upsampling chains in fewer steps: upsampling is linear, so the
final x2 upsampling of every scale head (FPN) and the chains of the decoder
(p0 + up(p1 + up(p2 + up(p3))), Horner's scheme) act once on sums: 4 instead of 6 x2
upsamplings in the head and 3 instead of 6 in the decoder, the saved ones the largest.
Same values up to rounding (the sums are taken at a lower resolution).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.upsample import upsample2x


class ConvModule(nn.Sequential):
    """Conv3x3 (no bias) - BN - ReLU, with mmseg's child names (conv, bn, activate)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class Upsample2x(nn.Module):
    """Bilinear x2 upsampling (align_corners False); a scale head's step (FPNHead runs it
    through :func:`semask.ops.upsample.upsample2x` with its ``fused`` choice)."""

    def forward(self, x: Tensor) -> Tensor:
        return upsample2x(x)


class FPNHead(nn.Module):
    """Panoptic-FPN style head applied directly on the 4 backbone features.

    Scale head i has max(1, i) Conv-BN-ReLU blocks, each followed (i > 0) by a bilinear
    x2 upsampling; the four results are summed at stride 4, then Dropout2d and a 1x1
    conv to ``num_classes``. features [B, C_i, H_i, W_i] -> logits [B, K, H_0, W_0].
    ``fused`` (forward): see the module docstring.
    """

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i, in_ch in enumerate(in_channels):
            layers = []
            for j in range(max(1, i)):
                layers.append(ConvModule(in_ch if j == 0 else channels, channels))
                if i > 0:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: list[Tensor], fused: bool = False) -> Tensor:
        out = self.scale_heads[0](features[0])
        if fused:
            out = out + self._upsampled_sum(features[1:], out.shape[2:])
        else:
            for head, feat in zip(self.scale_heads[1:], features[1:]):
                out = out + resize(head(feat), out.shape[2:])
        return self.conv_seg(self.dropout(out))

    def _upsampled_sum(self, features: list[Tensor], size) -> Tensor:
        """Sum of scale heads 1.. at ``size`` on the Triton upsampling: their last x2
        upsampling applied once to the sum of what precedes it, where those maps are half
        of ``size``."""
        pre = [_run(head[:-1], feat) for head, feat in zip(self.scale_heads[1:], features)]
        if all(_half_of(p, size) for p in pre):
            return upsample2x(sum(pre), fused=True)
        return sum(resize(upsample2x(p, fused=True), size) for p in pre)


def _run(layers: nn.Sequential, x: Tensor) -> Tensor:
    """A scale head's layers with the Triton upsampling."""
    for layer in layers:
        x = upsample2x(x, fused=True) if isinstance(layer, Upsample2x) else layer(x)
    return x


def _half_of(x: Tensor, size) -> bool:
    """Whether x2 upsampling takes map x [B, C, h, w] exactly to ``size``."""
    return tuple(2 * n for n in x.shape[2:]) == tuple(size)


def resize(x: Tensor, size) -> Tensor:
    """Bilinear resize (align_corners False) that is a no-op at the same size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def semantic_decoder(priors: list[Tensor], fused: bool = False) -> Tensor:
    """SeMask semantic decoder: upsample prior i bilinearly x2, i times, to stride 4 and
    sum the four (arXiv 2112.12782, Sec. 3.3). Where odd input sizes make a x2 chain miss
    the stride-4 size by a pixel, a final resize aligns it. ``fused``: see the module
    docstring (Horner's scheme where every prior is half the size of the one before).

    priors: 4 maps [B, K, H_i, W_i] -> [B, K, H_0, W_0].
    """
    size = priors[0].shape[2:]
    if fused and all(_half_of(b, a.shape[2:]) for a, b in zip(priors, priors[1:])):
        total = priors[-1]
        for prior in reversed(priors[:-1]):
            total = prior + upsample2x(total, fused=True)
        return total
    total = priors[0]
    for i, prior in enumerate(priors[1:], start=1):
        for _ in range(i):
            prior = upsample2x(prior, fused)
        total = total + resize(prior, size)
    return total
