"""Bilinear x2 upsampling in Triton, forward and backward, without atomics.

What it computes: ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``
for x [B, C, H, W] -> y [B, C, 2H, 2W], the upsampling of the Semantic FPN head and of the
SeMask semantic decoder, and its gradient. Weights as PyTorch's ``upsample_bilinear2d``
(``common.bilinear_axis`` with scale 1/2): along each axis output 2i reads inputs
(i - 1, i) with weights (1/4, 3/4) and output 2i + 1 reads (i, i + 1) with (3/4, 1/4),
indices clamped at the borders (output 0 reads input 0 alone; the last output the last
input alone). Values in fp32, stored in x's dtype. For bf16/fp16 inputs whose four taps
lie within about 2^10 of each other in magnitude the fp32 sums are exact, so the forward
equals PyTorch's bitwise there; elsewhere both round in fp32, possibly in another order.

Layout: any strides (NCHW or channels-last); y takes x's memory format. A program owns
BLOCK_C channels x BLOCK_P pixels of one row (of y forward, of dx backward; ``_blocks``);
the block is oriented along the contiguous dimension (W for NCHW, C for channels-last).

``_upsample2x_fwd_kernel``, grid (B * 2H * pixel tiles, channel tiles): y = the four taps
above, computed per input column i for both its outputs 2i and 2i + 1 from three loads per
input row (columns i - 1, i, i + 1, the middle one vectorized where the layout allows) and
interleaved (``tl.join``) before one store; for sm_90 (ptxas, Triton 3.8, bf16, NCHW)
35 instructions and 2.25 load instructions per output element, against 52 and 4 for the
four-gather form before.
``_upsample2x_bwd_kernel``, grid (B * H * pixel tiles, channel tiles): the adjoint as a
gather, not the scatter of PyTorch's backward (atomic adds into dx): input pixel i along an
axis receives from outputs 2i - 1 .. 2i + 2 with weights 1/4, 3/4, 3/4, 1/4, those indices
clamped to [0, 2n), which reproduces the border weights (output 0 reads
input 0 alone: dx[0] takes dy[0] with 1/4 + 3/4; the last input likewise), so
dx[i, j] = sum over 4 x 4 outputs of w_y w_x dy[o_y, o_x] in fp32, stored once
(deterministic); every weight is non-zero, so no 0 * inf appears. Per dy row a program loads
the columns 2j, 2j + 1 of its tile at once (split into the two) and 2j - 1, 2j + 2 apart
(``_bwd_row``); for sm_90 (ptxas, Triton 3.8, bf16, NCHW) 116 instructions per dx element
against 300 for the per-tap weights and masks before.

Limits: fp32, fp16, bf16; 4-D input; int64 offsets throughout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import bilinear_axis, cdiv, next_pow2, on_device

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _upsample2x_fwd_kernel(X, Y, C, H, W, n_px, sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                           BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Output row oy, BLOCK_C channels, outputs 2i and 2i + 1 of the tile's BLOCK_P / 2 input
    columns i: each input row read at i - 1, i and i + 1 (one load each for the whole
    tile), rows blended first, then columns, the two outputs interleaved before the store."""
    HALF: tl.constexpr = BLOCK_P // 2
    pid = tl.program_id(0)
    tile = pid % n_px
    row = pid // n_px  # b * 2H + oy
    b = (row // (2 * H)).to(tl.int64)
    oy = row % (2 * H)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    i = tile * HALF + tl.arange(0, HALF)
    c_ok = (c < C)[:, None]
    y0, y1, wy0, wy1 = bilinear_axis(oy, H, 0.5, 0)
    base = X + b * sxb + c[:, None] * sxc
    r0 = base + y0.to(tl.int64) * sxh
    r1 = base + y1.to(tl.int64) * sxh
    cols = i.to(tl.int64)[None, :] * sxw
    # rows blended at columns i - 1, i, i + 1 (neighbours past the map read as 0 here; PyTorch
    # clamps the source index at the borders: below, column i stands in for them)
    mid = c_ok & (i < W)[None, :]
    v_c = _blend_rows(r0 + cols, r1 + cols, mid, wy0, wy1)
    v_m = _blend_rows(r0 + cols - sxw, r1 + cols - sxw, c_ok & ((i >= 1) & (i <= W))[None, :],
                      wy0, wy1)
    v_p = _blend_rows(r0 + cols + sxw, r1 + cols + sxw, c_ok & (i + 1 < W)[None, :], wy0, wy1)
    v_p = tl.where((i == W - 1)[None, :], v_c, v_p)
    # output 2i reads (i - 1, i) with (1/4, 3/4), output 2i + 1 reads (i, i + 1) with (3/4, 1/4);
    # output 0 reads input 0 with weight 1 and input min(1, W - 1) with 0, as PyTorch's sum
    # does (so an inf there gives NaN as in PyTorch, and finite values are not rounded)
    even = tl.where((i == 0)[None, :], v_c + 0.0 * v_p, 0.25 * v_m + 0.75 * v_c)
    out = tl.reshape(tl.join(even, 0.75 * v_c + 0.25 * v_p), [BLOCK_C, BLOCK_P])
    ox = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    tl.store(Y + b * syb + c[:, None] * syc + oy.to(tl.int64) * syh
             + ox.to(tl.int64)[None, :] * syw, out.to(Y.dtype.element_ty),
             mask=c_ok & (ox < 2 * W)[None, :])


@triton.jit
def _blend_rows(p0, p1, mask, w0, w1):
    """w0 x[p0] + w1 x[p1] in fp32 (0 where not ``mask``)."""
    return (w0 * tl.load(p0, mask=mask, other=0.0).to(tl.float32)
            + w1 * tl.load(p1, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def _bwd_row(row_ptr, j0, c_ok, W, sdyw, BLOCK_P: tl.constexpr):
    """Columns of one dy row summed into input columns j = j0 + arange(BLOCK_P):
    1/4 dy[2j - 1] + 3/4 dy[2j] + 3/4 dy[2j + 1] + 1/4 dy[2j + 2], the indices clamped to
    [0, 2W) (which gives the border columns PyTorch's weights: dx[0] takes dy[0] with weight
    1, dx[W - 1] dy[2W - 1]); dy[2j], dy[2j + 1] from one load of 2 BLOCK_P columns, split.
    ``c_ok`` [BLOCK_C, 1]: the channels that exist."""
    j = j0 + tl.arange(0, BLOCK_P)
    pairs = 2 * j0 + tl.arange(0, 2 * BLOCK_P)
    both = tl.load(row_ptr + pairs.to(tl.int64)[None, :] * sdyw,
                   mask=c_ok & (pairs < 2 * W)[None, :], other=0.0).to(tl.float32)
    even, odd = tl.split(tl.reshape(both, [both.shape[0], BLOCK_P, 2]))
    cols = j.to(tl.int64)[None, :] * (2 * sdyw)
    left = tl.load(row_ptr + cols - sdyw, mask=c_ok & ((j >= 1) & (j <= W))[None, :],
                   other=0.0).to(tl.float32)
    right = tl.load(row_ptr + cols + 2 * sdyw, mask=c_ok & (j + 1 < W)[None, :],
                    other=0.0).to(tl.float32)
    left = tl.where((j == 0)[None, :], even, left)
    right = tl.where((j == W - 1)[None, :], odd, right)
    return 0.25 * (left + right) + 0.75 * (even + odd)


@triton.jit
def _upsample2x_bwd_kernel(DY, DX, C, H, W, n_px, sdyb, sdyc, sdyh, sdyw, sdxb, sdxc, sdxh, sdxw,
                           BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    tile = pid % n_px
    row = pid // n_px  # b * H + iy
    b = (row // H).to(tl.int64)
    iy = row % H
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    ix = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = (c < C)[:, None]
    base = DY + b * sdyb + c[:, None] * sdyc
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    # dy rows 2 iy - 1 .. 2 iy + 2 with weights 1/4, 3/4, 3/4, 1/4, clamped to [0, 2H) as
    # the columns are (_bwd_row)
    for a in tl.static_range(4):
        oy = tl.minimum(tl.maximum(2 * iy + a - 1, 0), 2 * H - 1)
        w = 0.75 if a == 1 or a == 2 else 0.25
        acc += w * _bwd_row(base + oy.to(tl.int64) * sdyh, tile * BLOCK_P, c_ok, W, sdyw,
                            BLOCK_P)
    tl.store(DX + b * sdxb + c[:, None] * sdxc + iy.to(tl.int64) * sdxh
             + ix.to(tl.int64)[None, :] * sdxw, acc.to(DX.dtype.element_ty),
             mask=c_ok & (ix < W)[None, :])


def _blocks(t: torch.Tensor, width: int, elements: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of ``elements``, oriented along t's contiguous dimension: up to
    128 pixels of a row when W has stride 1 (NCHW), else up to 128 channels."""
    C = t.shape[1]
    if t.stride(3) == 1 or C == 1:
        block_p = min(128, next_pow2(width))
        return min(next_pow2(C), max(1, elements // block_p)), block_p
    block_c = min(128, next_pow2(C))
    return block_c, min(next_pow2(width), max(1, elements // block_c))


# elements per program: 1024 forward, 512 backward (its 16-tap form of 2026-11-26 took 80
# registers at bf16 for sm_90 and 255 + spills at 2048; the current one 54 at 512)
FWD_ELEMENTS, BWD_ELEMENTS = 1024, 512


def _empty(shape, device, dtype, channels_last: bool) -> torch.Tensor:
    """An empty tensor of ``shape``, channels-last or contiguous."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, device=device, dtype=dtype, memory_format=fmt)


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether t is channels-last (and not also plainly contiguous)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def reasons(tensors, params: dict) -> list[str]:
    """Why the kernels cannot upsample ``[x]`` (empty: they can)."""
    (x,) = tensors
    why = []
    if x.dtype not in DTYPES:
        why.append(f"dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    if x.dim() != 4:
        why.append(f"expected x [B, C, H, W], got {tuple(x.shape)}")
    elif x.numel() == 0:
        why.append("empty input")
    return why


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] -> bilinear x2 upsampling [B, C, 2H, 2W] (align_corners=False), in
    x's dtype and memory format (channels-last or contiguous)."""
    B, C, H, W = x.shape
    y = _empty((B, C, 2 * H, 2 * W), x.device, x.dtype, is_channels_last(x))
    block_c, block_p = _blocks(y, 2 * W, FWD_ELEMENTS)
    n_px = cdiv(2 * W, block_p)
    with on_device(x):
        _upsample2x_fwd_kernel[(B * 2 * H * n_px, cdiv(C, block_c))](
            x, y, C, H, W, n_px, *x.stride(), *y.stride(), BLOCK_C=block_c, BLOCK_P=block_p,
            num_warps=4)
    return y


def upsample2x_backward(dy: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Gradient [B, C, H, W] of :func:`upsample2x` for the upstream gradient dy
    [B, C, 2H, 2W] (even sizes), in ``dtype``, channels-last or contiguous."""
    B, C, H2, W2 = dy.shape
    H, W = H2 // 2, W2 // 2
    dx = _empty((B, C, H, W), dy.device, dtype, channels_last)
    block_c, block_p = _blocks(dx, W, BWD_ELEMENTS)
    n_px = cdiv(W, block_p)
    with on_device(dy):
        _upsample2x_bwd_kernel[(B * H * n_px, cdiv(C, block_c))](
            dy, dx, C, H, W, n_px, *dy.stride(), *dx.stride(), BLOCK_C=block_c,
            BLOCK_P=block_p, num_warps=4)
    return dx
