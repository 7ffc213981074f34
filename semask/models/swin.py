"""Swin Transformer backbone with optional SeMask semantic layers.

Follows the official Swin for segmentation (Liu et al. 2021) and the SeMask release
(arXiv 2112.12782); key names match their checkpoints (``patch_embed``, ``layers.{i}``,
``norm{i}``). Token maps are kept as [B, H, W, C] between modules.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops.layer_norm import LayerNorm
from ..ops.reference import padding_to_multiple
from ..ops.window_attention import WindowAttention
from .semantic_layer import SemanticLayer


@dataclass
class BackboneOutput:
    """features: 4 maps [B, C_i, H_i, W_i] after norm_i; semantic_logits: 4 prior maps
    [B, K, H_i, W_i] (None without semantic layers)."""

    features: list[Tensor]
    semantic_logits: list[Tensor] | None


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016) of a residual branch:
    ``drop_path(x, branch)`` = x + branch * keep / (1 - p), keep ~ Bernoulli(1 - p) per
    sample, as one ``addcmul`` in the precision of x and branch promoted (under autocast the
    fp32 residual stream); x + branch when off (p = 0 or eval). x, branch [B, ...].
    ``keep`` [B]: the keep mask drawn by the caller (the backbone draws every block's in
    one go, :class:`DropPathKeeps`)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, branch: Tensor, keep: Tensor | None = None) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x + branch
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        if keep is None:
            keep = torch.empty(shape, device=x.device, dtype=torch.promote_types(
                x.dtype, branch.dtype)).bernoulli_(1 - self.p)
        else:
            keep = keep.view(shape)
        return torch.addcmul(x, branch, keep, value=1 / (1 - self.p) if self.p < 1 else 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class DropPathKeeps:
    """The keep masks of many DropPaths drawn in one go (3 launches instead of one Bernoulli
    draw per residual): ``draw(rates, batch, device, dtype)`` -> [n, batch], row i 1 with
    probability 1 - rates[i] per sample, else 0."""

    def __init__(self):
        self._keep_prob = {}  # (rates, device) -> fp32 [n, 1]

    def draw(self, rates: tuple[float, ...], batch: int, device: torch.device,
             dtype: torch.dtype) -> Tensor:
        if torch.compiler.is_compiling():  # a constant of the graph: dynamo would guard on the
            # cache's contents and compile the model again at the next call, once it holds them
            keep_prob = torch.tensor([[1 - p] for p in rates], device=device)
        else:
            keep_prob = self._keep_prob.get((rates, device))
            if keep_prob is None:
                keep_prob = torch.tensor([[1 - p] for p in rates], device=device)
                self._keep_prob[(rates, device)] = keep_prob
        return (torch.rand(len(rates), batch, device=device) < keep_prob).to(dtype)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Conv 4x4 stride 4 + LayerNorm; [B, 3, H, W] -> [B, ceil(H/4), ceil(W/4), C]."""

    def __init__(self, embed_dim: int, patch: int = 4, in_chans: int = 3, backend: str = "torch"):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch, stride=patch)
        self.norm = LayerNorm(embed_dim, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        _, _, H, W = x.shape
        if H % self.patch or W % self.patch:  # F.pad copies even when it pads nothing
            x = F.pad(x, (0, padding_to_multiple(W, self.patch), 0, padding_to_multiple(H, self.patch)))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 merge: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C] (odd sizes zero-padded)."""

    def __init__(self, dim: int, backend: str = "torch"):
        super().__init__()
        self.norm = LayerNorm(4 * dim, backend=backend, to_autocast_dtype=True)  # -> reduction
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # channels [x(2i, 2j), x(2i+1, 2j), x(2i, 2j+1), x(2i+1, 2j+1)] as the official cat of
        # four strided slices, in one copy (whose backward is one copy, not 8 slice_backward)
        x = x.reshape(B, (H + 1) // 2, 2, (W + 1) // 2, 2, C).permute(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(B, (H + 1) // 2, (W + 1) // 2, 4 * C)))


class SwinBlock(nn.Module):
    """x = x + DropPath(Attn(LN(x))); x = x + DropPath(MLP(LN(x))) on [B, H, W, C] (the
    residual adds are taken by :class:`DropPath`)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, drop_path: float,
                 mlp_ratio: float = 4.0, backend: str = "torch"):
        super().__init__()
        # both norms feed only a Linear (qkv after zero padding; fc1)
        self.norm1 = LayerNorm(dim, backend=backend, to_autocast_dtype=True)
        self.attn = WindowAttention(dim, num_heads, window, shift, backend=backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, backend=backend, to_autocast_dtype=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, keeps: Tensor | None = None) -> Tensor:
        """``keeps`` [2, B]: the DropPath keep masks of the two residuals (else drawn here)."""
        # norm1's output zero-padded to the window multiple (the Triton LayerNorm writes it so;
        # PyTorch's path pads after the norm)
        attn = self.attn(self.norm1(x, pad_multiple=self.attn.window), size=x.shape[1:3])
        x = self.drop_path(x, attn, None if keeps is None else keeps[0])
        return self.drop_path(x, self.mlp(self.norm2(x)), None if keeps is None else keeps[1])


class BasicLayer(nn.Module):
    """One stage: Swin blocks (W-MSA / SW-MSA alternating), a semantic layer, PatchMerging.

    forward(x [B, H, W, C]) -> (stage output [B, H, W, C], prior [B, K, H, W] or None,
    next-stage input [B, H/2, W/2, 2C] or None).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, drop_path: list[float],
                 num_classes: int, semantic: bool, semantic_window: int, downsample: bool,
                 backend: str = "torch"):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, drop_path[j],
                      backend=backend)
            for j in range(depth))
        self.semantic_layer = (SemanticLayer(dim, num_classes, semantic_window, backend=backend)
                               if semantic else None)
        self.downsample = PatchMerging(dim, backend) if downsample else None
        self.grad_checkpointing = False

    def _run(self, x: Tensor, keeps: Tensor | None):
        for j, blk in enumerate(self.blocks):
            x = blk(x, None if keeps is None else keeps[2 * j:2 * j + 2])
        prior = None
        if self.semantic_layer is not None:
            x, prior = self.semantic_layer(x)
        down = self.downsample(x) if self.downsample is not None else None
        return x, prior, down

    def forward(self, x: Tensor, keeps: Tensor | None = None):
        """``keeps`` [2 * depth, B]: the blocks' DropPath keep masks (else each block draws
        its own)."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._run, x, keeps, use_reentrant=False)
        return self._run(x, keeps)


class SwinBackbone(nn.Module):
    """SeMask-Swin (``semantic=True``) or plain Swin backbone.

    images [B, 3, H, W] -> :class:`BackboneOutput` with 4 NCHW feature maps at strides
    4, 8, 16, 32 (sizes rounded up) and, with semantic layers, 4 prior maps.
    """

    def __init__(self, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...],
                 window: int, num_classes: int, semantic: bool = True,
                 semantic_windowed: tuple[bool, ...] = (True,) * 4, drop_path_rate: float = 0.3,
                 backend: str = "torch"):
        super().__init__()
        self.num_stages = len(depths)
        self.channels = [embed_dim * 2 ** i for i in range(self.num_stages)]
        self.semantic = semantic
        self.patch_embed = PatchEmbed(embed_dim, backend=backend)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # linear stochastic depth
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(BasicLayer(
                self.channels[i], depth, num_heads[i], window, dpr[start:start + depth],
                num_classes, semantic, window if semantic_windowed[i] else 0,
                downsample=i < self.num_stages - 1, backend=backend))
        for i, c in enumerate(self.channels):
            self.add_module(f"norm{i}", LayerNorm(c, backend=backend))
        self.drop_path_keeps = DropPathKeeps()
        self.apply(init_weights)

    def set_grad_checkpointing(self, stages: bool | tuple[int, ...] = True) -> None:
        """Recompute the given stages in backward (saves activation memory): True (all
        stages), False (none) or stage indices."""
        if isinstance(stages, bool):
            stages = range(self.num_stages) if stages else ()
        for i, layer in enumerate(self.layers):
            layer.grad_checkpointing = i in stages

    def _keeps(self, x: Tensor) -> list:
        """Per stage the [2 * depth, B] DropPath keep masks of its blocks, all drawn at once;
        Nones when nothing drops. In the autocast dtype under autocast (0 and 1 are exact;
        a mask in x's dtype, fp32 after the patch embedding's norm, would promote the
        later stages' low-precision residual streams to fp32), else in x's."""
        rates = tuple(blk.drop_path.p for layer in self.layers for blk in layer.blocks
                      for _ in range(2))
        if not self.training or not any(rates):
            return [None] * self.num_stages
        device = x.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else x.dtype)
        keeps = self.drop_path_keeps.draw(rates, x.shape[0], x.device, dtype)
        # split (not itertools.accumulate of a generator: a graph break in torch 2.8's dynamo)
        return list(keeps.split([2 * len(layer.blocks) for layer in self.layers]))

    def forward(self, images: Tensor) -> BackboneOutput:
        x = self.patch_embed(images)
        features, priors = [], []
        for i, (layer, keeps) in enumerate(zip(self.layers, self._keeps(x))):
            out, prior, x = layer(x, keeps)
            features.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
            if prior is not None:
                priors.append(prior.permute(0, 3, 1, 2).contiguous())
        return BackboneOutput(features, priors if self.semantic else None)


def init_weights(m: nn.Module) -> None:
    """trunc_normal(.02) Linear weights, zero biases, LayerNorm (1, 0) (official init)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
