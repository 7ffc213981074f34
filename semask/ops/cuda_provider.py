"""The CUDA C++ provider of the fused ops (see :mod:`semask.ops.backend`).

Answers the shared launcher signatures with the extension built from ``csrc/``
(:mod:`semask.ops.build_cuda`: the installed ``semask._C`` or a just-in-time build on first
use). :meth:`CudaProvider.reasons` never compiles for inputs it cannot run anyway.
Limits: CUDA tensors of float32/float16/bfloat16; window attention with window <= 12 and
head dim <= 64; semantic attention with K <= 256 classes (any C, any window, or global).
"""
from __future__ import annotations

from .build_cuda import ExtensionUnavailable, load_extension

OPS = ("window_attention", "semantic_attention")
DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")
MAX_WINDOW = 12
MAX_HEAD_DIM = 64
MAX_CLASSES = 256


def _shape_reasons(op: str, tensors, params: dict) -> list[str]:
    if op == "window_attention":
        heads, window = params["num_heads"], params["window"]
        head_dim = tensors[0].shape[-1] // 3 // max(heads, 1)
        why = []
        if window > MAX_WINDOW:
            why.append(f"window {window} > {MAX_WINDOW} is not supported")
        if head_dim > MAX_HEAD_DIM:
            why.append(f"head dim {head_dim} > {MAX_HEAD_DIM} is not supported")
        return why
    classes = tensors[0].shape[-1]
    return [f"K={classes} classes > {MAX_CLASSES} is not supported"] if classes > MAX_CLASSES else []


class CudaProvider:
    name = "cuda"

    def reasons(self, op: str, tensors, params: dict) -> list[str]:
        """Why the CUDA extension cannot run ``op`` on these inputs (empty: it can)."""
        if op not in OPS:
            return [f"unknown op {op!r}"]
        why = []
        devices = sorted({t.device.type for t in tensors})
        if devices != ["cuda"]:
            why.append(f"inputs are on {', '.join(devices)}; the cuda backend needs CUDA tensors")
        dtypes = sorted({str(t.dtype) for t in tensors if str(t.dtype) not in DTYPES})
        if dtypes:
            why.append(f"dtype {', '.join(dtypes)} is not supported (float32, float16, bfloat16)")
        why += _shape_reasons(op, tensors, params)
        if not why:  # only now may the first use build the extension
            try:
                load_extension()
            except ExtensionUnavailable as exc:
                why.append(str(exc))
        return why

    def window_attention_fwd(self, qkv, table, num_heads, window, shift, scale, height, width):
        return tuple(load_extension().window_attention_fwd(
            qkv, table, int(num_heads), int(window), int(shift), float(scale), int(height),
            int(width)))

    def window_attention_bwd(self, dout, qkv, table, out, lse, num_heads, window, shift, scale):
        return tuple(load_extension().window_attention_bwd(
            dout, qkv, table, out, lse, int(num_heads), int(window), int(shift), float(scale)))

    def semantic_attention_fwd(self, q, k, v, window):
        return tuple(load_extension().semantic_attention_fwd(q, k, v, int(window)))

    def semantic_attention_bwd(self, dout, q, k, v, out, lse, window):
        return tuple(load_extension().semantic_attention_bwd(dout, q, k, v, out, lse, int(window)))


PROVIDER = CudaProvider()
