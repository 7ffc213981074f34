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
memory pool (the step's activations) reserved for the rest of the run. Warm-ups and
capture run inside ``layer_norm.graph_capture``: a fused model's LayerNorms take the
Triton kernels there (PyTorch's in eager steps; see :mod:`semask.ops.layer_norm`).

:class:`GraphedInference` does the same for evaluation and inference forwards, which run
one image at a time and so are bound by the host even more.
"""
from __future__ import annotations

import contextlib
import gc
import inspect
from typing import Callable

import torch
from torch import Tensor, nn

from ..ops.layer_norm import graph_capture
from .inference import logits_of

# The training capture in thread-local mode where torch offers it: in the default global
# mode a CUDA call of another thread during the capture (a pinned loader's thread:
# cudaHostAlloc, event queries) fails it. Without it, the trainer does not pin batches
# under CUDA graphs (``pinned_batches_allowed``).
THREAD_LOCAL_CAPTURE = ({"capture_error_mode": "thread_local"}
                        if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters
                        else {})


def pinned_batches_allowed(cuda_graphs: bool) -> bool:
    """Whether a training loader may pin its batches (in a thread of its own) alongside
    the step's capture."""
    return not cuda_graphs or bool(THREAD_LOCAL_CAPTURE)


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
    # capture on the inputs' GPU (its streams and its default generator), as _capture does
    on_device = torch.cuda.device(images.device) if images.is_cuda else contextlib.nullcontext()
    try:
        with on_device, torch.random.fork_rng(devices=cuda), _gc_paused(), graph_capture():
            graphed = torch.cuda.make_graphed_callables(_LossStep(model, autocast), static,
                                                        allow_unused_input=True,  # e.g. frozen parts
                                                        **THREAD_LOCAL_CAPTURE)
    finally:  # also when the capture fails: the warm-ups moved the BatchNorm statistics
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
    shapes = (images.shape, images.dtype, labels.shape, labels.dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(images: Tensor, labels: Tensor) -> dict:
        if (images.shape, images.dtype, labels.shape, labels.dtype) != shapes:
            raise ValueError(f"CUDA-graphed step: captured for images {tuple(shapes[0])} "
                             f"{shapes[1]} and labels {tuple(shapes[2])} {shapes[3]}, got "
                             f"{tuple(images.shape)} {images.dtype} and {tuple(labels.shape)} "
                             f"{labels.dtype}")
        # a replay's backward writes the static gradient buffers that .grad then holds
        # (AccumulateGrad takes them over): with a .grad left from the last replay, backward
        # would add the buffer to itself (2x the gradient) without an error
        if any(p.grad is not None for p in trainable):
            raise RuntimeError("CUDA-graphed step: parameters still hold gradients; call "
                               "optimizer.zero_grad(set_to_none=True) before each step")
        loss, loss_main, loss_semantic = graphed(images, labels)
        return dict(loss=loss, loss_main=loss_main, loss_semantic=loss_semantic)

    return step


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector collected first, then off: since torch 2.9 a
    capture no longer collects, and a collection during one can free another graph (those
    of make_graphed_callables sit in reference cycles), which invalidates the capture
    (pytorch/pytorch#161037)."""
    was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _graphable(x: Tensor) -> bool:
    return x.is_cuda


def _capture(forward: Callable[[Tensor], Tensor], x: Tensor, warmup: int = 2):
    """(replay, static input, static output) of ``forward`` captured into a CUDA graph on
    its own memory pool, after ``warmup`` runs on a side stream (torch.cuda.graph's
    recipe), all on x's GPU; ``replay()`` reads the static input and rewrites the static
    output."""
    with torch.cuda.device(x.device), _gc_paused(), graph_capture():
        static_in = x.clone()
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                forward(static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA work of other threads (not ours) does not break the capture
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
            static_out = forward(static_in)

    device = x.device  # (not x: the closure would keep the caller's tensor alive)

    def replay():
        with torch.cuda.device(device):
            graph.replay()
    return replay, static_in, static_out


class GraphedInference:
    """``GraphedInference(model)(x)`` -> the logits of ``model(x)`` (a new tensor), the
    forward replayed from a CUDA graph where it can be.

    For an eval-mode model under no_grad on CUDA inputs: an input signature (shape, dtype,
    device, autocast state, inference mode) is captured when it comes a third time (sizes
    that come once or twice, such as a multi-scale eval's flipped pairs of varying sizes,
    run eagerly: a capture costs about three forwards), at most ``max_graphs`` of them
    (later signatures run eagerly; each graph keeps a memory pool of about one forward's
    peak). Anything else (training mode, grad mode, CPU) runs eagerly. Replays read the
    parameters in place, so weights updated in place between calls are used; the autocast
    weight cache is off during capture. A fused model's LayerNorms run PyTorch's op in the
    eager calls and the Triton kernels in the graph (``fused_norm="graphs"``), so a size's
    first two outputs and its replays may differ in the last bits."""

    def __init__(self, model: nn.Module, max_graphs: int = 6, capture_on: int = 3):
        self.model, self.max_graphs, self.capture_on = model, max_graphs, capture_on
        self.graphs: dict[tuple, tuple] = {}  # signature -> _capture's result
        self.sightings: dict[tuple, int] = {}

    @property
    def captures(self) -> int:
        return len(self.graphs)

    def __call__(self, x: Tensor) -> Tensor:
        if self.model.training or torch.is_grad_enabled() or not _graphable(x):
            return logits_of(self.model(x))
        kind = x.device.type
        amp = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        key = (tuple(x.shape), x.dtype, x.device, amp, torch.is_inference_mode_enabled())
        entry = self.graphs.get(key)
        if entry is None:
            seen = self.sightings[key] = self.sightings.get(key, 0) + 1
            if seen < self.capture_on or len(self.graphs) >= self.max_graphs:
                return logits_of(self.model(x))

            def forward(inp: Tensor) -> Tensor:
                with torch.autocast(kind, dtype=amp[1], enabled=amp[0], cache_enabled=False):
                    return logits_of(self.model(inp))

            entry = self.graphs[key] = _capture(forward, x)
        replay, static_in, static_out = entry
        static_in.copy_(x)
        replay()
        return static_out.clone()
