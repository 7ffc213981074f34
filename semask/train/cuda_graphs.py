"""The training forward (model and both losses) and its backward replayed as CUDA graphs.

Why: a fused model's eager training step is bound by the host. On an H200 (SeMask-T 512,
bf16, batch 16; benchmarks/results/h200-2026-11-26-60040ca) the host needed 67 ms to issue
54 ms of GPU kernels. ``torch.cuda.make_graphed_callables`` records the forward and its
backward once; every later step replays each with one launch, so the step costs the
kernels' time. What capture needs, and :func:`graph_support_errors` checks: CUDA, fixed
shapes (the training crop and batch), no DDP, no gradient checkpointing (its recomputation
resets the RNG state, which capture forbids), no torch.compile, one micro-batch per step
(a replay rewrites the gradient buffers that ``.grad`` then holds) and autocast without its
weight cache (``cache_enabled=False``). BatchNorm statistics and the RNG state are
restored after the warm-up and capture runs, which update them. The graph keeps its own
memory pool (the step's activations) reserved for the rest of the run.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def graph_support_errors(device: torch.device, distributed: bool, compiled: bool,
                         grad_checkpointing: bool, accum_steps: int) -> list[str]:
    """Why a training run with these settings cannot capture its step (empty: it can)."""
    why = []
    if device.type != "cuda":
        why.append(f"CUDA graphs need a CUDA device, got {device.type}")
    if distributed:
        why.append("not under DDP (its gradient hooks run outside the graph)")
    if compiled:
        why.append("not with --compile (use one or the other)")
    if grad_checkpointing:
        why.append("not with gradient checkpointing")
    if accum_steps != 1:
        why.append(f"one micro-batch per step (accum_steps is {accum_steps})")
    return why


class _LossStep(nn.Module):
    """(images [B, 3, H, W], labels [B, H, W]) -> (loss, loss_main, loss_semantic)."""

    def __init__(self, model: nn.Module, autocast: Callable):
        super().__init__()
        self.model, self.autocast = model, autocast

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with self.autocast():
            losses = self.model.loss(self.model(images), labels)
        return losses["loss"], losses["loss_main"], losses["loss_semantic"]


def graphed_loss_step(model: nn.Module, images: Tensor, labels: Tensor,
                      autocast: Callable) -> Callable[[Tensor, Tensor], dict]:
    """Capture ``model.loss(model(images), labels)`` under ``autocast()`` (a factory of an
    autocast context with ``cache_enabled=False``, or of a null context) and its backward.

    Returns ``step(images, labels)`` -> {"loss", "loss_main", "loss_semantic"}, tensors
    that the next replay overwrites; ``loss.backward()`` replays the backward into the
    parameters' ``.grad``. Inputs must have the sample's shapes and dtypes; ``images`` and
    ``labels`` are not written to."""
    if not model.training:
        raise ValueError("graphed_loss_step: the model must be in training mode")
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    # the sample tensors become the graph's static inputs, which every call overwrites: clones
    static = (images.clone(), labels.clone())
    # the warm-up runs and the capture draw dropout / drop-path masks: the RNG state is put
    # back, so replays draw what eager steps from here would (and a resumed run what an
    # uninterrupted one did)
    cuda = [images.device] if images.is_cuda else []  # (CPU: the plumbing's test)
    with torch.random.fork_rng(devices=cuda):
        graphed = torch.cuda.make_graphed_callables(_LossStep(model, autocast), static,
                                                    allow_unused_input=True)  # e.g. frozen parts
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(saved[name])
    shapes = (images.shape, images.dtype, labels.shape, labels.dtype)

    def step(images: Tensor, labels: Tensor) -> dict:
        if (images.shape, images.dtype, labels.shape, labels.dtype) != shapes:
            raise ValueError(f"CUDA-graphed step: captured for images {tuple(shapes[0])} "
                             f"{shapes[1]} and labels {tuple(shapes[2])} {shapes[3]}, got "
                             f"{tuple(images.shape)} {images.dtype} and {tuple(labels.shape)} "
                             f"{labels.dtype}")
        loss, loss_main, loss_semantic = graphed(images, labels)
        return dict(loss=loss, loss_main=loss_main, loss_semantic=loss_semantic)

    return step
