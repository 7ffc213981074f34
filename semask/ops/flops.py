"""FLOP formulas of the fused custom ops for ``torch.utils.flop_counter.FlopCounterMode``.

A fused op is one opaque call to the counter, so without a formula it would count zero.
The formulas count exactly what the PyTorch reference's matmuls count (2 FLOPs per
multiply-add, as FlopCounterMode does for ``bmm``), so every provider reports the same
FLOPs for the same work; what a kernel recomputes (the fused backward redoes Q K^T)
is not counted.

Window attention, per window and head (N = w*w tokens, D = head dim, C = heads * D):
    forward  : S = Q K^T and O = A V              -> 2 * 2 N^2 D
    backward : dV = A^T dO, dA = dO V^T, dQ = dS K, dK = dS^T Q   -> 4 * 2 N^2 D
Semantic attention, per window (single head, Q, K of width K_cls, V of width C):
    forward  : 2 N^2 K_cls + 2 N^2 C
    backward : 2 * (2 N^2 K_cls + 2 N^2 C)
(N = Hp * Wp for the global mode.) Importing this module registers the formulas; it
never touches the GPU.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from . import semantic_attention as _semantic  # noqa: F401  (defines torch.ops.semask.*)
from . import window_attention as _window  # noqa: F401


def window_attention_flops(qkv_shape, window: int) -> int:
    """Forward FLOPs of window attention on qkv [B, Hp, Wp, 3C] (all heads, all windows)."""
    B, Hp, Wp, C3 = qkv_shape
    tokens, n = B * Hp * Wp, window * window
    return 2 * 2 * tokens * n * (C3 // 3)  # per token: N keys x C channels, twice


def semantic_attention_flops(q_shape, v_shape, window: int) -> int:
    """Forward FLOPs of semantic attention on q [B, Hp, Wp, K], v [B, Hp, Wp, C]."""
    B, Hp, Wp, K = q_shape
    C = v_shape[-1]
    n = window * window if window else Hp * Wp
    return 2 * B * Hp * Wp * n * (K + C)


# Argument names follow the custom ops' schemas (tensors arrive as their shapes).
def _window_fwd(qkv, table, num_heads, window, shift, scale, height, width, provider,
                out_shape=None) -> int:
    return window_attention_flops(qkv, window)  # padded queries too, as the reference


def _window_bwd(dout, qkv, table, out, lse, num_heads, window, shift, scale, provider,
                out_shape=None) -> int:
    return 2 * window_attention_flops(qkv, window)


def _semantic_fwd(q, k, v, window, provider, out_shape=None) -> int:
    return semantic_attention_flops(q, v, window)


def _semantic_bwd(dout, q, k, v, out, lse, window, provider, out_shape=None) -> int:
    return 2 * semantic_attention_flops(q, v, window)


_FORMULAS = {
    "window_attention_fwd": _window_fwd,
    "window_attention_bwd": _window_bwd,
    "semantic_attention_fwd": _semantic_fwd,
    "semantic_attention_bwd": _semantic_bwd,
}


def register() -> None:
    """Register the four formulas once (idempotent)."""
    for name, formula in _FORMULAS.items():
        target = getattr(torch.ops.semask, name)
        if target not in flop_registry:
            register_flop_formula(target)(formula)


register()
