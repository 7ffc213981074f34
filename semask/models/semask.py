"""SeMask-Swin (or plain Swin) + Semantic FPN: the segmentation model users build."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backend import requested_backend
from .heads import FPNHead, resize, semantic_decoder
from .swin import BackboneOutput, SwinBackbone

IGNORE_INDEX = 255
SEMANTIC_LOSS_WEIGHT = 0.4  # weight of the semantic decoder's loss (SeMask release)


@dataclass(frozen=True)
class Variant:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window: int


VARIANTS = {
    "tiny": Variant(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "small": Variant(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "base": Variant(128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "large": Variant(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
    # Not in the paper: a small SeMask-Swin (head dim 32 like the others) for CPU demos
    # and tests, e.g. the README's synthetic training job.
    "micro": Variant(32, (1, 1, 2, 1), (1, 2, 4, 8), 7),
}
HEADS = ("fpn",)


def default_semantic_windowed(embed_dim: int, num_classes: int) -> tuple[bool, ...]:
    """The released rule: embed 96/192 with K > 19 -> stages 0-1 windowed, 2-3 global;
    otherwise (Swin-B, K <= 19) windowed everywhere."""
    if embed_dim in (96, 192) and num_classes > 19:
        return (True, True, False, False)
    return (True, True, True, True)


@dataclass
class SegOutput:
    """logits [B, K, H, W] at input size; semantic_logits: 4 prior maps or None."""

    logits: Tensor
    semantic_logits: list[Tensor] | None


class SeMaskSwin(nn.Module):
    """SeMask-Swin backbone + Semantic FPN head (``semantic=False``: the Swin baseline).

    images [B, 3, H, W] (any H, W >= 32) -> :class:`SegOutput`.
    ``fused``: False (PyTorch reference), True (best fused backend, or
    ``SEMASK_BACKEND``), or a backend name ("torch", "triton", "cuda", "auto").
    """

    def __init__(self, variant: str = "tiny", num_classes: int = 150, head: str = "fpn",
                 semantic: bool = True, semantic_windowed: tuple[bool, ...] | None = None,
                 fused: bool | str = False, drop_path_rate: float = 0.3,
                 pretrained: str | None = None, *, window_size: int | None = None,
                 head_channels: int = 256, loss_avg_non_ignore: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; supported: {', '.join(HEADS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        v = VARIANTS[variant]
        window = window_size or v.window
        if semantic_windowed is None:
            semantic_windowed = default_semantic_windowed(v.embed_dim, num_classes)
        semantic_windowed = tuple(bool(s) for s in semantic_windowed)
        if len(semantic_windowed) != len(v.depths):
            raise ValueError(f"semantic_windowed needs {len(v.depths)} entries, got {semantic_windowed}")
        self.variant, self.num_classes, self.window = variant, num_classes, window
        self.semantic, self.semantic_windowed = semantic, semantic_windowed
        self.backend_request = requested_backend(fused)
        self.loss_avg_non_ignore = loss_avg_non_ignore
        self.backbone = SwinBackbone(v.embed_dim, v.depths, v.num_heads, window, num_classes,
                                     semantic, semantic_windowed, drop_path_rate,
                                     backend=self.backend_request)
        self.decode_head = FPNHead(self.backbone.channels, num_classes, head_channels)
        if pretrained:
            from .checkpoint import load_checkpoint
            load_checkpoint(self, pretrained)

    def forward(self, images: Tensor) -> SegOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if min(images.shape[2:]) < 32:
            raise ValueError(f"images must be at least 32x32, got {tuple(images.shape[2:])}")
        feats: BackboneOutput = self.backbone(images)
        logits = resize(self.decode_head(feats.features), images.shape[2:])
        return SegOutput(logits, feats.semantic_logits)

    def loss(self, out: SegOutput, target: Tensor) -> dict[str, Tensor]:
        """CE(main) + 0.4 * CE(semantic decoder); target [B, H, W] long, 255 ignored.

        Like the released mmseg code, the mean runs over all pixels (ignored ones count
        as 0) unless ``loss_avg_non_ignore`` was set.
        """
        if target.dim() != 3 or target.shape[0] != out.logits.shape[0]:
            raise ValueError(f"target must be [B, H, W] long, got {tuple(target.shape)}")
        size = target.shape[1:]
        loss_main = self._cross_entropy(resize(out.logits, size), target)
        if out.semantic_logits is None:
            loss_semantic = loss_main.new_zeros(())
        else:
            sem = resize(semantic_decoder(out.semantic_logits), size)
            loss_semantic = self._cross_entropy(sem, target)
        return dict(loss=loss_main + SEMANTIC_LOSS_WEIGHT * loss_semantic,
                    loss_main=loss_main, loss_semantic=loss_semantic)

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.loss_avg_non_ignore:
            return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
        per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
        return per_pixel.mean()

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> class map [B, H, W] (long)."""
        return self(images).logits.argmax(1)
