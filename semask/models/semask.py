"""SeMask-Swin (or plain Swin) + Semantic FPN: the segmentation model users build."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from ..ops.backend import eager_dispatch, requested_backend
from ..ops.layer_norm import LayerNorm
from .autocast_weights import call_with, cast_weights
from .heads import FPNHead, resize, semantic_decoder
from .loss import ohem_cross_entropy, upsampled_cross_entropy
from .swin import BackboneOutput, SwinBackbone

IGNORE_INDEX = 255
SEMANTIC_LOSS_WEIGHT = 0.4  # weight of the semantic decoder's loss (SeMask release)
# Images per piece of the chunked loss, the default of fused models where the fused
# Triton loss kernel does not run (cuda backend, CPU). On an H200 (SeMask-T FPN 512,
# batch 16, bf16) four-image pieces give a training step of 108 ms at 9.97 GB peak, against
# 106 ms and 17.4 GB in one piece (triton backend, before the fused loss kernel).
DEFAULT_LOSS_CHUNK = 4


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
    """decode_logits [B, K, H/4, W/4] of the FPN head, ``size`` = input (H, W),
    semantic_logits: 4 prior maps or None; ``logits`` [B, K, H, W]: decode_logits resized
    to the input (bilinear), computed on first access (the training loss reads
    decode_logits and upsamples as it needs)."""

    decode_logits: Tensor
    size: tuple[int, int]
    semantic_logits: list[Tensor] | None

    @cached_property
    def logits(self) -> Tensor:
        return resize(self.decode_logits, self.size)


# torch.export (and other pytree users) take SegOutput apart as its fields
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch 2.6 registers through a deprecated alias
    torch.export.register_dataclass(SegOutput, serialized_type_name="semask.SegOutput")


def _checked(images: Tensor) -> Tensor:
    """``images`` when they are what the model takes: float [B, 3, H, W], B >= 1, H, W >= 32."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        what = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images must be a float tensor (RGB on the 0-255 scale, normalised per "
                        f"channel: (x - semask.data.IMAGENET_MEAN) / semask.data.IMAGENET_STD), got {what}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be [B, 3, H, W] with B >= 1, got {tuple(images.shape)}")
    if min(images.shape[2:]) < 32:
        raise ValueError(f"images must be at least 32x32, got {tuple(images.shape[2:])}")
    return images


class SeMaskSwin(nn.Module):
    """SeMask-Swin backbone + Semantic FPN head (``semantic=False``: the Swin baseline).

    images [B, 3, H, W] (any H, W >= 32) -> :class:`SegOutput`.
    ``fused``: False (PyTorch reference), True (best fused backend, or
    ``SEMASK_BACKEND``), or a backend name ("torch", "triton", "cuda", "auto").
    ``loss_chunk``: images per piece of the chunked upsample + cross-entropy loss
    (:mod:`semask.models.loss`; same values, far less memory); None: one piece, as the
    released code. Default: ``DEFAULT_LOSS_CHUNK`` when ``fused`` asks for fused ops,
    else None. ``fused_loss``: compute the loss with the fused Triton upsample +
    cross-entropy kernel where it runs (then ``loss_chunk`` does not matter; with "auto",
    CUDA tensors only); default: when ``fused`` asks for the Triton kernels ("auto" or
    "triton"). ``fused_upsample``: the x2 upsamplings of the FPN head and the semantic
    decoder on the Triton kernels where they run, their linear chains taken in fewer
    steps (:mod:`semask.models.heads`; same values up to rounding); same default.
    ``fused_norm``: the backbone's LayerNorms on the Triton kernels where they run
    (:mod:`semask.ops.layer_norm`): True (always), "graphs" (only in the CUDA graphs of
    :mod:`semask.train.cuda_graphs`; PyTorch's in eager steps, where the kernels cost more
    host time than they save GPU time) or False; default "graphs" when ``fused`` asks for
    the Triton kernels, else False; settable later. ``ohem_min_kept``: online hard
    pixel mining on the main loss (:func:`~semask.models.loss.ohem_cross_entropy`; the
    release's SeMask-L ADE20K config: 100000; in one piece, neither chunked nor fused).
    ``pretrained``: a checkpoint loaded
    by :func:`~semask.load_checkpoint` (strict); its report is kept in ``load_report``.
    """

    def __init__(self, variant: str = "tiny", num_classes: int = 150, head: str = "fpn",
                 semantic: bool = True, semantic_windowed: tuple[bool, ...] | None = None,
                 fused: bool | str = False, drop_path_rate: float = 0.3,
                 pretrained: str | None = None, *, window_size: int | None = None,
                 head_channels: int = 256, loss_avg_non_ignore: bool = False,
                 loss_chunk: int | None | str = "auto", fused_loss: bool | None = None,
                 fused_upsample: bool | None = None, fused_norm: bool | str | None = None,
                 ohem_min_kept: int | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; supported: {', '.join(HEADS)}")
        if num_classes < 2:  # softmax cross-entropy over one class has no gradient
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if window_size is not None and (not isinstance(window_size, int) or window_size < 1):
            raise ValueError(f"window_size must be a positive int or None, got {window_size!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        v = VARIANTS[variant]
        window = window_size or v.window
        if semantic_windowed is None:
            semantic_windowed = default_semantic_windowed(v.embed_dim, num_classes)
        if isinstance(semantic_windowed, str) or not all(isinstance(s, bool) for s in semantic_windowed):
            raise ValueError(f"semantic_windowed must be bools, one per stage, got {semantic_windowed!r}")
        semantic_windowed = tuple(semantic_windowed)
        if len(semantic_windowed) != len(v.depths):
            raise ValueError(f"semantic_windowed needs {len(v.depths)} entries, got {semantic_windowed}")
        self.variant, self.num_classes, self.window = variant, num_classes, window
        self.semantic, self.semantic_windowed = semantic, semantic_windowed
        self.backend_request = requested_backend(fused)
        self.loss_avg_non_ignore = loss_avg_non_ignore
        if loss_chunk == "auto":
            loss_chunk = None if self.backend_request == "torch" else DEFAULT_LOSS_CHUNK
        if loss_chunk is not None and (not isinstance(loss_chunk, int) or loss_chunk < 1):
            raise ValueError(f"loss_chunk must be None or a positive int, got {loss_chunk!r}")
        self.loss_chunk = loss_chunk
        if ohem_min_kept is not None and (not isinstance(ohem_min_kept, int) or ohem_min_kept < 1):
            raise ValueError(f"ohem_min_kept must be None or a positive int, got {ohem_min_kept!r}")
        self.ohem_min_kept = ohem_min_kept
        triton = self.backend_request in ("auto", "triton")
        self.fused_loss = triton if fused_loss is None else bool(fused_loss)
        self.fused_upsample = triton if fused_upsample is None else bool(fused_upsample)
        self.backbone = SwinBackbone(v.embed_dim, v.depths, v.num_heads, window, num_classes,
                                     semantic, semantic_windowed, drop_path_rate,
                                     backend=self.backend_request)
        self.decode_head = FPNHead(self.backbone.channels, num_classes, head_channels)
        self.fused_norm = ("graphs" if triton else False) if fused_norm is None else fused_norm
        self.load_report = None
        if pretrained:
            from .checkpoint import load_checkpoint
            self.load_report = load_checkpoint(self, pretrained)

    def forward(self, images: Tensor) -> SegOutput:
        weights = self._autocast_weights(_checked(images))
        feats: BackboneOutput = call_with(self.backbone, "backbone", weights, images)
        fused = self.fused_upsample and self._triton_here(images)
        logits = call_with(self.decode_head, "decode_head", weights, feats.features, fused)
        return SegOutput(logits, tuple(images.shape[2:]), feats.semantic_logits)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> the backbone's 4 maps [B, C_i, H / 2^(i+2), W / 2^(i+2)] (padded
        sizes rounded up; after its norm_i, as the FPN head reads them)."""
        weights = self._autocast_weights(_checked(images))
        return call_with(self.backbone, "backbone", weights, images).features

    def set_grad_checkpointing(self, stages: bool | tuple[int, ...] = True) -> None:
        """Recompute the backbone's given stages in backward: True (all), False (none) or
        stage indices 0..3 (as timm's ``set_grad_checkpointing``)."""
        self.backbone.set_grad_checkpointing(stages)

    @property
    def fused_norm(self) -> bool | str:
        """Where the backbone's LayerNorms ask for the Triton kernels: True (always),
        "graphs" (in CUDA graphs only) or False (never)."""
        return self._fused_norm

    @fused_norm.setter
    def fused_norm(self, value: bool | str) -> None:
        if value not in (True, False, "graphs"):
            raise ValueError(f"fused_norm must be True, False or 'graphs', got {value!r}")
        self._fused_norm = value if value == "graphs" else bool(value)
        for module in self.backbone.modules():
            if isinstance(module, LayerNorm):
                module.backend = self.backend_request if self._fused_norm else "torch"
                module.graphs_only = self._fused_norm == "graphs"

    def _autocast_weights(self, images: Tensor) -> dict[str, Tensor]:
        """The Linear and Conv2d weights cast to the autocast dtype in one go
        (:mod:`.autocast_weights`) for fused models in eager mode under autocast; {} otherwise,
        and with gradient checkpointing (whose recomputation runs after the forward) or a
        distributed process group (one cast node would hand DDP every gradient at the end)."""
        device = images.device.type
        if (self.backend_request == "torch" or not self._triton_here(images)
                or not torch.is_autocast_enabled(device) or not eager_dispatch((images,))
                or torch.get_autocast_dtype(device) == torch.float32
                or any(layer.grad_checkpointing for layer in self.backbone.layers)
                or torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {}
        return cast_weights(self, torch.get_autocast_dtype(device))

    def loss(self, out: SegOutput, target: Tensor) -> dict[str, Tensor]:
        """CE(main) + 0.4 * CE(semantic decoder); target [B, H, W] long, 255 ignored.

        Like the released mmseg code, the mean runs over all pixels (ignored ones count
        as 0) unless ``loss_avg_non_ignore`` was set. With ``ohem_min_kept`` the main loss
        counts the hardest pixels only (the semantic one all, as in the release).
        """
        if self.ohem_min_kept is None:
            loss_main = self._cross_entropy(out.decode_logits, target)
        else:
            loss_main = ohem_cross_entropy(out.decode_logits, target, IGNORE_INDEX,
                                           self.ohem_min_kept, self.loss_avg_non_ignore)
        if out.semantic_logits is None:
            loss_semantic = loss_main.new_zeros(())
        else:
            fused = self.fused_upsample and self._triton_here(target)
            loss_semantic = self._cross_entropy(semantic_decoder(out.semantic_logits, fused), target)
        return dict(loss=loss_main + SEMANTIC_LOSS_WEIGHT * loss_semantic,
                    loss_main=loss_main, loss_semantic=loss_semantic)

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """CE of ``logits`` at stride 4 upsampled to ``target`` [B, H, W]."""
        return upsampled_cross_entropy(logits, target, IGNORE_INDEX, self.loss_avg_non_ignore,
                                       self.loss_chunk, self.fused_loss and self._triton_here(logits))

    def _triton_here(self, t: Tensor) -> bool:
        """Whether the Triton head kernels (loss, upsampling) may run for tensors like t:
        on CUDA, and on the CPU (Triton's interpreter) only when not chosen by "auto"
        (as the attention ops: auto on the CPU is the reference)."""
        return t.is_cuda or self.backend_request != "auto"

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> class map [B, H, W] (long), in eval mode (the model's mode is
        restored after: BatchNorm statistics untouched, no dropout)."""
        training = self.training
        self.eval()
        try:
            return self(images).logits.argmax(1)
        finally:
            self.train(training)
