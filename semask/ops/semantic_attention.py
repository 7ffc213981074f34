"""SeMask semantic attention: functional op, fused custom ops and the module.

``semantic_attention(q, k, v, window)`` computes softmax(Q K^T) V (single head, no
scaling) inside windows (``window`` > 0) or over the whole map (``window`` = 0); the
fused backends are reached through ``semask::semantic_attention_fwd/bwd``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend as _backend
from .reference import pad_to_multiple, semantic_attention_reference

OP = "semantic_attention"


@torch.library.custom_op("semask::semantic_attention_fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, window: int, provider: str) -> tuple[Tensor, Tensor]:
    # the providers read their inputs with the strides of contiguous tensors: a direct call
    # of the op (or a compiler's layout) may pass others
    q, k, v = (t.contiguous() for t in (q, k, v))
    return _backend.get_provider(provider).semantic_attention_fwd(q, k, v, window)


@_fwd.register_fake
def _fwd_fake(q, k, v, window, provider):
    B, Hp, Wp, _ = v.shape
    nW, N = ((Hp // window) * (Wp // window), window * window) if window else (1, Hp * Wp)
    return torch.empty_like(v), v.new_empty(B, nW, N, dtype=torch.float32)


@torch.library.custom_op("semask::semantic_attention_bwd", mutates_args=())
def _bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, window: int,
         provider: str) -> tuple[Tensor, Tensor, Tensor]:
    dout, q, k, v, out, lse = (t.contiguous() for t in (dout, q, k, v, out, lse))
    return _backend.get_provider(provider).semantic_attention_bwd(dout, q, k, v, out, lse, window)


@_bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, window, provider):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, window, provider = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = (window, provider)
    ctx.mark_non_differentiable(lse)


def _grads(bwd, ctx, dout):
    """(dq, dk, dv, None, None) from the saved tensors, by ``bwd`` (custom op or launcher)."""
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = bwd(dout.contiguous(), q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None


_fwd.register_autograd(lambda ctx, dout, _dlse: _grads(_bwd, ctx, dout),
                       setup_context=_setup_context)
_EAGER = _backend.FusedOp(OP, _setup_context, _grads, _bwd)


def check_semantic_attention_inputs(q: Tensor, k: Tensor, v: Tensor, window: int) -> None:
    """Raise a clear error for inputs no backend can run."""
    _backend.check_inputs(OP, {"q": q, "k": k, "v": v})
    if q.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3] or v.dim() != 4:
        raise ValueError(f"{OP}: expected q, k [B, Hp, Wp, K] and v [B, Hp, Wp, C], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"{OP}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if 0 in q.shape or v.shape[-1] == 0:  # the reference's reshapes would fail without a word on the cause
        what = "batch" if q.shape[0] == 0 else "map, classes or channels"
        raise ValueError(f"{OP}: empty {what}, q {tuple(q.shape)}, v {tuple(v.shape)}")
    if window < 0:
        raise ValueError(f"{OP}: window must be at least 1 (windowed) or 0 (global attention), got {window}")
    if window and (q.shape[1] % window or q.shape[2] % window):
        raise ValueError(f"{OP}: map {tuple(q.shape[1:3])} is not a multiple of window {window}")


# The Triton kernels load q and k rows as 16-byte vectors (and stream them with cp.async)
# only where Triton can prove the row length a multiple of 16 elements; at K = 150 (300-byte
# rows) every element is a 2-byte load. ptxas for sm_90, bf16, window 12 (SeMask-B stage
# 0, C 128), K 150 -> 160: forward 227 -> 168 registers (2 programs per SM either way: the
# cp.async stages take 94 KB of shared memory), the scratch backward's GEMM kernel 255
# registers + 160 B of spills -> 142 and none (2 -> 3 programs per SM), its dq kernel's
# 48 B of spills -> none; window 7 (whole rows) dq 252 -> 188, dk/dv 236 -> 194.
# Chosen from these builds, not yet timed. The CUDA extension stages q and k through shared
# memory whatever K is: it would only compute the zero classes, so it gets K as it is.
CLASS_MULTIPLE = 16
PADDED_BACKENDS = ("auto", "triton")  # the module backends that pad (auto: on CUDA tensors)


def class_padding(num_classes: int) -> int:
    """Zero classes that :class:`SemanticAttention` appends to q and k on the Triton backends
    (rows of a multiple of CLASS_MULTIPLE): 150 -> 10, 19 -> 13, 160 -> 0. They add 0 to
    every score, so the attention is that of the K classes."""
    return -num_classes % CLASS_MULTIPLE


@contextlib.contextmanager
def classes_unpadded():
    """Within: :class:`SemanticAttention` gives every backend the K classes as they are
    (to count the model's FLOPs, not the zero classes' work)."""
    saved = SemanticAttention.pad_classes
    SemanticAttention.pad_classes = False
    try:
        yield
    finally:
        SemanticAttention.pad_classes = saved


def linear_padded(layer: nn.Linear, x: Tensor, pad: int) -> Tensor:
    """``layer(x)`` with ``pad`` zero output features appended (zero weight rows and bias),
    as one product: [..., in] -> [..., out + pad]."""
    if not pad:
        return layer(x)
    bias = None if layer.bias is None else F.pad(layer.bias, (0, pad))
    return F.linear(x, F.pad(layer.weight, (0, 0, 0, pad)), bias)


def semantic_attention(q: Tensor, k: Tensor, v: Tensor, window: int, backend: str = "torch") -> Tensor:
    """q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> [B, Hp, Wp, C]; window 0 = global. The Triton
    kernels load q and k rows as vectors only when K is a multiple of CLASS_MULTIPLE (zero
    classes appended change nothing; :class:`SemanticAttention` appends them)."""
    (window,) = _backend.int_arguments(OP, window=window)
    check_semantic_attention_inputs(q, k, v, window)
    if backend == "torch":
        return semantic_attention_reference(q, k, v, window)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    name = _backend.choose(backend, OP, [q, k, v], dict(window=window))
    if name == "torch":
        return semantic_attention_reference(q, k, v, window)
    if _backend.eager_dispatch([q, k, v]):
        return _backend.EagerFused.apply(_EAGER, q, k, v, window, name)[0]
    return _fwd(q, k, v, window, name)[0]


class SemanticAttention(nn.Module):
    """The SeMask block's class injection (``class_injection.0`` in official checkpoints).

    y [B, H, W, C] = LN(x) -> (gamma * Dropout(mlp_res(A V)) + y [B, H, W, C],
    prior Q_s [B, H, W, K]), A = softmax(Q_s K_s^T) (arXiv 2112.12782, Sec. 3.2;
    residual on y and scalar gamma as in the released code).
    """

    # PADDED_BACKENDS: q and k with class_padding(K) zero classes appended (rows the Triton
    # kernels load as vectors, the same attention); False: K classes as they are
    pad_classes = True

    def __init__(self, dim: int, num_classes: int, window: int, proj_drop: float = 0.1,
                 backend: str = "torch"):
        super().__init__()
        self.window, self.backend = window, backend
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gamma = nn.Parameter(torch.zeros(1))

    def class_pad(self, y: Tensor) -> int:
        """Zero classes appended to q and k of input ``y`` (see ``pad_classes``): none for
        CPU tensors on "auto", which runs the reference there, nor where the Triton backend
        does not load (auto then runs the CUDA extension, which gains nothing from them)."""
        padded = (self.pad_classes and self.backend in PADDED_BACKENDS
                  and (self.backend != "auto"
                       or y.is_cuda and _backend.get_provider("triton") is not None))
        return class_padding(self.mlp_cls_q.out_features) if padded else 0

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _, H, W, _ = y.shape
        K = self.mlp_cls_q.out_features
        yp = pad_to_multiple(y, self.window) if self.window else y
        pad = self.class_pad(y)
        q = linear_padded(self.mlp_cls_q, yp, pad)
        k = linear_padded(self.mlp_cls_k, yp, pad)
        out = semantic_attention(q, k, self.mlp_v(yp), self.window, self.backend)
        z = self.proj_drop(self.mlp_res(out[:, :H, :W]))
        return self.gamma * z + y, q[:, :H, :W, :K]

    def extra_repr(self) -> str:
        mode = f"window={self.window}" if self.window else "global"
        return f"{mode}, backend={self.backend}"
