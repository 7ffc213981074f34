"""Semantic FPN head (as mmseg's FPNHead, used by the SeMask release) and the
parameter-free semantic decoder of SeMask."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Sequential):
    """Conv3x3 (no bias) - BN - ReLU, with mmseg's child names (conv, bn, activate)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class Upsample2x(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FPNHead(nn.Module):
    """Panoptic-FPN style head applied directly on the 4 backbone features.

    Scale head i has max(1, i) Conv-BN-ReLU blocks, each followed (i > 0) by a bilinear
    x2 upsampling; the four results are summed at stride 4, then Dropout2d and a 1x1
    conv to ``num_classes``. features [B, C_i, H_i, W_i] -> logits [B, K, H_0, W_0].
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

    def forward(self, features: list[Tensor]) -> Tensor:
        out = self.scale_heads[0](features[0])
        for head, feat in zip(self.scale_heads[1:], features[1:]):
            out = out + resize(head(feat), out.shape[2:])
        return self.conv_seg(self.dropout(out))


def resize(x: Tensor, size) -> Tensor:
    """Bilinear resize (align_corners False) that is a no-op at the same size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def semantic_decoder(priors: list[Tensor]) -> Tensor:
    """SeMask semantic decoder: upsample prior i bilinearly x2, i times, to stride 4 and
    sum the four (arXiv 2112.12782, Sec. 3.3). Where odd input sizes make a x2 chain miss
    the stride-4 size by a pixel, a final resize aligns it.

    priors: 4 maps [B, K, H_i, W_i] -> [B, K, H_0, W_0].
    """
    size = priors[0].shape[2:]
    total = priors[0]
    for i, prior in enumerate(priors[1:], start=1):
        for _ in range(i):
            prior = F.interpolate(prior, scale_factor=2, mode="bilinear", align_corners=False)
        total = total + resize(prior, size)
    return total
