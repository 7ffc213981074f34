"""Shifted-window attention: functional op, fused custom ops and the module.

``window_attention(qkv, table, ...)`` runs on padded qkv in the natural layout
(see :mod:`semask.ops.reference`); the fused backends are reached through the
``semask::window_attention_fwd/bwd`` custom ops so ``torch.compile`` sees one opaque
op per call with a fake (meta) implementation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import backend as _backend
from .reference import pad_to_multiple, relative_position_index, window_attention_reference

OP = "window_attention"


@torch.library.custom_op("semask::window_attention_fwd", mutates_args=())
def _fwd(qkv: Tensor, table: Tensor, num_heads: int, window: int, shift: int, scale: float,
         height: int, width: int, provider: str) -> tuple[Tensor, Tensor]:
    # the providers read their inputs with the strides of contiguous tensors: a direct call
    # of the op (or a compiler's layout) may pass others
    return _backend.get_provider(provider).window_attention_fwd(
        qkv.contiguous(), table.contiguous(), num_heads, window, shift, scale, height, width)


@_fwd.register_fake
def _fwd_fake(qkv, table, num_heads, window, shift, scale, height, width, provider):
    B, Hp, Wp, C3 = qkv.shape
    nW = (Hp // window) * (Wp // window)
    out = qkv.new_empty(B, height, width, C3 // 3)
    lse = qkv.new_empty(B, nW, num_heads, window * window, dtype=torch.float32)
    return out, lse


@torch.library.custom_op("semask::window_attention_bwd", mutates_args=())
def _bwd(dout: Tensor, qkv: Tensor, table: Tensor, out: Tensor, lse: Tensor, num_heads: int,
         window: int, shift: int, scale: float, provider: str) -> tuple[Tensor, Tensor]:
    dout, qkv, table, out, lse = (t.contiguous() for t in (dout, qkv, table, out, lse))
    return _backend.get_provider(provider).window_attention_bwd(
        dout, qkv, table, out, lse, num_heads, window, shift, scale)


@_bwd.register_fake
def _bwd_fake(dout, qkv, table, out, lse, num_heads, window, shift, scale, provider):
    return torch.empty_like(qkv), torch.empty_like(table)


def _setup_context(ctx, inputs, output):
    qkv, table, num_heads, window, shift, scale, _height, _width, provider = inputs
    out, lse = output
    ctx.save_for_backward(qkv, table, out, lse)
    ctx.params = (num_heads, window, shift, scale, provider)
    ctx.mark_non_differentiable(lse)


def _grads(bwd, ctx, dout):
    """(dqkv, dtable, None x 7) from the saved tensors, by ``bwd`` (custom op or launcher)."""
    qkv, table, out, lse = ctx.saved_tensors
    dqkv, dtable = bwd(dout.contiguous(), qkv, table, out, lse, *ctx.params)
    return (dqkv, dtable) + (None,) * 7


_fwd.register_autograd(lambda ctx, dout, _dlse: _grads(_bwd, ctx, dout),
                       setup_context=_setup_context)
_EAGER = _backend.FusedOp(OP, _setup_context, _grads, _bwd)


def check_window_attention_inputs(qkv: Tensor, table: Tensor, num_heads: int, window: int,
                                  shift: int, size: tuple[int, int] | None = None) -> None:
    """Raise a clear error for inputs no backend can run."""
    _backend.check_inputs(OP, {"qkv": qkv, "table": table})
    if num_heads < 1:
        raise ValueError(f"{OP}: num_heads must be at least 1, got {num_heads}")
    if qkv.dim() != 4 or qkv.shape[-1] % 3 or (qkv.shape[-1] // 3) % num_heads:
        raise ValueError(f"{OP}: qkv must be [B, Hp, Wp, 3C] with C divisible by "
                         f"num_heads={num_heads}, got {tuple(qkv.shape)}")
    if 0 in qkv.shape:  # the reference's reshapes would fail without a word on the cause
        what = "batch" if qkv.shape[0] == 0 else "map or channels"
        raise ValueError(f"{OP}: empty {what}, qkv {tuple(qkv.shape)}")
    if window < 1 or qkv.shape[1] % window or qkv.shape[2] % window:
        raise ValueError(f"{OP}: padded map {tuple(qkv.shape[1:3])} is not a multiple of "
                         f"window {window}")
    if not 0 <= shift < window:
        raise ValueError(f"{OP}: shift {shift} must lie in [0, window={window})")
    if tuple(table.shape) != ((2 * window - 1) ** 2, num_heads):
        raise ValueError(f"{OP}: table must be [{(2 * window - 1) ** 2}, {num_heads}], "
                         f"got {tuple(table.shape)}")
    if size is not None and not (0 < size[0] <= qkv.shape[1] and 0 < size[1] <= qkv.shape[2]):
        raise ValueError(f"{OP}: size {tuple(size)} must lie within the padded map "
                         f"{tuple(qkv.shape[1:3])}")


def window_attention(qkv: Tensor, table: Tensor, num_heads: int, window: int, shift: int,
                     scale: float, backend: str = "torch",
                     size: tuple[int, int] | None = None) -> Tensor:
    """Shifted-window attention with relative position bias.

    qkv [B, Hp, Wp, 3C] of the zero-padded map, table [(2w-1)^2, heads] -> [B, H, W, C],
    the first (H, W) = ``size`` rows and columns of the output map (default: all of it;
    the fused kernels write only those). Windows of ``window`` x ``window`` tokens after a
    cyclic shift of the map by ``shift`` (0: none; Swin's odd blocks: window // 2, with
    the shift mask); q is multiplied by ``scale`` (Swin: head_dim ** -0.5) before q k^T.
    ``backend`` is one of ``backend.CHOICES``.
    """
    num_heads, window, shift = _backend.int_arguments(OP, num_heads=num_heads, window=window, shift=shift)
    check_window_attention_inputs(qkv, table, num_heads, window, shift, size)
    if backend == "torch":
        return _crop(window_attention_reference(qkv, table, num_heads, window, shift, scale),
                     size)
    params = dict(num_heads=num_heads, window=window, shift=shift)
    qkv, table = qkv.contiguous(), table.contiguous()
    name = _backend.choose(backend, OP, [qkv, table], params)
    if name == "torch":
        return _crop(window_attention_reference(qkv, table, num_heads, window, shift, scale),
                     size)
    height, width = size if size is not None else qkv.shape[1:3]
    if _backend.eager_dispatch([qkv, table]):
        return _backend.EagerFused.apply(_EAGER, qkv, table, num_heads, window, shift, scale,
                                         height, width, name)[0]
    return _fwd(qkv, table, num_heads, window, shift, scale, height, width, name)[0]


def _crop(out: Tensor, size: tuple[int, int] | None) -> Tensor:
    """out [B, Hp, Wp, C] -> its first size = (H, W) rows and columns (a view)."""
    return out if size is None else out[:, :size[0], :size[1]]


class WindowAttention(nn.Module):
    """(S)W-MSA of a Swin block: pad, qkv, attention, crop, proj.

    Parameter and buffer names follow the official Swin checkpoints (``qkv``, ``proj``,
    ``relative_position_bias_table``, ``relative_position_index``).
    x [B, H, W, C] (already normed) -> [B, H, W, C].
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int = 0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, backend: str = "torch"):
        super().__init__()
        self.dim, self.num_heads, self.window, self.shift = dim, num_heads, window, shift
        self.scale = (dim // num_heads) ** -0.5
        self.backend = backend
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """x [B, H, W, C] -> [B, H, W, C]; or x already zero-padded to the window multiple
        [B, Hp, Wp, C] with ``size`` = (H, W) (the output keeps the unpadded H x W)."""
        if size is None:
            # Padding the normed tokens with zeros (before qkv) as the official Swin does:
            # padded tokens carry q, k, v = qkv bias and take part in attention.
            size, x = x.shape[1:3], pad_to_multiple(x, self.window)
        H, W = size
        qkv = self.qkv(x)
        out = window_attention(qkv, self.relative_position_bias_table, self.num_heads,
                               self.window, self.shift, self.scale, self.backend, size=(H, W))
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, window={self.window}, "
                f"shift={self.shift}, backend={self.backend}")
