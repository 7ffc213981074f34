"""Segmentation cross-entropy on logits bilinearly upsampled to the label size.

``upsampled_cross_entropy(logits, target, ...)`` equals
``F.cross_entropy(resize(logits, target size).float(), target, ignore_index)`` (mean over
all pixels, ignored ones counting 0, as the released mmseg code does; or over the
non-ignored ones), the loss of the official SeMask recipe. ``chunk=None`` computes it in
one piece like that; ``chunk=n`` runs it n images at a time inside one autograd Function
that takes each chunk's gradient in the forward and keeps only a gradient of the
low-resolution logits' size: the full-size upsampled logits, their fp32 copy and the
log-softmax that cross-entropy saves (per loss at batch 16, 512 x 512, 150 classes:
1.3 GB bf16 + 2 x 2.5 GB fp32) never exist for the whole batch, and the work is the
one-piece loss's (forward and backward kernels of each chunk once). Per image the
operations are the same, so the values agree with the one-piece loss up to fp32
summation order; the gradient is taken for an upstream gradient of 1 and scaled in the
backward, so half-precision logits see one more rounding (the scaling) than the
one-piece loss's. ``fused=True`` computes the loss and its gradient with the Triton kernel
of :mod:`semask.kernels.upsample_cross_entropy` (no full-size map at all) where it runs
(CUDA, or CPU under ``TRITON_INTERPRET=1``; upsampling; float32/16, bfloat16), else falls
back to the above.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.backend import eager_dispatch, graph_anchor, single_backward
from .heads import resize


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision logits (as the released code's ``.float()``), else theirs."""
    return torch.promote_types(dtype, torch.float32)


def _pixel_loss(logits: Tensor, target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    """Per-pixel cross-entropy of the upsampled logits (ignored pixels 0), in fp32 or fp64,
    reduced by ``reduction`` ("sum", or "none": [B, H, W])."""
    up = resize(logits, target.shape[1:]).to(_loss_dtype(logits.dtype))
    return F.cross_entropy(up, target.long(), ignore_index=ignore_index, reduction=reduction)


def _pixel_loss_sum(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Sum over pixels of the per-pixel cross-entropy (ignored pixels 0), in fp32 or fp64."""
    return _pixel_loss(logits, target, ignore_index, "sum")


def _mean(total: Tensor, target: Tensor, ignore_index: int, avg_non_ignore: bool) -> Tensor:
    """``total`` over all pixels of ``target``, or over its counted ones; 0 when there is
    none, as mmseg's weight_reduce_loss (a crop of ignored pixels alone must not turn the
    loss into NaN)."""
    if not avg_non_ignore:
        return total / target.numel()
    return total / (target != ignore_index).sum().clamp_min(1)


def _chunked_sum(logits: Tensor, target: Tensor, ignore_index: int, chunk: int) -> Tensor:
    """:func:`_pixel_loss_sum` over the batch, ``chunk`` images at a time (no gradient)."""
    total = torch.zeros((), device=logits.device, dtype=_loss_dtype(logits.dtype))
    for i in range(0, logits.shape[0], chunk):
        total += _pixel_loss_sum(logits[i:i + chunk], target[i:i + chunk], ignore_index)
    return total


def _scaled(dlogits: Tensor, grad: Tensor, anchor: Tensor, dtype: torch.dtype, what: str) -> tuple:
    """The backward's outputs: dlogits * grad in fp32 (or fp64) as ``dtype``, raising if
    differentiated again (see :func:`semask.ops.backend.single_backward`; ``anchor``: the
    logits' :func:`~semask.ops.backend.graph_anchor`)."""
    with torch.no_grad():
        scaled = (dlogits.to(_loss_dtype(dlogits.dtype)) * grad).to(dtype)
    return (*single_backward((scaled,), what, (grad, anchor)), None, None, None, None)


class _ChunkedLossSum(torch.autograd.Function):
    """logits [B, K, h, w], target [B, H, W] -> scalar, computed ``chunk`` images at a
    time. Each chunk's gradient (for an upstream gradient of 1) is taken in the forward,
    while the chunk's upsampled maps exist, and kept at the logits' size; the backward
    only scales it (no recomputation, no second pass over the full-size maps). Single
    differentiation only."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int, chunk: int,
                anchor: Tensor) -> Tensor:
        total = torch.zeros((), device=logits.device, dtype=_loss_dtype(logits.dtype))
        dlogits = torch.empty_like(logits)
        for i in range(0, logits.shape[0], chunk):
            with torch.enable_grad():
                part = logits[i:i + chunk].detach().requires_grad_()
                loss = _pixel_loss_sum(part, target[i:i + chunk], ignore_index)
                dlogits[i:i + chunk] = torch.autograd.grad(loss, part)[0]
            total += loss.detach()
        ctx.save_for_backward(dlogits, anchor)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        dlogits, anchor = ctx.saved_tensors
        return _scaled(dlogits, grad, anchor, dlogits.dtype, "the chunked loss")


class _FusedLossSum(torch.autograd.Function):
    """logits [B, K, h, w], target [B, H, W] -> scalar by the fused Triton kernel, which
    takes the gradient (for an upstream gradient of 1; when ``grad``) in the same
    launch; the backward scales it. Single differentiation only."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int, grad: bool,
                anchor: Tensor | None) -> Tensor:
        from semask.kernels.upsample_cross_entropy import upsample_cross_entropy
        total, dlogits = upsample_cross_entropy(logits, target, ignore_index, grad)
        ctx.dtype = logits.dtype
        if grad:
            ctx.save_for_backward(dlogits, anchor)
        return total.to(_loss_dtype(logits.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):
        dlogits, anchor = ctx.saved_tensors
        return _scaled(dlogits, grad, anchor, ctx.dtype, "the fused loss")


def fused_loss_reasons(logits: Tensor, target: Tensor, ignore_index: int = 255) -> list[str]:
    """Why the fused Triton loss cannot take these inputs (empty: it can)."""
    from semask.kernels.provider import PROVIDER
    return PROVIDER.reasons("upsample_cross_entropy", [logits, target],
                            dict(ignore_index=ignore_index))


def upsampled_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255,
                            avg_non_ignore: bool = False, chunk: int | None = None,
                            fused: bool = False) -> Tensor:
    """Cross-entropy of ``logits`` [B, K, h, w] resized (bilinear) to ``target`` [B, H, W].

    Mean over all B*H*W pixels (ignored ones count 0), or over the non-ignored pixels when
    ``avg_non_ignore`` (0 with a zero gradient when every pixel is ignored, as mmseg's
    ``loss.sum() / (avg_factor + eps)``; ``F.cross_entropy`` gives NaN); ``chunk``: images per
    piece (None: the whole batch at once; also under ``torch.compile``, functorch
    transforms and dispatch modes, where ``fused`` is ignored too). The chunked loss
    takes its gradient in the forward whenever the logits require one, and differentiates
    once (differentiating its gradient raises: use ``chunk=None, fused=False`` for
    gradient penalties). ``fused``: use the fused Triton kernel where it runs (then
    ``chunk`` does not matter); it also takes its gradient in the forward and
    differentiates once. ``target``: int64 or int32 class indices.
    """
    if target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be [B, H, W] long with B = {logits.shape[0]}, "
                         f"got {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of images, got {chunk}")
    # the autograd Functions need eager mode: one piece under torch.compile (it traces no
    # autograd.grad inside a forward), functorch transforms (torch.func.grad cannot take a
    # Function without setup_context) and dispatch modes
    eager = eager_dispatch((logits, target))
    if fused and eager and not fused_loss_reasons(logits, target, ignore_index):
        grad = torch.is_grad_enabled() and logits.requires_grad
        total = _FusedLossSum.apply(logits, target, ignore_index, grad,
                                    graph_anchor(logits) if grad else None)
    elif chunk is None or not eager:
        total = _pixel_loss_sum(logits, target, ignore_index)
    elif torch.is_grad_enabled() and logits.requires_grad:
        total = _ChunkedLossSum.apply(logits, target, ignore_index, chunk, graph_anchor(logits))
    else:  # no gradient wanted: nothing to take in the forward
        total = _chunked_sum(logits, target, ignore_index, chunk)
    return _mean(total, target, ignore_index, avg_non_ignore)


def ohem_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, min_kept: int,
                       avg_non_ignore: bool = False) -> Tensor:
    """Cross-entropy of ``logits`` [B, K, h, w] resized to ``target`` [B, H, W] over the
    ``min_kept * B`` non-ignored pixels of largest loss in the batch (all of them when
    fewer), the others weighing 0; mean over all pixels (or the non-ignored ones).

    mmseg's ``OHEMPixelSampler(thresh=None, min_kept)`` weights (1 for the largest losses
    of the sorted non-ignored pixels) with the weighted mean of its ``CrossEntropyLoss``,
    as the release's SeMask-L ADE20K config uses on the main loss. One piece, fixed shapes
    (top-k over all pixels, ignored ones at -inf), so it runs under CUDA graphs and
    torch.compile; the full-size maps exist as in the unchunked loss.
    """
    pixel = _pixel_loss(logits, target, ignore_index, "none")
    scores = torch.where(target != ignore_index, pixel, -torch.inf).flatten()
    top = scores.topk(min(min_kept * target.shape[0], scores.numel()), sorted=False).values
    total = torch.where(top > -torch.inf, top, 0.0).sum()
    return _mean(total, target, ignore_index, avg_non_ignore)
