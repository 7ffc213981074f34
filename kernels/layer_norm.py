"""LayerNorm over the last dimension in Triton, forward and backward, many rows per program.

What it computes: ``F.layer_norm(x, (C,), weight, bias, eps)`` on x [M, C] (the token maps
of a Swin stage flattened), in fp32 whatever the input dtype, with the output in
``out_dtype`` (fp32 under CUDA autocast, whose policy runs layer_norm in fp32; else x's):
    mean = sum(x) / C,  var = sum((x - mean)^2) / C (biased, two passes over the row in
    registers),  rstd = 1 / sqrt(var + eps),  y = (x - mean) rstd w + b.
Why: PyTorch's kernel gives each row its own thread block, so the C = 96..1536 rows of
Swin leave most threads idle: in a SeMask-T training step (512, batch 16, H200, 2026-11-26)
its 36 forward calls took 4.3 ms and the backward 5.5 ms, where their fp32 HBM traffic
(8 bytes per element forward, 12 backward, 0.4 G elements) takes ~0.7 ms and ~1.0 ms.

Zero padding (``pad_multiple``, x [B, H, W, C]): y is the [B, Hp, Wp, C] map padded on the
right/bottom to multiples of it, pad tokens 0 (what the official Swin feeds its qkv
projection), written by the same kernel, so no pad copy (nor its backward's crop copy)
exists; the backward reads dy of that shape at the unpadded tokens. Without padding the
rows are one image of 1 x M tokens.

``_ln_fwd_kernel``, grid (cdiv(Mp, BLOCK_M),) over the Mp output rows: a program owns
BLOCK_M whole rows (BLOCK_C = next power of two >= C, masked), reads each one's source row
(none for a pad row) and stores y and the fp32 mean and rstd of each source row.
The padded map's rows and the unpadded ones are related by int32 divisions (PADDED; without
padding none). ``_ln_bwd_kernel``, grid (at most ``BWD_PROGRAMS``,), loops over consecutive
blocks of the M source rows (a software pipeline of ``NUM_STAGES``), recomputing
xhat = (x - mean) rstd from the saved statistics:
    g = dy w,  dx = rstd (g - xhat mean(g xhat) - mean(g))   (per row),
stores dx and keeps its column sums of dy xhat (dw) and dy (db) in registers, stored at the
end as one row of an fp32 [programs, 2, C] buffer, summed over programs afterwards
(deterministic, no atomics).

Limits: fp32, fp16, bf16 x; fp32/fp16/bf16 weight and bias (read as fp32); C <= 8192;
fewer than 2^30 rows (int32 row arithmetic); contiguous rows; int64 element offsets.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import cdiv, next_pow2, on_device, row_block

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_C = 8192
TILE_ELEMENTS = 2048  # BLOCK_M * BLOCK_C of a program: 16 fp32 per thread on 4 warps
BWD_PROGRAMS = 1024  # backward programs at most (rows of the dw/db partial sums)
# The backward's loop over a program's row blocks as a software pipeline of this depth
# (loads of the next blocks in flight, cp.async on sm_90: 12 async copies, 118-138
# registers against 96-114 unpipelined; ptxas, Triton 3.8, C 96 and 384). Not timed yet.
NUM_STAGES = 3


@triton.jit
def _map_rows(rows, H, W, Hp, Wp, PADDED: tl.constexpr):
    """Rows (b Hp + y) Wp + x of the padded map of rows (b H + y) W + x of the unpadded one
    (identity when not PADDED). Divides in int32 (rows < 2^31: ``reasons``), which costs a
    fraction of int64 division."""
    if PADDED:
        r = rows.to(tl.int32)
        image = r // (H * W)
        y_x = r - image * (H * W)
        y = y_x // W
        return ((image * Hp + y) * Wp + (y_x - y * W)).to(tl.int64)
    else:
        return rows


@triton.jit
def _source_rows(out_rows, H, W, Hp, Wp, PADDED: tl.constexpr):
    """Source row (b H + y) W + x of output rows (b Hp + y) Wp + x, and whether it has one
    (y < H and x < W; else a pad row); identity when not PADDED. int32 divisions."""
    if PADDED:
        r = out_rows.to(tl.int32)
        b = r // (Hp * Wp)
        y_x = r - b * (Hp * Wp)
        y = y_x // Wp
        x = y_x - y * Wp
        return ((b * H + y) * W + x).to(tl.int64), (y < H) & (x < W)
    else:
        return out_rows, out_rows >= 0


@triton.jit
def _ln_fwd_kernel(X, WEIGHT, BIAS, Y, MEAN, RSTD, Mp, C, H, W, Hp, Wp, eps,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PADDED: tl.constexpr):
    out_rows, cols, out_mask, out_offs = row_block(tl.program_id(0), Mp, C, BLOCK_M, BLOCK_C)
    rows, has_source = _source_rows(out_rows, H, W, Hp, Wp, PADDED)
    valid = has_source & (out_rows < Mp)
    mask = valid[:, None] & (cols < C)[None, :]
    x = tl.load(X + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / C + eps)
    w = tl.load(WEIGHT + cols, mask=cols < C, other=0.0).to(tl.float32)
    b = tl.load(BIAS + cols, mask=cols < C, other=0.0).to(tl.float32)
    y = tl.where(mask, xc * rstd[:, None] * w[None, :] + b[None, :], 0.0)  # pad rows: 0
    tl.store(Y + out_offs, y.to(Y.dtype.element_ty), mask=out_mask)
    tl.store(MEAN + rows, mean, mask=valid)
    tl.store(RSTD + rows, rstd, mask=valid)


@triton.jit
def _ln_bwd_kernel(DY, X, WEIGHT, MEAN, RSTD, DX, PART, M, C, H, W, Hp, Wp, blocks_per_program,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PADDED: tl.constexpr,
                   NUM_STAGES: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    w = tl.load(WEIGHT + cols, mask=cols < C, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)  # summed over rows after the loop
    db = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for i in tl.range(blocks_per_program, num_stages=NUM_STAGES):
        rows, cols, mask, offs = row_block(pid * blocks_per_program + i, M, C, BLOCK_M, BLOCK_C)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy_rows = _map_rows(rows, H, W, Hp, Wp, PADDED)  # dy's row of each source row
        dy = tl.load(DY + dy_rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rows < M, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rows < M, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, 1) / C
        c2 = tl.sum(g, 1) / C
        dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    part = PART + pid.to(tl.int64) * 2 * C + cols
    tl.store(part, tl.sum(dw, 0), mask=cols < C)
    tl.store(part + C, tl.sum(db, 0), mask=cols < C)


def reasons(tensors, params: dict) -> list[str]:
    """Why these kernels cannot normalise ``[x, weight, bias]`` (empty: they can)."""
    x, weight, bias = tensors
    why = []
    if x.dtype not in DTYPES:
        why.append(f"dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    if weight is None or bias is None:
        why.append("needs weight and bias (elementwise_affine)")
    elif weight.dtype not in DTYPES or bias.dtype not in DTYPES:
        why.append("weight and bias must be float32, float16 or bfloat16")
    elif weight.dim() != 1 or bias.dim() != 1 or not (
            weight.shape[0] == bias.shape[0] == x.shape[-1]):
        why.append(f"weight and bias must be [{x.shape[-1]}] (x's last dimension), got "
                   f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    elif weight.device != x.device or bias.device != x.device:
        why.append("x, weight and bias must be on one device")
    if not 1 <= x.shape[-1] <= MAX_C:
        why.append(f"rows of {x.shape[-1]} (1..{MAX_C})")
    if x.numel() == 0:
        why.append("empty input")
    elif x.numel() // x.shape[-1] >= 2**30:  # padded rows stay < 2^31 for the int32 divisions
        why.append(f"{x.numel() // x.shape[-1]} rows (the kernels take fewer than 2^30)")
    return why


def _config(C: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps) of a row length C. Not tuned on a GPU yet; for sm_90
    ptxas gives the backward at C = 96 228 registers on 32 x 128 tiles (2 blocks per SM),
    128 on 16 x 128, hence the 2048-element tiles."""
    block_c = next_pow2(C)
    return max(1, TILE_ELEMENTS // block_c), block_c, 4 if block_c <= 1024 else 8


def _maps(x: torch.Tensor, y_shape) -> tuple[int, int, int, int]:
    """(H, W, Hp, Wp) of x [B, H, W, C] and y [B, Hp, Wp, C], or of one image of 1 x M rows
    when y has x's shape."""
    if tuple(y_shape) == tuple(x.shape):
        M = x.numel() // x.shape[-1]
        return 1, M, 1, M
    return x.shape[1], x.shape[2], y_shape[1], y_shape[2]


def padded_shape(x: torch.Tensor, pad_multiple: int) -> tuple:
    """x [B, H, W, C] -> [B, Hp, Wp, C] with Hp, Wp the multiples of ``pad_multiple`` (x's
    shape when 0)."""
    if not pad_multiple:
        return tuple(x.shape)
    B, H, W, C = x.shape
    return B, -(-H // pad_multiple) * pad_multiple, -(-W // pad_multiple) * pad_multiple, C


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
            out_dtype: torch.dtype, pad_multiple: int = 0):
    """x [..., C] (contiguous) -> (y [..., C] in out_dtype, mean, rstd float32 [M]); with
    ``pad_multiple``, x [B, H, W, C] -> y [B, Hp, Wp, C] zero-padded to its multiples."""
    C = x.shape[-1]
    M = x.numel() // C
    block_m, block_c, num_warps = _config(C)
    shape = padded_shape(x, pad_multiple)
    Mp = math.prod(shape[:-1])
    if Mp >= 2**31:  # reasons() bounds the unpadded rows; padding a thin map multiplies them
        raise ValueError(f"layer_norm: {Mp} padded rows (the kernels take fewer than 2^31)")
    y = torch.empty(shape, device=x.device, dtype=out_dtype)
    mean = torch.empty(M, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    with on_device(x):
        _ln_fwd_kernel[(cdiv(Mp, block_m),)](
            x, weight, bias, y, mean, rstd, Mp, C, *_maps(x, y.shape), eps, BLOCK_M=block_m,
            BLOCK_C=block_c, PADDED=y.shape != x.shape, num_warps=num_warps)
    return y, mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
             rstd: torch.Tensor):
    """Gradients of :func:`forward`: dy like y (padded or not) -> (dx like x, dweight
    float32 [C], dbias float32 [C])."""
    C = x.shape[-1]
    M = x.numel() // C
    block_m, block_c, num_warps = _config(C)
    blocks = cdiv(M, block_m)
    per_program = cdiv(blocks, min(blocks, BWD_PROGRAMS))
    programs = cdiv(blocks, per_program)
    dx = torch.empty_like(x)
    part = torch.empty(programs, 2, C, device=x.device, dtype=torch.float32)
    with on_device(x):
        _ln_bwd_kernel[(programs,)](
            dy.contiguous(), x, weight, mean, rstd, dx, part, M, C, *_maps(x, dy.shape), per_program,
            BLOCK_M=block_m, BLOCK_C=block_c, PADDED=dy.shape != x.shape, NUM_STAGES=NUM_STAGES,
            num_warps=num_warps)
    dweight, dbias = part.sum(0)
    return dx, dweight, dbias
