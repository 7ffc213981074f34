"""Plain PyTorch reference implementations of the attention ops.

These are the CPU path of the model and the oracle every fused kernel is tested
against. They follow the official Swin / SeMask numerics (see
``shared/SEMASK_SPEC.md``) and are written for readability, not speed.

Layouts (shared by every backend):
    qkv    [B, Hp, Wp, 3C]   output of the qkv Linear on the zero-padded map;
                              channel = which * C + head * D + d  (which: q, k, v)
    table  [(2w-1)^2, heads]  relative position bias table
    out    [B, Hp, Wp, C]    attention output in the natural (unshifted) layout
    lse    [B, nW, heads, N] float32 log-sum-exp of each score row, windows taken
                              row-major over the *shifted* map, N = w*w tokens row-major
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import eager_dispatch

SHIFT_MASK_VALUE = -100.0  # value the official Swin adds between shift regions


def padding_to_multiple(size: int, multiple: int) -> int:
    """What ``size`` lacks to a multiple of ``multiple`` (``(-size) % multiple``, written with
    floor division: inductor's tensorify pass cannot evaluate a Python modulo of a dynamic
    size, torch 2.14)."""
    return (size + multiple - 1) // multiple * multiple - size


def pad_to_multiple(x: Tensor, window: int) -> Tensor:
    """Zero-pad a [B, H, W, C] map on the right/bottom to multiples of ``window``."""
    _, H, W, _ = x.shape
    pad_b, pad_r = padding_to_multiple(H, window), padding_to_multiple(W, window)
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B, Hp, Wp, C] -> [B * nW, w*w, C], windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """[B * nW, w*w, C] -> [B, H, W, C] (inverse of :func:`window_partition`)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def _build_relative_position_index(window: int, device) -> Tensor:
    r = torch.arange(window, device=device)
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij"))
    coords = coords.flatten(1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]: (dh, dw) of query minus key
    # index = (dh + w - 1) * (2w - 1) + (dw + w - 1)   (Swin, Liu et al. 2021)
    return (rel[0] + window - 1) * (2 * window - 1) + (rel[1] + window - 1)


def relative_position_index(window: int) -> Tensor:
    """[N, N] long index into the [(2w-1)^2, heads] bias table."""
    return _relative_position_index_cached(window, torch.device("cpu")).clone()


_INDEX_CACHE: dict = {}  # (window, device) -> [N, N] index, made in plain eager mode


def _relative_position_index_cached(window: int, device: torch.device) -> Tensor:
    key = (window, device)
    if key not in _INDEX_CACHE:
        with torch.inference_mode(False):  # usable in and out of inference mode
            _INDEX_CACHE[key] = _build_relative_position_index(window, device)
    return _INDEX_CACHE[key]


def _relative_position_index_on(window: int, device: torch.device) -> Tensor:
    """The [N, N] index on ``device`` without a host-to-device copy per call (one would wait
    for the GPU and cannot be graph-captured): in plain eager mode one cached copy per
    (window, device), as the official Swin keeps it in a buffer; outside plain eager mode
    (``backend.eager_dispatch``: compile, fake tensors, dispatch modes, other tracers)
    built on the device, never cached. While a CUDA graph is captured a copy cached
    before is read (the cache keeps it alive, outside the graph's pool); none is made
    there (it would live in the graph's memory pool): the index is built in the graph."""
    if not eager_dispatch():
        return _build_relative_position_index(window, device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if capturing and (window, device) not in _INDEX_CACHE:
        return _build_relative_position_index(window, device)
    return _relative_position_index_cached(window, device)


def relative_position_bias(table: Tensor, window: int) -> Tensor:
    """Gather the bias table into [heads, N, N]."""
    index = _relative_position_index_on(window, table.device)
    N = window * window
    return table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)


def shift_region_labels(Hp: int, Wp: int, window: int, shift: int, device=None) -> Tensor:
    """[Hp, Wp] region id (0..8) of each position of the shifted, padded map.

    The official 3x3 labelling: rows split at Hp - w and Hp - s, columns at Wp - w and
    Wp - s.
    """
    def bands(n: int) -> Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    return bands(Hp)[:, None] * 3 + bands(Wp)[None, :]


def shift_attn_mask(Hp: int, Wp: int, window: int, shift: int, device=None) -> Tensor:
    """[nW, N, N] additive mask: 0 inside a region, -100 between regions. Built on
    ``device`` per call, as mmseg's Swin builds it in every forward (no host work or copy)."""
    labels = window_partition(shift_region_labels(Hp, Wp, window, shift, device)[None, :, :, None],
                              window)
    labels = labels.squeeze(-1)  # [nW, N]
    diff = labels[:, None, :] != labels[:, :, None]
    return diff.float() * SHIFT_MASK_VALUE


def _window_scores(q: Tensor, k: Tensor, bias: Tensor | None, mask: Tensor | None, batch: int) -> Tensor:
    attn = q @ k.transpose(-2, -1)  # [B*nW, heads, N, N]
    if bias is not None:
        attn = attn + bias.unsqueeze(0)
    if mask is not None:
        nW, N = mask.shape[0], mask.shape[1]
        attn = attn.view(batch, nW, -1, N, N) + mask[None, :, None].to(attn.dtype)
        attn = attn.view(batch * nW, -1, N, N)
    return attn


def window_attention_reference(
    qkv: Tensor, table: Tensor, num_heads: int, window: int, shift: int, scale: float
) -> Tensor:
    """Shifted-window multi-head attention with relative position bias.

    qkv [B, Hp, Wp, 3C] (Hp, Wp multiples of ``window``), table [(2w-1)^2, heads]
    -> out [B, Hp, Wp, C]. ``shift`` = 0 gives W-MSA, ``shift`` > 0 SW-MSA (cyclic
    shift by -shift, shift mask, reverse shift), as in the official Swin.
    """
    B, Hp, Wp, C3 = qkv.shape
    C = C3 // 3
    D = C // num_heads
    N = window * window
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
    q, k, v = window_partition(qkv, window).view(-1, N, 3, num_heads, D).permute(2, 0, 3, 1, 4)
    mask = shift_attn_mask(Hp, Wp, window, shift, qkv.device) if shift else None
    attn = _window_scores(q * scale, k, relative_position_bias(table, window), mask, B)
    # P in v's dtype: a table of another dtype (fp32 with half qkv) promotes the scores only
    out = (attn.softmax(dim=-1).to(v.dtype) @ v).transpose(1, 2).reshape(-1, N, C)
    out = window_reverse(out, window, Hp, Wp)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out


def window_attention_lse_reference(
    qkv: Tensor, table: Tensor, num_heads: int, window: int, shift: int, scale: float
) -> Tensor:
    """float32 log-sum-exp of every score row, [B, nW, heads, N] (see module docstring)."""
    B, Hp, Wp, C3 = qkv.shape
    C = C3 // 3
    N = window * window
    x = qkv.float()
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    q, k, _ = window_partition(x, window).view(-1, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    mask = shift_attn_mask(Hp, Wp, window, shift, qkv.device) if shift else None
    attn = _window_scores(q * scale, k, relative_position_bias(table.float(), window), mask, B)
    return attn.logsumexp(dim=-1).view(B, -1, num_heads, N)


def _semantic_windows(x: Tensor, window: int) -> Tensor:
    """[B, Hp, Wp, D] -> [B * nW, N, D]; window 0 means one window over the whole map."""
    if window:
        return window_partition(x, window)
    return x.flatten(1, 2)


def semantic_attention_reference(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """SeMask semantic attention: softmax(Q K^T) V, single head, no scaling.

    q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> out [B, Hp, Wp, C]. ``window`` > 0: inside
    non-overlapping windows (Hp, Wp multiples of it; no shift, mask or bias);
    ``window`` = 0: global attention over all Hp*Wp tokens.
    """
    B, Hp, Wp, _ = v.shape
    qw, kw, vw = (_semantic_windows(t, window) for t in (q, k, v))
    out = (qw @ kw.transpose(-2, -1)).softmax(dim=-1) @ vw
    if window:
        return window_reverse(out, window, Hp, Wp)
    return out.view(B, Hp, Wp, -1)


def semantic_attention_lse_reference(q: Tensor, k: Tensor, window: int) -> Tensor:
    """float32 log-sum-exp of every score row, [B, nW, N] (nW = 1, N = Hp*Wp if global)."""
    B = q.shape[0]
    qw, kw = (_semantic_windows(t.float(), window) for t in (q, k))
    return (qw @ kw.transpose(-2, -1)).logsumexp(dim=-1).view(B, -1, qw.shape[1])
