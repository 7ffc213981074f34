"""The SeMask semantic layer appended to every Swin stage (N_s = 1 block)."""
from __future__ import annotations

from torch import Tensor, nn

from ..ops.layer_norm import LayerNorm
from ..ops.semantic_attention import SemanticAttention


class SemanticLayer(nn.Module):
    """norm1 + ``class_injection.0`` (key names of the official checkpoints).

    x [B, H, W, C] -> (out [B, H, W, C], prior Q_s [B, H, W, K]); ``window`` 0 = global.
    """

    def __init__(self, dim: int, num_classes: int, window: int, backend: str = "torch"):
        super().__init__()
        self.norm1 = LayerNorm(dim, backend=backend)
        self.class_injection = nn.ModuleList([SemanticAttention(dim, num_classes, window, backend=backend)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.class_injection[0](self.norm1(x))
