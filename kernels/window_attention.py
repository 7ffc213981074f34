"""Fused (shifted) window attention of Swin in Triton: forward and backward.

What it computes (``semask.ops.reference.window_attention_reference``)
    qkv   [B, Hp, Wp, 3C]  output of the qkv Linear on the zero-padded map (Hp, Wp multiples
                           of the window w), channel = which * C + head * D + d
    table [(2w-1)^2, heads] relative position bias table (any float dtype, read as fp32)
    out   [B, Hp, Wp, C]   in qkv's dtype, natural (unshifted) positions
    lse   [B, nW, heads, N] float32 log-sum-exp of every score row (N = w*w, windows
                           row-major over the shifted map, tokens row-major in a window)
    scores = scale * q k^T + table[index(i, j), head] + mask(i, j),  out = softmax(scores) v.
Everything the reference does with tensors is address arithmetic here (``_window_tokens``):
the cyclic shift by -shift and its reverse (token (r, c) of the shifted map lives at
((r + s) % Hp, (c + s) % Wp) of qkv and of out), the window partition and reverse, the
relative position index (``_bias_index``, from token coordinates as in Liu et al. 2021) and
the shift mask (-100 between the 3x3 regions of ``shift_region_labels``: row bands split at
Hp - w and Hp - s, column bands at Wp - w and Wp - s). No roll, pad, partition, index or
mask tensor is made. Dots accumulate in fp32; fp32 inputs use ``input_precision="ieee"``
(no TF32) so they match the fp32 reference to ~1e-6; fp16/bf16 round P and dS to the input
dtype before their dots, as flash attention does.

Tiles. A program owns BLOCK_M query rows of a window and always the whole key range, padded
to BLOCK_N = next power of two >= N (masked), so the softmax is one pass (no online
rescaling) and lse is exact. ``_CONFIG`` (per window):
    w = 7,  N = 49:  BLOCK_M = 64 (whole window, 1.31x row padding), BLOCK_N = 64 (1.31x);
    w = 12, N = 144: BLOCK_N = 256 (1.78x padded key work: the price of the one-pass
                     softmax and of a full-width dS tile to sum for the bias gradient);
                     forward BLOCK_M = 32 (5 blocks, 160 rows: 1.11x), backward
                     BLOCK_M = 16 (9 blocks, exact) to keep [16, 256] fp32 tiles in
                     registers.
Other windows up to 16: BLOCK_M = BLOCK_N when N <= 64, else BLOCK_M = 16.

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
dS (``out`` is not read). ``_window_bwd_dq_kernel`` (query rows x all keys) writes dq straight into
dqkv at the shifted positions and sums dS over its windows in registers, then adds that
tile to an fp32 [(2w-1)^2, heads] buffer with one masked ``tl.atomic_add`` per program
(duplicate indices inside the tile are summed by the atomics), cast to the table's dtype at
the end. When one query block covers the window (w = 7) it also writes dk and dv;
otherwise it stores D (fp32, lse's layout) and ``_window_bwd_dkdv_kernel`` (key rows x all
queries, the transposed tile) writes dk and dv. The atomics make dtable's last bits depend
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

from .common import dot

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 64)
MAX_WINDOW = 16  # N = 256 keys: the widest key tile kept in registers
MASK_VALUE = -100.0  # official Swin shift mask value
LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the constants kernels read (globals must be constexpr)
_LN2 = tl.constexpr(0.6931471805599453)
_MASK_LOG2 = tl.constexpr(MASK_VALUE * LOG2E)

# (forward BLOCK_M, backward BLOCK_M, num_warps) per window; BLOCK_N = next_pow2(w*w).
_CONFIG = {7: (64, 64, 4), 12: (32, 16, 4)}
# Programs per SM that the window grouping aims at (forward, backward): 4 and 4 were the
# fastest for w = 7 at every Swin-T 512 stage on an H200 (benchmarks/sweep.py, 2026-11-26:
# backward 1.34-1.66x, forward 1.0-1.19x over the earlier 16 and 8); w = 12 not swept yet.
_PROGRAMS_PER_SM = (4, 4)


@triton.jit
def _window_tokens(wid, tok, nW, nWw, Hp, Wp, shift, WINDOW: tl.constexpr, SHIFTED: tl.constexpr):
    """Row (int64, b*Hp*Wp + y*Wp + x) in the natural map of token ``tok`` of window ``wid``
    of the shifted map, and its shift region label (0 when not shifted)."""
    b = wid // nW
    wi = wid % nW
    r = (wi // nWw) * WINDOW + tok // WINDOW  # position in the shifted map
    c = (wi % nWw) * WINDOW + tok % WINDOW
    if SHIFTED:
        label = ((r >= Hp - WINDOW).to(tl.int32) + (r >= Hp - shift).to(tl.int32)) * 3 \
            + (c >= Wp - WINDOW).to(tl.int32) + (c >= Wp - shift).to(tl.int32)
        r = r + shift
        r = tl.where(r >= Hp, r - Hp, r)
        c = c + shift
        c = tl.where(c >= Wp, c - Wp, c)
    else:
        label = tok * 0
    return (b.to(tl.int64) * Hp + r) * Wp + c, label


@triton.jit
def _bias_index(qi, kj, WINDOW: tl.constexpr):
    """Relative position index of query token qi and key token kj (Swin: query minus key)."""
    return (qi // WINDOW - kj // WINDOW + WINDOW - 1) * (2 * WINDOW - 1) \
        + (qi % WINDOW - kj % WINDOW + WINDOW - 1)


@triton.jit
def _window_fwd_kernel(qkv, table, out, lse, scale_log2, n_windows, nW, nWw, Hp, Wp, shift, wpp,
                       HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_QB: tl.constexpr,
                       SHIFTED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    N: tl.constexpr = WINDOW * WINDOW
    C: tl.constexpr = HEADS * HEAD_DIM
    pid = tl.program_id(0)
    h = pid % HEADS
    qb = (pid // HEADS) % NUM_QB
    group = pid // (HEADS * NUM_QB)
    rows = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N
    col_ok = cols < N
    tile_ok = row_ok[:, None] & col_ok[None, :]
    bias = tl.load(table + _bias_index(rows[:, None], cols[None, :], WINDOW) * HEADS + h,
                   mask=tile_ok, other=0.0).to(tl.float32) * _LOG2E
    bias = tl.where(col_ok[None, :], bias, float("-inf"))
    for t in range(wpp):
        wid = group * wpp + t
        q_rows, q_lab = _window_tokens(wid, rows, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        k_rows, k_lab = _window_tokens(wid, cols, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        q_ok = row_ok & (wid < n_windows)
        k_ok = col_ok & (wid < n_windows)
        head = h * HEAD_DIM + d[None, :]
        q = tl.load(qkv + q_rows[:, None] * (3 * C) + head, mask=q_ok[:, None], other=0.0)
        k = tl.load(qkv + k_rows[:, None] * (3 * C) + C + head, mask=k_ok[:, None], other=0.0)
        v = tl.load(qkv + k_rows[:, None] * (3 * C) + 2 * C + head, mask=k_ok[:, None], other=0.0)
        s = dot(q, tl.trans(k), DOT_PREC, UPCAST) * scale_log2 + bias  # log2 units
        if SHIFTED:
            s = tl.where(q_lab[:, None] != k_lab[None, :], s + _MASK_LOG2, s)
        m = tl.max(s, 1)
        p = tl.exp2(s - m[:, None])
        l = tl.sum(p, 1)
        o = dot(p.to(v.dtype), v, DOT_PREC, UPCAST) / l[:, None]
        tl.store(out + q_rows[:, None] * C + head, o.to(out.dtype.element_ty), mask=q_ok[:, None])
        lse_rows = (wid.to(tl.int64) * HEADS + h) * N + rows
        tl.store(lse + lse_rows, (m + tl.log2(l)) * _LN2, mask=q_ok)


@triton.jit
def _window_bwd_dq_kernel(dout, qkv, table, lse, delta, dqkv, dtable, scale, scale_log2,
                          n_windows, nW, nWw, Hp, Wp, shift, wpp,
                          HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_QB: tl.constexpr,
                          SHIFTED: tl.constexpr, WITH_DKDV: tl.constexpr, DOT_PREC: tl.constexpr,
                          UPCAST: tl.constexpr):
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
    d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N
    col_ok = cols < N
    tile_ok = row_ok[:, None] & col_ok[None, :]
    index = _bias_index(rows[:, None], cols[None, :], WINDOW) * HEADS + h
    bias = tl.load(table + index, mask=tile_ok, other=0.0).to(tl.float32) * _LOG2E
    bias = tl.where(col_ok[None, :], bias, float("-inf"))
    dbias = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(wpp):
        wid = group * wpp + t
        q_rows, q_lab = _window_tokens(wid, rows, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        k_rows, k_lab = _window_tokens(wid, cols, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        q_ok = row_ok & (wid < n_windows)
        k_ok = col_ok & (wid < n_windows)
        head = h * HEAD_DIM + d[None, :]
        q = tl.load(qkv + q_rows[:, None] * (3 * C) + head, mask=q_ok[:, None], other=0.0)
        k = tl.load(qkv + k_rows[:, None] * (3 * C) + C + head, mask=k_ok[:, None], other=0.0)
        v = tl.load(qkv + k_rows[:, None] * (3 * C) + 2 * C + head, mask=k_ok[:, None], other=0.0)
        do = tl.load(dout + q_rows[:, None] * C + head, mask=q_ok[:, None], other=0.0)
        stat_rows = (wid.to(tl.int64) * HEADS + h) * N + rows
        row_lse = tl.load(lse + stat_rows, mask=q_ok, other=0.0)
        s = dot(q, tl.trans(k), DOT_PREC, UPCAST) * scale_log2 + bias
        if SHIFTED:
            s = tl.where(q_lab[:, None] != k_lab[None, :], s + _MASK_LOG2, s)
        p = tl.exp2(s - row_lse[:, None] * _LOG2E)
        p = tl.where(q_ok[:, None], p, 0.0)
        dp = dot(do, tl.trans(v), DOT_PREC, UPCAST)
        row_delta = tl.sum(p * dp, 1)  # = rowsum(dO * O), without O's rounding
        ds = p * (dp - row_delta[:, None])
        dbias += ds
        dq = dot(ds.to(k.dtype), k, DOT_PREC, UPCAST) * scale
        tl.store(dqkv + q_rows[:, None] * (3 * C) + head, dq.to(dqkv.dtype.element_ty),
                 mask=q_ok[:, None])
        if WITH_DKDV:
            dk = dot(tl.trans(ds.to(q.dtype)), q, DOT_PREC, UPCAST) * scale
            dv = dot(tl.trans(p.to(do.dtype)), do, DOT_PREC, UPCAST)
            tl.store(dqkv + k_rows[:, None] * (3 * C) + C + head, dk.to(dqkv.dtype.element_ty),
                     mask=k_ok[:, None])
            tl.store(dqkv + k_rows[:, None] * (3 * C) + 2 * C + head,
                     dv.to(dqkv.dtype.element_ty), mask=k_ok[:, None])
        else:
            tl.store(delta + stat_rows, row_delta, mask=q_ok)
    tl.atomic_add(dtable + index, dbias, mask=tile_ok)


@triton.jit
def _window_bwd_dkdv_kernel(dout, qkv, table, lse, delta, dqkv, scale, scale_log2,
                            n_windows, nW, nWw, Hp, Wp, shift, wpp,
                            HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_KB: tl.constexpr,
                            SHIFTED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Key rows x all queries (transposed tiles): dk and dv of windows larger than a block."""
    N: tl.constexpr = WINDOW * WINDOW
    C: tl.constexpr = HEADS * HEAD_DIM
    pid = tl.program_id(0)
    h = pid % HEADS
    kb = (pid // HEADS) % NUM_KB
    group = pid // (HEADS * NUM_KB)
    keys = kb * BLOCK_M + tl.arange(0, BLOCK_M)
    queries = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    key_ok = keys < N
    query_ok = queries < N
    tile_ok = key_ok[:, None] & query_ok[None, :]
    bias = tl.load(table + _bias_index(queries[None, :], keys[:, None], WINDOW) * HEADS + h,
                   mask=tile_ok, other=0.0).to(tl.float32) * _LOG2E
    for t in range(wpp):
        wid = group * wpp + t
        k_rows, k_lab = _window_tokens(wid, keys, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        q_rows, q_lab = _window_tokens(wid, queries, nW, nWw, Hp, Wp, shift, WINDOW, SHIFTED)
        k_ok = key_ok & (wid < n_windows)
        q_ok = query_ok & (wid < n_windows)
        head = h * HEAD_DIM + d[None, :]
        k = tl.load(qkv + k_rows[:, None] * (3 * C) + C + head, mask=k_ok[:, None], other=0.0)
        v = tl.load(qkv + k_rows[:, None] * (3 * C) + 2 * C + head, mask=k_ok[:, None], other=0.0)
        q = tl.load(qkv + q_rows[:, None] * (3 * C) + head, mask=q_ok[:, None], other=0.0)
        do = tl.load(dout + q_rows[:, None] * C + head, mask=q_ok[:, None], other=0.0)
        stat_cols = (wid.to(tl.int64) * HEADS + h) * N + queries
        col_lse = tl.load(lse + stat_cols, mask=q_ok, other=0.0)
        col_delta = tl.load(delta + stat_cols, mask=q_ok, other=0.0)
        s_t = dot(k, tl.trans(q), DOT_PREC, UPCAST) * scale_log2 + bias
        if SHIFTED:
            s_t = tl.where(k_lab[:, None] != q_lab[None, :], s_t + _MASK_LOG2, s_t)
        p_t = tl.exp2(s_t - col_lse[None, :] * _LOG2E)
        p_t = tl.where(k_ok[:, None] & q_ok[None, :], p_t, 0.0)
        dp_t = dot(v, tl.trans(do), DOT_PREC, UPCAST)
        ds_t = p_t * (dp_t - col_delta[None, :])
        dk = dot(ds_t.to(q.dtype), q, DOT_PREC, UPCAST) * scale
        dv = dot(p_t.to(do.dtype), do, DOT_PREC, UPCAST)
        tl.store(dqkv + k_rows[:, None] * (3 * C) + C + head, dk.to(dqkv.dtype.element_ty),
                 mask=k_ok[:, None])
        tl.store(dqkv + k_rows[:, None] * (3 * C) + 2 * C + head, dv.to(dqkv.dtype.element_ty),
                 mask=k_ok[:, None])


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


def _config(window: int) -> tuple[int, int, int, int]:
    """(forward BLOCK_M, backward BLOCK_M, BLOCK_N, num_warps) for a window."""
    block_n = max(16, triton.next_power_of_2(window * window))
    if window in _CONFIG:
        fwd_m, bwd_m, warps = _CONFIG[window]
    else:
        fwd_m = bwd_m = min(block_n, 64 if block_n <= 64 else 16)
        warps = 4
    return fwd_m, bwd_m, block_n, warps


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
    return triton.cdiv(n_windows, groups)


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
            scale: float, *, windows_per_program: int | None = None):
    """qkv [B, Hp, Wp, 3C], table [(2w-1)^2, heads] -> (out [B, Hp, Wp, C], lse float32
    [B, nW, heads, w*w]). ``windows_per_program`` overrides the grouping heuristic."""
    n_windows, nW, nWw, Hp, Wp = _geometry(qkv, window)
    C = qkv.shape[-1] // 3
    fwd_m, _, block_n, warps = _config(window)
    num_qb = triton.cdiv(window * window, fwd_m)
    wpp = windows_per_program or _windows_per_program(
        n_windows, num_qb * num_heads, qkv.device, _PROGRAMS_PER_SM[0])
    out = qkv.new_empty(qkv.shape[:3] + (C,))
    lse = torch.empty(qkv.shape[0], nW, num_heads, window * window, device=qkv.device,
                      dtype=torch.float32)
    grid = (triton.cdiv(n_windows, wpp) * num_qb * num_heads,)
    _window_fwd_kernel[grid](
        qkv, table, out, lse, scale * LOG2E, n_windows, nW, nWw, Hp, Wp, shift, wpp,
        HEADS=num_heads, HEAD_DIM=C // num_heads, WINDOW=window, BLOCK_M=fwd_m, BLOCK_N=block_n,
        NUM_QB=num_qb, SHIFTED=shift > 0, num_warps=warps, **_dot_flags(qkv))
    return out, lse


def backward(dout: torch.Tensor, qkv: torch.Tensor, table: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, num_heads: int, window: int, shift: int, scale: float, *,
             windows_per_program: int | None = None):
    """Gradients of :func:`forward`: dout [B, Hp, Wp, C] -> (dqkv like qkv, dtable like
    table). ``out`` is not read (D comes from P and dP in fp32, see the module docstring);
    ``windows_per_program`` overrides the grouping heuristic."""
    n_windows, nW, nWw, Hp, Wp = _geometry(qkv, window)
    C = qkv.shape[-1] // 3
    _, bwd_m, block_n, warps = _config(window)
    num_qb = triton.cdiv(window * window, bwd_m)
    wpp = windows_per_program or _windows_per_program(
        n_windows, num_qb * num_heads, qkv.device, _PROGRAMS_PER_SM[1])
    dout = dout.contiguous()
    dqkv = torch.empty_like(qkv)
    dtable = torch.zeros(table.shape, device=table.device, dtype=torch.float32)
    grid = (triton.cdiv(n_windows, wpp) * num_qb * num_heads,)
    common = dict(HEADS=num_heads, HEAD_DIM=C // num_heads, WINDOW=window, BLOCK_M=bwd_m,
                  BLOCK_N=block_n, SHIFTED=shift > 0, num_warps=warps, **_dot_flags(qkv))
    geometry = (n_windows, nW, nWw, Hp, Wp, shift, wpp)
    # D (lse's layout) is only stored for the dk/dv pass; with one query block the argument
    # is a placeholder the kernel never touches.
    delta = torch.empty_like(lse) if num_qb > 1 else lse
    _window_bwd_dq_kernel[grid](dout, qkv, table, lse, delta, dqkv, dtable, scale, scale * LOG2E,
                                *geometry, NUM_QB=num_qb, WITH_DKDV=num_qb == 1, **common)
    if num_qb > 1:
        _window_bwd_dkdv_kernel[grid](dout, qkv, table, lse, delta, dqkv, scale, scale * LOG2E,
                                      *geometry, NUM_KB=num_qb, **common)
    return dqkv, dtable.to(table.dtype)
