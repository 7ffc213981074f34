"""Fused (shifted) window attention of Swin in Triton: forward and backward.

What it computes (``semask.ops.reference.window_attention_reference``)
    qkv   [B, Hp, Wp, 3C]  output of the qkv Linear on the zero-padded map (Hp, Wp multiples
                           of the window w), channel = which * C + head * D + d
    table [(2w-1)^2, heads] relative position bias table (any float dtype, read as fp32)
    out   [B, H, W, C]     in qkv's dtype, natural (unshifted) positions, cropped to the
                           unpadded map (H <= Hp, W <= Wp; the forward's ``height``,
                           ``width``): padded tokens take part in attention as keys, but
                           their outputs are never stored, and their dout rows read as 0
    lse   [B, nW, heads, N] float32 log-sum-exp of every score row (N = w*w, windows
                           row-major over the shifted map, tokens row-major in a window)
    scores = scale * q k^T + table[index(i, j), head] + mask(i, j),  out = softmax(scores) v.
Everything the reference does with tensors is address arithmetic here (``_window_tokens``,
``_out_rows``): the cyclic shift by -shift and its reverse (token (r, c) of the shifted map
lives at ((r + s) % Hp, (c + s) % Wp) of qkv and of the padded map), the window partition
and reverse, the crop of out to the unpadded map, the relative position index (``_bias``,
from token coordinates as in Liu et al. 2021) and the shift mask (-100 between the 3x3
regions of ``shift_region_labels``: row bands split at Hp - w and Hp - s, column bands at
Wp - w and Wp - s; only the windows on the last window row or column of the shifted map
span several regions, so only they compute it, from per-token bits hoisted out of the
window loop: ``_scores``). No roll, pad, crop, partition, index or mask tensor is made. Dots
accumulate in fp32; fp32 inputs use ``input_precision="ieee"`` (no TF32) so they match the
fp32 reference to ~1e-6; fp16/bf16 round P and dS to the input dtype before their dots, as
flash attention does.

Tiles. A program owns BLOCK_M query rows of a window and always the whole key range, so the
softmax is one pass (no online rescaling) and lse is exact. The N keys are a head tile of
BLOCK_N (a power of two) plus, where that pads less than one power-of-two tile, a tail
tile of BLOCK_N2 (TAIL; ``common.head_tail``), every row max, sum and product taken over
both. ``_config`` (``_CONFIG``, fp32: ``_CONFIG_FP32``; chosen from ``ptxas -v`` for sm_90
and the TTGIR layouts: no warps repeating each other's tiles, at most a few dozen bytes of
spills, wgmma where it fits; w = 7 half precision also from timings):
    w = 7,  N = 49:  keys 64 (1.31x); BLOCK_M = 64 (whole window), 4 warps; fp32
                     backward 32 rows, 8 warps.
    w = 12, N = 144: keys 128 + 16 (exact; one 256 tile padded 1.78x and spilled);
                     forward BLOCK_M = 64, 4 warps: rows 64 + 64 on wgmma and the last 16
                     as a 16-row tile (ROW_TAIL, ``common.row_tail``; exact, where three 64-row
                     blocks computed 1.33x the rows; fp32 32 + 32 + 32 + 32 + 16 rows, 8
                     warps); backward BLOCK_M = 16, 4 warps (9 blocks, exact;
                     mma.sync: 32 and 64 rows spill the persistent bias, dS-sum and index
                     tiles by 0.2-1 KB), fp32 8 warps.
Warps: for a chained dot (q k^T feeding P v) Triton puts every warp along the rows on
sm_90 (wgmma, and mma.sync when the tile is at least as tall as wide), so more than
BLOCK_M / 16 warps would hold the same score tiles twice and repeat their work. fp32 (ieee
dots on FMA units, no MMA layout) is not bound by this.
Other windows up to 16: one block of the next power of two >= N rows (16..64), a warp per
16 rows, when the key tiles are <= 64 wide; else 16-row blocks on 4 warps (w = 15: the
backward spills ~0.2 KB; 8 warps would not, but would hold the 16 x 32 dq tiles twice).

Grid: 1D, program id = (window group, query block, head) with the head fastest, so the
heads of a window, which share every 3C-channel row of qkv, run side by side. A program
loops over ``windows_per_program`` consecutive windows (the last group is masked); the bias
tile depends only on (i, j, head), so it is gathered once per program.

Backward, flash-attention style (Dao 2023, Alg. 2), recomputing P = exp(scores - lse) from
q, k and the saved lse:
    dP = dO v^T,  D = rowsum(P * dP),  dS = P * (dP - D),
    dq = scale dS k,  dk = scale dS^T q,  dv = P^T dO,
    dtable[index(i, j), head] += sum over batch and windows of dS(i, j).
D equals flash attention's rowsum(dO * O) (since O = P v); as a program holds whole score
rows it is taken from P and dP in fp32, so the rounding of a fp16/bf16 ``out`` never enters
dS (``out`` is not read). The recomputed P is divided by its row sum (which the exact P has
equal to 1): lse, stored in natural units and taken back to log2 units, is off by up to
~1e-4 per row in fp32 at lse ~400, and through D a row-wide error of P enters dq and dk many
times over (16x the fp32 reference's error at score std ~100 before this).
``_window_bwd_dq_kernel`` (query rows x all keys) writes dq straight into
dqkv at the shifted positions and sums dS over its windows in registers, then adds that
tile to an fp32 [(2w-1)^2, heads] buffer with one masked ``tl.atomic_add`` per program
(duplicate indices inside the tile are summed by the atomics), cast to the table's dtype at
the end. When one query block covers the window (w = 7 in half precision) it also writes dk and dv;
otherwise it stores D and log2 of the row sums (fp32, lse's layout) and
``_window_bwd_dkdv_kernel`` (key rows x all queries, the transposed tile; P normalised as
the dq kernel's) writes dk and dv. The atomics make dtable's last bits depend
on the order of programs.

Limits: head_dim in {16, 32, 64}; window <= 16 (N <= 256); qkv fp32/fp16/bf16, table
fp32/fp16/bf16; contiguous inputs; int64 addressing of the maps. Under the CPU interpreter
bf16 dot operands are widened to fp32 first (``common.dot``: the interpreter of Triton 3.8
multiplies the raw bits of bf16), which gives the products a GPU's bf16 MMA gives.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .common import alert_not_deterministic, cdiv, dot, head_tail, next_pow2, on_device, row_tail

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 64)
MAX_WINDOW = 16  # N = 256 keys: the widest key tile kept in registers
MASK_VALUE = -100.0  # official Swin shift mask value
LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the constants kernels read (globals must be constexpr)
_LN2 = tl.constexpr(0.6931471805599453)
_MASK_LOG2 = tl.constexpr(MASK_VALUE * LOG2E)

DIRECTIONS = ("fwd", "bwd")
# Per window, ((BLOCK_M, num_warps) forward, (BLOCK_M, num_warps) backward); see _config.
_CONFIG = {7: ((64, 4), (64, 4)), 12: ((64, 4), (16, 4))}
_CONFIG_FP32 = {7: ((64, 4), (32, 8)), 12: ((32, 8), (16, 8))}
# Programs per SM that the window grouping aims at (forward, backward): 4 and 4 were the
# fastest for w = 7 at every Swin-T 512 stage on an H200 (benchmarks/sweep.py, 2026-11-26:
# backward 1.34-1.66x, forward 1.0-1.19x over the earlier 16 and 8); w = 12 not swept yet.
_PROGRAMS_PER_SM = (4, 4)


@triton.jit
def _window_tokens(wid, tok, nW, nWw, Hp, Wp, shift, WINDOW: tl.constexpr, SHIFTED: tl.constexpr):
    """Image b, row y, column x and map row (int64, b*Hp*Wp + y*Wp + x) in the natural map
    of token ``tok`` of window ``wid`` of the shifted map."""
    b = wid // nW
    wi = wid % nW
    y = (wi // nWw) * WINDOW + tok // WINDOW  # position in the shifted map
    x = (wi % nWw) * WINDOW + tok % WINDOW
    if SHIFTED:
        y = y + shift
        y = tl.where(y >= Hp, y - Hp, y)
        x = x + shift
        x = tl.where(x >= Wp, x - Wp, x)
    return b, y, x, (b.to(tl.int64) * Hp + y) * Wp + x


@triton.jit
def _window_rows(wid, tok, nW, nWw, Hp, Wp, shift, WINDOW: tl.constexpr, SHIFTED: tl.constexpr):
    """The map rows alone of :func:`_window_tokens`."""
    b, y, x, rows = _window_tokens(wid, tok, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
    return rows


@triton.jit
def _region_bits(tok, shift, WINDOW: tl.constexpr):
    """Per token of a window: whether its row / column inside the window is one of the
    last ``shift`` (the bits that tell its shift region apart in edge windows)."""
    return tok // WINDOW >= WINDOW - shift, tok % WINDOW >= WINDOW - shift


@triton.jit
def _window_edges(wid, nW, nWw, Hp, WINDOW: tl.constexpr):
    """Whether window ``wid`` lies on the last window row / column of the shifted map: the
    only windows whose tokens fall in different shift regions."""
    wi = wid % nW
    return (wi // nWw) == Hp // WINDOW - 1, (wi % nWw) == nWw - 1


@triton.jit
def _out_rows(b, y, x, H, W):
    """Rows (int64) of tokens (b, y, x) in the cropped [B, H, W] out map, and whether each
    lies inside it (y < H, x < W). From the coordinates, not by dividing a map row (int64
    divisions made de8469d's forward 1.6-1.8x slower on an H200 than 60040ca's)."""
    return (b.to(tl.int64) * H + y) * W + x, (y < H) & (x < W)


@triton.jit
def _bias(table, qi, kj, ok, h, HEADS: tl.constexpr, WINDOW: tl.constexpr):
    """Bias of query tokens qi and key tokens kj (broadcast against each other) in log2 units,
    0 where not ``ok``, and its offsets in the table. The relative position index is query
    minus key, as in Swin (Liu et al. 2021)."""
    index = ((qi // WINDOW - kj // WINDOW + WINDOW - 1) * (2 * WINDOW - 1)
             + (qi % WINDOW - kj % WINDOW + WINDOW - 1)) * HEADS + h
    return tl.load(table + index, mask=ok, other=0.0).to(tl.float32) * _LOG2E, index


@triton.jit
def _head_rows(X, rows, ok, col0, STRIDE: tl.constexpr, h, HEAD_DIM: tl.constexpr):
    """X[rows, col0 + h*HEAD_DIM : +HEAD_DIM] of a row-major [*, STRIDE] map (0 where not ok)."""
    d = tl.arange(0, HEAD_DIM)
    return tl.load(X + rows[:, None] * STRIDE + col0 + h * HEAD_DIM + d[None, :],
                   mask=ok[:, None], other=0.0)


@triton.jit
def _store_head_rows(X, x, rows, ok, col0, STRIDE: tl.constexpr, h, HEAD_DIM: tl.constexpr):
    """X[rows, col0 + h*HEAD_DIM : +HEAD_DIM] = x, in X's dtype."""
    d = tl.arange(0, HEAD_DIM)
    tl.store(X + rows[:, None] * STRIDE + col0 + h * HEAD_DIM + d[None, :],
             x.to(X.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _scores(a, b, bias, a_y, a_x, b_y, b_x, ey, ex, scale_log2, SHIFTED: tl.constexpr,
            DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """scale a b^T + bias in log2 units, plus the shift mask between tokens of different
    regions (the mask is symmetric, so this serves query-major and key-major tiles).
    Regions (``shift_region_labels``: row bands split at Hp - w and Hp - s, columns alike,
    Hp a multiple of w, 0 < s < w) differ only inside windows on the last window row or
    column (ey, ex: :func:`_window_edges`), and there by the tokens' row (ey) or column (ex)
    bits (a_y, a_x of a's tokens, b_y, b_x of b's: :func:`_region_bits`): other windows,
    most of them, skip the mask."""
    s = dot(a, tl.trans(b), DOT_PREC, UPCAST) * scale_log2 + bias
    if SHIFTED:
        if ey | ex:
            other = ((a_y[:, None] != b_y[None, :]) & ey) | ((a_x[:, None] != b_x[None, :]) & ex)
            s = tl.where(other, s + _MASK_LOG2, s)
    return s


@triton.jit
def _window_fwd_rows(qkv, table, out, lse, scale_log2, n_windows, nW, nWw, Hp, Wp, H, W, shift,
                     wpp, h, group, row0, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_N2: tl.constexpr, TAIL: tl.constexpr, SHIFTED: tl.constexpr,
                     DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Forward of query rows row0 .. row0 + BLOCK_M of head h in the windows of a group."""
    N: tl.constexpr = WINDOW * WINDOW
    C: tl.constexpr = HEADS * HEAD_DIM
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < N
    bias, _ = _bias(table, rows[:, None], cols[None, :], row_ok[:, None] & col_ok[None, :],
                    h, HEADS, WINDOW)
    bias = tl.where(col_ok[None, :], bias, float("-inf"))
    q_y, q_x = _region_bits(rows, shift, WINDOW)
    k_y, k_x = _region_bits(cols, shift, WINDOW)
    if TAIL:
        cols2 = BLOCK_N + tl.arange(0, BLOCK_N2)
        col2_ok = cols2 < N
        bias2, _ = _bias(table, rows[:, None], cols2[None, :], row_ok[:, None] & col2_ok[None, :],
                         h, HEADS, WINDOW)
        bias2 = tl.where(col2_ok[None, :], bias2, float("-inf"))
        k2_y, k2_x = _region_bits(cols2, shift, WINDOW)
    for t in range(wpp):
        wid = group * wpp + t
        live = wid < n_windows
        ey, ex = _window_edges(wid, nW, nWw, Hp, WINDOW)
        b, q_r, q_c, q_rows = _window_tokens(wid, rows, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        k_rows = _window_rows(wid, cols, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        q_ok = row_ok & live
        q = _head_rows(qkv, q_rows, q_ok, 0, 3 * C, h, HEAD_DIM)
        k = _head_rows(qkv, k_rows, col_ok & live, C, 3 * C, h, HEAD_DIM)
        v = _head_rows(qkv, k_rows, col_ok & live, 2 * C, 3 * C, h, HEAD_DIM)
        s = _scores(q, k, bias, q_y, q_x, k_y, k_x, ey, ex, scale_log2, SHIFTED, DOT_PREC, UPCAST)
        m = tl.max(s, 1)
        if TAIL:
            k2_rows = _window_rows(wid, cols2, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
            k2 = _head_rows(qkv, k2_rows, col2_ok & live, C, 3 * C, h, HEAD_DIM)
            v2 = _head_rows(qkv, k2_rows, col2_ok & live, 2 * C, 3 * C, h, HEAD_DIM)
            s2 = _scores(q, k2, bias2, q_y, q_x, k2_y, k2_x, ey, ex, scale_log2, SHIFTED, DOT_PREC,
                         UPCAST)
            m = tl.maximum(m, tl.max(s2, 1))
        p = tl.exp2(s - m[:, None])
        l = tl.sum(p, 1)
        o = dot(p.to(v.dtype), v, DOT_PREC, UPCAST)
        if TAIL:
            p2 = tl.exp2(s2 - m[:, None])
            l += tl.sum(p2, 1)
            o += dot(p2.to(v2.dtype), v2, DOT_PREC, UPCAST)
        q_out, q_in = _out_rows(b, q_r, q_c, H, W)
        _store_head_rows(out, o / l[:, None], q_out, q_ok & q_in, 0, C, h, HEAD_DIM)
        lse_rows = (wid.to(tl.int64) * HEADS + h) * N + rows
        tl.store(lse + lse_rows, (m + tl.log2(l)) * _LN2, mask=q_ok)


@triton.jit
def _window_fwd_kernel(qkv, table, out, lse, scale_log2, n_windows, nW, nWw, Hp, Wp, H, W, shift,
                       wpp, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_M2: tl.constexpr, ROW_TAIL: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr, TAIL: tl.constexpr,
                       NUM_QB: tl.constexpr, SHIFTED: tl.constexpr, DOT_PREC: tl.constexpr,
                       UPCAST: tl.constexpr):
    """Query blocks of BLOCK_M rows; with ROW_TAIL the last block holds only BLOCK_M2."""
    pid = tl.program_id(0)
    h = pid % HEADS
    qb = (pid // HEADS) % NUM_QB
    group = pid // (HEADS * NUM_QB)
    row0 = qb * BLOCK_M
    if ROW_TAIL:
        if qb == NUM_QB - 1:
            _window_fwd_rows(qkv, table, out, lse, scale_log2, n_windows, nW, nWw, Hp, Wp, H, W,
                             shift, wpp, h, group, row0, HEADS, HEAD_DIM, WINDOW, BLOCK_M2, BLOCK_N,
                             BLOCK_N2, TAIL, SHIFTED, DOT_PREC, UPCAST)
        else:
            _window_fwd_rows(qkv, table, out, lse, scale_log2, n_windows, nW, nWw, Hp, Wp, H, W,
                             shift, wpp, h, group, row0, HEADS, HEAD_DIM, WINDOW, BLOCK_M, BLOCK_N,
                             BLOCK_N2, TAIL, SHIFTED, DOT_PREC, UPCAST)
    else:
        _window_fwd_rows(qkv, table, out, lse, scale_log2, n_windows, nW, nWw, Hp, Wp, H, W,
                         shift, wpp, h, group, row0, HEADS, HEAD_DIM, WINDOW, BLOCK_M, BLOCK_N,
                         BLOCK_N2, TAIL, SHIFTED, DOT_PREC, UPCAST)


@triton.jit
def _probs(q, k, v, do, bias, q_y, q_x, k_y, k_x, ey, ex, row_lse, ok, scale_log2,
           SHIFTED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """P = exp(scores - lse) (0 where not ok) and dP = dO v^T of a query x key tile, fp32."""
    s = _scores(q, k, bias, q_y, q_x, k_y, k_x, ey, ex, scale_log2, SHIFTED, DOT_PREC, UPCAST)
    p = tl.where(ok, tl.exp2(s - row_lse[:, None] * _LOG2E), 0.0)
    return p, dot(do, tl.trans(v), DOT_PREC, UPCAST)


@triton.jit
def _window_bwd_dq_kernel(dout, qkv, table, lse, delta, norm, dqkv, dtable, scale, scale_log2,
                          n_windows, nW, nWw, Hp, Wp, H, W, shift, wpp,
                          HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr,
                          TAIL: tl.constexpr, NUM_QB: tl.constexpr, SHIFTED: tl.constexpr,
                          WITH_DKDV: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Query rows x all keys: dq, the bias-table gradient and (WITH_DKDV) dk, dv, else the
    row sums D for ``_window_bwd_dkdv_kernel``."""
    N: tl.constexpr = WINDOW * WINDOW
    C: tl.constexpr = HEADS * HEAD_DIM
    pid = tl.program_id(0)
    h = pid % HEADS
    qb = (pid // HEADS) % NUM_QB
    group = pid // (HEADS * NUM_QB)
    rows = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < N
    tile_ok = row_ok[:, None] & col_ok[None, :]
    bias, index = _bias(table, rows[:, None], cols[None, :], tile_ok, h, HEADS, WINDOW)
    dbias = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if TAIL:
        cols2 = BLOCK_N + tl.arange(0, BLOCK_N2)
        col2_ok = cols2 < N
        tile2_ok = row_ok[:, None] & col2_ok[None, :]
        bias2, index2 = _bias(table, rows[:, None], cols2[None, :], tile2_ok, h, HEADS, WINDOW)
        dbias2 = tl.zeros((BLOCK_M, BLOCK_N2), dtype=tl.float32)
        k2_y, k2_x = _region_bits(cols2, shift, WINDOW)
    q_y, q_x = _region_bits(rows, shift, WINDOW)
    k_y, k_x = _region_bits(cols, shift, WINDOW)
    for t in range(wpp):
        wid = group * wpp + t
        live = wid < n_windows
        ey, ex = _window_edges(wid, nW, nWw, Hp, WINDOW)
        b, q_r, q_c, q_rows = _window_tokens(wid, rows, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        k_rows = _window_rows(wid, cols, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        q_ok = row_ok & live
        k_ok = col_ok & live
        q = _head_rows(qkv, q_rows, q_ok, 0, 3 * C, h, HEAD_DIM)
        q_out, q_in = _out_rows(b, q_r, q_c, H, W)
        do = _head_rows(dout, q_out, q_ok & q_in, 0, C, h, HEAD_DIM)  # 0 on padded rows
        k = _head_rows(qkv, k_rows, k_ok, C, 3 * C, h, HEAD_DIM)
        v = _head_rows(qkv, k_rows, k_ok, 2 * C, 3 * C, h, HEAD_DIM)
        stat_rows = (wid.to(tl.int64) * HEADS + h) * N + rows
        row_lse = tl.load(lse + stat_rows, mask=q_ok, other=0.0)
        p, dp = _probs(q, k, v, do, bias, q_y, q_x, k_y, k_x, ey, ex, row_lse,
                       q_ok[:, None] & k_ok[None, :], scale_log2, SHIFTED, DOT_PREC, UPCAST)
        if TAIL:
            k2_rows = _window_rows(wid, cols2, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
            k2_ok = col2_ok & live
            k2 = _head_rows(qkv, k2_rows, k2_ok, C, 3 * C, h, HEAD_DIM)
            v2 = _head_rows(qkv, k2_rows, k2_ok, 2 * C, 3 * C, h, HEAD_DIM)
            p2, dp2 = _probs(q, k2, v2, do, bias2, q_y, q_x, k2_y, k2_x, ey, ex, row_lse,
                             q_ok[:, None] & k2_ok[None, :], scale_log2, SHIFTED, DOT_PREC, UPCAST)
        # P renormalised by its recomputed row sum: lse, stored in natural units and taken
        # back to log2 units, is off by ~1e-4 per row at lse ~400 (fp32), and D below passes
        # a row-wide error of P into dS = P (dP - D) many times over
        row_sum = tl.sum(p, 1)
        if TAIL:
            row_sum += tl.sum(p2, 1)
        row_sum = tl.where(row_sum > 0, row_sum, 1.0)  # rows of padding or masked windows
        p = p / row_sum[:, None]
        row_delta = tl.sum(p * dp, 1)  # = rowsum(dO * O), without O's rounding
        if TAIL:
            p2 = p2 / row_sum[:, None]
            row_delta += tl.sum(p2 * dp2, 1)
        ds = p * (dp - row_delta[:, None])
        dbias += ds
        dq = dot(ds.to(k.dtype), k, DOT_PREC, UPCAST)
        if TAIL:
            ds2 = p2 * (dp2 - row_delta[:, None])
            dbias2 += ds2
            dq += dot(ds2.to(k2.dtype), k2, DOT_PREC, UPCAST)
        _store_head_rows(dqkv, dq * scale, q_rows, q_ok, 0, 3 * C, h, HEAD_DIM)
        if WITH_DKDV:
            dk = dot(tl.trans(ds.to(q.dtype)), q, DOT_PREC, UPCAST) * scale
            dv = dot(tl.trans(p.to(do.dtype)), do, DOT_PREC, UPCAST)
            _store_head_rows(dqkv, dk, k_rows, k_ok, C, 3 * C, h, HEAD_DIM)
            _store_head_rows(dqkv, dv, k_rows, k_ok, 2 * C, 3 * C, h, HEAD_DIM)
            if TAIL:
                dk2 = dot(tl.trans(ds2.to(q.dtype)), q, DOT_PREC, UPCAST) * scale
                dv2 = dot(tl.trans(p2.to(do.dtype)), do, DOT_PREC, UPCAST)
                _store_head_rows(dqkv, dk2, k2_rows, k2_ok, C, 3 * C, h, HEAD_DIM)
                _store_head_rows(dqkv, dv2, k2_rows, k2_ok, 2 * C, 3 * C, h, HEAD_DIM)
        else:
            tl.store(delta + stat_rows, row_delta, mask=q_ok)
            tl.store(norm + stat_rows, tl.log2(row_sum), mask=q_ok)
    tl.atomic_add(dtable + index, dbias, mask=tile_ok)
    if TAIL:
        tl.atomic_add(dtable + index2, dbias2, mask=tile2_ok)


@triton.jit
def _key_grads(k, v, q, do, bias, k_y, k_x, q_y, q_x, ey, ex, col_lse, col_norm, col_delta, ok,
               scale_log2, SHIFTED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Key-major tile (keys x queries): the unscaled dk = dS^T q and dv = P^T dO terms of
    these queries, fp32."""
    s_t = _scores(k, q, bias, k_y, k_x, q_y, q_x, ey, ex, scale_log2, SHIFTED, DOT_PREC, UPCAST)
    # normalised as the dq kernel's P (col_norm: log2 of its recomputed row sums)
    p_t = tl.where(ok, tl.exp2(s_t - col_lse[None, :] * _LOG2E - col_norm[None, :]), 0.0)
    ds_t = p_t * (dot(v, tl.trans(do), DOT_PREC, UPCAST) - col_delta[None, :])
    return dot(ds_t.to(q.dtype), q, DOT_PREC, UPCAST), dot(p_t.to(do.dtype), do, DOT_PREC, UPCAST)


@triton.jit
def _window_bwd_dkdv_kernel(dout, qkv, table, lse, delta, norm, dqkv, scale, scale_log2,
                            n_windows, nW, nWw, Hp, Wp, H, W, shift, wpp,
                            HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr,
                            TAIL: tl.constexpr, NUM_KB: tl.constexpr, SHIFTED: tl.constexpr,
                            DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Key rows x all queries (transposed tiles; queries as a head and a tail tile like the
    keys of the other kernels): dk and dv of windows larger than a block."""
    N: tl.constexpr = WINDOW * WINDOW
    C: tl.constexpr = HEADS * HEAD_DIM
    pid = tl.program_id(0)
    h = pid % HEADS
    kb = (pid // HEADS) % NUM_KB
    group = pid // (HEADS * NUM_KB)
    keys = kb * BLOCK_M + tl.arange(0, BLOCK_M)
    queries = tl.arange(0, BLOCK_N)
    key_ok = keys < N
    query_ok = queries < N
    bias, _ = _bias(table, queries[None, :], keys[:, None], key_ok[:, None] & query_ok[None, :],
                    h, HEADS, WINDOW)
    if TAIL:
        queries2 = BLOCK_N + tl.arange(0, BLOCK_N2)
        query2_ok = queries2 < N
        bias2, _ = _bias(table, queries2[None, :], keys[:, None],
                         key_ok[:, None] & query2_ok[None, :], h, HEADS, WINDOW)
        q2_y, q2_x = _region_bits(queries2, shift, WINDOW)
    k_y, k_x = _region_bits(keys, shift, WINDOW)
    q_y, q_x = _region_bits(queries, shift, WINDOW)
    for t in range(wpp):
        wid = group * wpp + t
        live = wid < n_windows
        stats = (wid.to(tl.int64) * HEADS + h) * N
        ey, ex = _window_edges(wid, nW, nWw, Hp, WINDOW)
        k_rows = _window_rows(wid, keys, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        b, q_r, q_c, q_rows = _window_tokens(wid, queries, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        k_ok = key_ok & live
        q_ok = query_ok & live
        k = _head_rows(qkv, k_rows, k_ok, C, 3 * C, h, HEAD_DIM)
        v = _head_rows(qkv, k_rows, k_ok, 2 * C, 3 * C, h, HEAD_DIM)
        q = _head_rows(qkv, q_rows, q_ok, 0, 3 * C, h, HEAD_DIM)
        q_out, q_in = _out_rows(b, q_r, q_c, H, W)
        do = _head_rows(dout, q_out, q_ok & q_in, 0, C, h, HEAD_DIM)
        dk, dv = _key_grads(k, v, q, do, bias, k_y, k_x, q_y, q_x, ey, ex,
                            tl.load(lse + stats + queries, mask=q_ok, other=0.0),
                            tl.load(norm + stats + queries, mask=q_ok, other=0.0),
                            tl.load(delta + stats + queries, mask=q_ok, other=0.0),
                            k_ok[:, None] & q_ok[None, :], scale_log2, SHIFTED, DOT_PREC, UPCAST)
        if TAIL:
            b, q2_r, q2_c, q2_rows = _window_tokens(wid, queries2, nW, nWw, Hp, Wp, shift, WINDOW,
                                                    SHIFTED)
            q2_ok = query2_ok & live
            q2 = _head_rows(qkv, q2_rows, q2_ok, 0, 3 * C, h, HEAD_DIM)
            q2_out, q2_in = _out_rows(b, q2_r, q2_c, H, W)
            do2 = _head_rows(dout, q2_out, q2_ok & q2_in, 0, C, h, HEAD_DIM)
            dk2, dv2 = _key_grads(k, v, q2, do2, bias2, k_y, k_x, q2_y, q2_x, ey, ex,
                                  tl.load(lse + stats + queries2, mask=q2_ok, other=0.0),
                                  tl.load(norm + stats + queries2, mask=q2_ok, other=0.0),
                                  tl.load(delta + stats + queries2, mask=q2_ok, other=0.0),
                                  k_ok[:, None] & q2_ok[None, :], scale_log2, SHIFTED, DOT_PREC,
                                  UPCAST)
            dk += dk2
            dv += dv2
        _store_head_rows(dqkv, dk * scale, k_rows, k_ok, C, 3 * C, h, HEAD_DIM)
        _store_head_rows(dqkv, dv, k_rows, k_ok, 2 * C, 3 * C, h, HEAD_DIM)


def reasons(tensors, params: dict) -> list[str]:
    """Why these kernels cannot run ``[qkv, table]`` with ``params`` (num_heads, window,
    shift); an empty list means they can."""
    qkv, table = tensors
    heads, window, shift = params["num_heads"], params["window"], params["shift"]
    why = []
    for name, t in (("qkv", qkv), ("table", table)):
        if t.dtype not in DTYPES:
            why.append(f"{name} dtype {t.dtype} is not supported (float32, float16, bfloat16)")
        if not t.is_contiguous():
            why.append(f"{name} must be contiguous")
    if qkv.device != table.device:
        why.append("qkv and table are on different devices")
    if qkv.dim() != 4 or heads < 1 or qkv.shape[-1] % (3 * heads):
        why.append(f"qkv must be [B, Hp, Wp, 3C] with C divisible by num_heads={heads}, "
                   f"got {tuple(qkv.shape)}")
        return why
    head_dim = qkv.shape[-1] // (3 * heads)
    if head_dim not in HEAD_DIMS:
        why.append(f"head_dim {head_dim} is not supported {HEAD_DIMS}")
    if not 1 <= window <= MAX_WINDOW:
        why.append(f"window {window} does not fit the key tile (1..{MAX_WINDOW})")
    elif qkv.shape[1] % window or qkv.shape[2] % window:
        why.append(f"map {tuple(qkv.shape[1:3])} is not a multiple of window {window}")
    if not 0 <= shift < window:
        why.append(f"shift {shift} must lie in [0, window={window})")
    if tuple(table.shape) != ((2 * window - 1) ** 2, heads):
        why.append(f"table must be [{(2 * window - 1) ** 2}, {heads}], got {tuple(table.shape)}")
    if qkv.numel() == 0:
        why.append("empty input")
    return why


def _config(window: int, direction: str, dtype: torch.dtype) -> dict:
    """Tiles and warps of the ``direction`` ("fwd" or "bwd") kernels for a window: BLOCK_M
    query (backward dk/dv: key) rows, the N = w*w keys (queries) as a head tile BLOCK_N plus,
    where that pads less (TAIL), a tail tile BLOCK_N2 (``common.head_tail``), num_warps."""
    head, tail, has_tail = head_tail(window * window)
    width = head + tail * has_tail
    table = _CONFIG_FP32 if dtype == torch.float32 else _CONFIG
    if window in table:
        block_m, warps = table[window][DIRECTIONS.index(direction)]
    else:
        if width <= 64:  # one query block; a warp per 16 rows (see Warps above)
            block_m = min(64, max(16, next_pow2(window * window)))
            warps = block_m // 16
        else:  # 16-row blocks: mma.sync spreads the warps over the keys
            block_m, warps = 16, 4
    return dict(BLOCK_M=block_m, BLOCK_N=head, BLOCK_N2=tail, TAIL=has_tail, num_warps=warps)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _windows_per_program(n_windows: int, programs_per_window: int, device: torch.device,
                         per_sm: int) -> int:
    """Windows a program loops over so that the grid holds about ``per_sm`` programs per SM
    (on the CPU interpreter: as few programs as possible)."""
    slots = 1
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        slots = _sm_count(index) * per_sm
    groups = max(1, min(n_windows, slots // programs_per_window))
    return cdiv(n_windows, groups)


def _geometry(qkv: torch.Tensor, window: int):
    B, Hp, Wp, _ = qkv.shape
    nWw = Wp // window
    nW = (Hp // window) * nWw
    return B * nW, nW, nWw, Hp, Wp


def _dot_flags(qkv: torch.Tensor) -> dict:
    """DOT_PREC: "ieee" for fp32 (no TF32), else unused; UPCAST: bf16 in the interpreter."""
    return dict(DOT_PREC="ieee" if qkv.dtype == torch.float32 else "tf32",
                UPCAST=qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu")


def forward(qkv: torch.Tensor, table: torch.Tensor, num_heads: int, window: int, shift: int,
            scale: float, height: int | None = None, width: int | None = None, *,
            windows_per_program: int | None = None):
    """qkv [B, Hp, Wp, 3C], table [(2w-1)^2, heads] -> (out [B, H, W, C], lse float32
    [B, nW, heads, w*w]); out holds the first H = ``height`` rows and W = ``width`` columns
    of the map (default Hp, Wp: the padded map). ``windows_per_program`` overrides the
    grouping heuristic."""
    n_windows, nW, nWw, Hp, Wp = _geometry(qkv, window)
    H = Hp if height is None else height
    W = Wp if width is None else width
    C = qkv.shape[-1] // 3
    cfg = _config(window, "fwd", qkv.dtype)
    num_qb = cdiv(window * window, cfg["BLOCK_M"])
    cfg.update(row_tail(window * window, cfg["BLOCK_M"]))
    wpp = windows_per_program or _windows_per_program(
        n_windows, num_qb * num_heads, qkv.device, _PROGRAMS_PER_SM[0])
    out = qkv.new_empty(qkv.shape[0], H, W, C)
    lse = torch.empty(qkv.shape[0], nW, num_heads, window * window, device=qkv.device,
                      dtype=torch.float32)
    grid = (cdiv(n_windows, wpp) * num_qb * num_heads,)
    with on_device(qkv):
        _window_fwd_kernel[grid](
            qkv, table, out, lse, scale * LOG2E, n_windows, nW, nWw, Hp, Wp, H, W, shift, wpp,
            HEADS=num_heads, HEAD_DIM=C // num_heads, WINDOW=window, NUM_QB=num_qb,
            SHIFTED=shift > 0, **cfg, **_dot_flags(qkv))
    return out, lse


def backward(dout: torch.Tensor, qkv: torch.Tensor, table: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, num_heads: int, window: int, shift: int, scale: float, *,
             windows_per_program: int | None = None):
    """Gradients of :func:`forward`: dout [B, H, W, C] (out's shape) -> (dqkv like qkv,
    dtable like table). ``out`` is not read (D comes from P and dP in fp32, see the module
    docstring); ``windows_per_program`` overrides the grouping heuristic."""
    alert_not_deterministic("semask window_attention backward (triton: bias-table gradient)")
    n_windows, nW, nWw, Hp, Wp = _geometry(qkv, window)
    H, W = dout.shape[1:3]
    C = qkv.shape[-1] // 3
    cfg = _config(window, "bwd", qkv.dtype)
    num_qb = cdiv(window * window, cfg["BLOCK_M"])
    wpp = windows_per_program or _windows_per_program(
        n_windows, num_qb * num_heads, qkv.device, _PROGRAMS_PER_SM[1])
    dout = dout.contiguous()
    dqkv = torch.empty_like(qkv)
    dtable = torch.zeros(table.shape, device=table.device, dtype=torch.float32)
    grid = (cdiv(n_windows, wpp) * num_qb * num_heads,)
    common = dict(HEADS=num_heads, HEAD_DIM=C // num_heads, WINDOW=window, SHIFTED=shift > 0,
                  **cfg, **_dot_flags(qkv))
    geometry = (n_windows, nW, nWw, Hp, Wp, H, W, shift, wpp)
    # D (lse's layout) is only stored for the dk/dv pass; with one query block the argument
    # is a placeholder the kernel never touches.
    delta = torch.empty_like(lse) if num_qb > 1 else lse
    norm = torch.empty_like(lse) if num_qb > 1 else lse
    with on_device(qkv):
        _window_bwd_dq_kernel[grid](dout, qkv, table, lse, delta, norm, dqkv, dtable, scale,
                                    scale * LOG2E, *geometry, NUM_QB=num_qb,
                                    WITH_DKDV=num_qb == 1, **common)
        if num_qb > 1:
            _window_bwd_dkdv_kernel[grid](dout, qkv, table, lse, delta, norm, dqkv, scale,
                                          scale * LOG2E, *geometry, NUM_KB=num_qb, **common)
    return dqkv, dtable.to(table.dtype)
