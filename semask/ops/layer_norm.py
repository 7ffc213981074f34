"""LayerNorm on the Triton kernels where they run (fused models), else PyTorch's.

``LayerNorm`` is ``nn.LayerNorm`` (same parameters and state dict) with a ``backend``:
"torch" (the reference), or a fused request ("auto", "triton", "cuda") under which it runs
:mod:`semask.kernels.layer_norm` in eager mode on CUDA tensors (on CPU tensors only when
"triton" is asked for by name, under ``TRITON_INTERPRET=1``). The CUDA extension has no
LayerNorm, and under torch.compile (which fuses LayerNorm itself) or a dispatch mode
PyTorch's runs. The result's dtype is autocast's: fp32 under CUDA autocast (layer_norm is on
its fp32 list), else x's (CPU autocast leaves layer_norm alone). A LayerNorm made with
``to_autocast_dtype=True`` feeds a layer that autocast runs in its low precision (a Linear):
under autocast its kernel writes that dtype directly, the values autocast's cast of the
fp32 result gives, without the cast (and its backward) as separate kernels.
``pad_multiple`` (x [B, H, W, C]) zero-pads the result on the right/bottom to multiples of
it, as ``reference.pad_to_multiple`` after the norm; the Triton kernels write the padded
map themselves (no pad copy, no crop copy in the backward).

``graphs_only`` (a fused model's default): the Triton kernels run only inside
:func:`graph_capture`, i.e. in the CUDA graphs of :mod:`semask.train.cuda_graphs`, and
PyTorch's LayerNorm in eager steps. Why: on an H200 host (2026-11-27, torch 2.11, Triton
3.6; ``benchmarks/results/h200-2026-11-27-64a1d89/host_time.md``) a Triton forward +
backward costs ~440 us more host time per call than PyTorch's, ~16 ms over the 36 norms of
a SeMask-T step, whose eager steps are bound by the host; the kernels save ~2.5 ms of GPU
time per step (~1.5 ms timed on the norm cases; ~1 ms, by a bytes estimate, of the casts of
PyTorch's fp32 outputs under autocast before the Linears, which ``to_autocast_dtype``
spares), which only a replayed graph, free of host time, keeps.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import eager_dispatch, single_backward
from .reference import pad_to_multiple

OP = "layer_norm"


class _LayerNorm(torch.autograd.Function):
    """x [..., C] -> LayerNorm(x) in ``out_dtype`` (zero-padded to multiples of
    ``pad_multiple``) by the Triton kernels; differentiates once."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype,
                pad_multiple: int):
        from semask.kernels import layer_norm as kernels
        y, mean, rstd = kernels.forward(x, weight, bias, eps, out_dtype, pad_multiple)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.dtypes = (weight.dtype, bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        from semask.kernels import layer_norm as kernels
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = kernels.backward(dy, x, weight, mean, rstd)
        grads = (dx, dweight.to(ctx.dtypes[0]), dbias.to(ctx.dtypes[1]))
        return (*single_backward(grads, "the fused LayerNorm", (dy, x, weight)), None, None, None)


def fused_layer_norm_reasons(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> list[str]:
    """Why the Triton kernels cannot normalise x (empty: they can)."""
    from semask.kernels.provider import PROVIDER
    return PROVIDER.reasons(OP, [x, weight, bias], {})


_decisions: dict[tuple, bool] = {}  # whether the kernels run, per description of the inputs
_captures = 0  # graph_capture contexts open, in any thread
_captures_lock = threading.Lock()


@contextlib.contextmanager
def graph_capture():
    """Inside: the ``graphs_only`` LayerNorms run the Triton kernels where they can (the
    warm-up runs and the capture of a CUDA graph: the kernels are built before capture).
    Process-wide, not per thread: the forward decides, and other threads' eager forwards
    meanwhile take the kernels too (same values up to rounding)."""
    global _captures
    with _captures_lock:
        _captures += 1
    try:
        yield
    finally:
        with _captures_lock:
            _captures -= 1


def _use_triton(backend: str, x: Tensor, weight, bias, graphs_only: bool = False) -> bool:
    """Whether ``backend`` runs the Triton kernels on these inputs; the providers' checks
    run once per description of them (what they read) and are remembered."""
    if backend not in ("auto", "triton") or not (x.is_cuda or backend == "triton"):
        return False
    if graphs_only and not _captures:
        return False
    if not eager_dispatch((x, weight, bias)):
        return False
    key = (x.shape[-1], x.numel() == 0, x.dtype, x.device, os.environ.get("TRITON_INTERPRET"),
           *((None,) if t is None else (tuple(t.shape), t.dtype, t.device) for t in (weight, bias)))
    use = _decisions.get(key)
    if use is None:
        use = _decisions[key] = not fused_layer_norm_reasons(x, weight, bias)
    return use


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
               backend: str = "torch", to_autocast_dtype: bool = False,
               pad_multiple: int = 0, graphs_only: bool = False) -> Tensor:
    """``F.layer_norm`` over the last dimension of x [..., C], zero-padded to multiples of
    ``pad_multiple`` if given (x [B, H, W, C]; see the module docstring)."""
    if pad_multiple and x.dim() != 4:
        raise ValueError(f"layer_norm: padding needs x [B, H, W, C], got {tuple(x.shape)}")
    if not _use_triton(backend, x, weight, bias, graphs_only):
        y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
        return pad_to_multiple(y, pad_multiple) if pad_multiple else y
    device = x.device.type
    if to_autocast_dtype and torch.is_autocast_enabled(device):
        out_dtype = torch.get_autocast_dtype(device)
    elif device == "cuda" and torch.is_autocast_enabled("cuda"):
        out_dtype = torch.float32
    else:
        out_dtype = x.dtype
    # the kernels read x, weight and bias with unit stride (views of a wider tensor, expanded
    # scalars: copies; the gradients flow back through .contiguous)
    weight, bias = (None if t is None else t.contiguous() for t in (weight, bias))
    return _LayerNorm.apply(x.contiguous(), weight, bias, eps, out_dtype, pad_multiple)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension, on the Triton kernels when ``backend`` asks for
    fused ops (with ``graphs_only``, inside :func:`graph_capture` only); ``to_autocast_dtype``:
    its output only feeds a Linear (see the module docstring). x [..., C] -> [..., C]."""

    def __init__(self, dim: int, eps: float = 1e-5, backend: str = "torch",
                 to_autocast_dtype: bool = False, graphs_only: bool = False):
        super().__init__(dim, eps=eps)
        self.backend, self.to_autocast_dtype = backend, to_autocast_dtype
        self.graphs_only = graphs_only

    def forward(self, x: Tensor, pad_multiple: int = 0) -> Tensor:
        """``pad_multiple``: x [B, H, W, C] -> [B, Hp, Wp, C] zero-padded to its multiples."""
        return layer_norm(x, self.weight, self.bias, self.eps, self.backend,
                          self.to_autocast_dtype, pad_multiple, self.graphs_only)
