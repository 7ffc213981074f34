"""Windowed SeMask semantic attention in Triton with whole score rows: forward and backward.

What it computes: :mod:`semask.kernels.semantic_attention` (same tensors, layouts and
lse) for the sequences that :func:`supports` takes: windows of w <= 8 (w = 7: N = 49), and
whole images of at most 256 tokens in global mode (window = 0, e.g. the last stage of
SeMask-T at 512: 16 x 16) where :mod:`semask.kernels.semantic_gemm` does not take them
(by default it takes every global map of up to 4096 tokens). A program owns BLOCK_M query rows of one sequence and all of
its keys (BLOCK_N = next power of two >= N,
masked), so the softmax is one exact pass (no online rescaling) and every score is
computed once per direction: the classes (K) and channels (C) are looped over in chunks
of BLOCK_K and BLOCK_C, so neither is padded to a power of two (K = 150 runs as 5 chunks
of 32 = 160, not 256), and a chunk loop never recomputes scores.

Forward ``_semantic_rows_fwd_kernel``, grid (windows * query blocks,):
    S = sum_k q[:, k] k[:, k]^T,  P = softmax(S) (fp32, normalised before rounding),
    out[:, c] = P v[:, c] per channel chunk; lse = max + log(sum).
Backward (recompute P = exp(S - lse); Dao 2023, Alg. 2, with whole rows):
    dP = sum_c dO[:, c] v[:, c]^T,  D = rowsum(P * dP) (fp32, from the rows in hand, so no
    delta pass over out and dO),  dS = P * (dP - D),
    dq[:, k] = dS k[:, k],  dk[:, k] = dS^T q[:, k],  dv[:, c] = P^T dO[:, c].
``_semantic_rows_bwd_dq_kernel`` (query rows x all keys) stores dq; when one query block covers the
sequence (N <= 64) it also stores dk and dv (no atomics, no second pass); otherwise
(global maps of 65..256 tokens) it stores D and ``_semantic_rows_bwd_dkdv_kernel`` (key rows x all
queries, the transposed tiles) stores dk and dv.
All stores are plain (deterministic results).

Limits: N <= 256: [BLOCK_M, BLOCK_N] fp32 score tiles stay in registers; other limits as
:mod:`semask.kernels.semantic_attention` (which dispatches here).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import cdiv, dot, next_pow2, warps

MAX_TOKENS = 256


@triton.jit
def _rows(s, t, Hp, Wp, nWc, nW, WIN: tl.constexpr, ROW64: tl.constexpr):
    """Row b*Hp*Wp + y*Wp + x of token t of window s, or of image s when WIN = 0 (global);
    int64 when ROW64."""
    if ROW64:
        s = s.to(tl.int64)
    if WIN > 0:
        b = s // nW
        wi = s % nW
        y = (wi // nWc) * WIN + t // WIN
        x = (wi % nWc) * WIN + t % WIN
        rows = (b * Hp + y) * Wp + x
    else:
        rows = s * (Hp * Wp) + t
    return rows


@triton.jit
def _load(X, rows, mask_rows, cols, mask_cols, width):
    """X[rows, cols] of a row-major [*, width] tensor (0 where masked)."""
    return tl.load(X + rows[:, None] * width + cols[None, :],
                   mask=mask_rows[:, None] & mask_cols[None, :], other=0.0)


@triton.jit
def _store(X, value, rows, mask_rows, cols, mask_cols, width):
    """X[rows, cols] = value, in X's dtype."""
    tl.store(X + rows[:, None] * width + cols[None, :], value.to(X.dtype.element_ty),
             mask=mask_rows[:, None] & mask_cols[None, :])


@triton.jit
def _scores(A, B, rows_a, rows_b, mask_a, mask_b, KD,
            BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
            PREC: tl.constexpr, UPCAST: tl.constexpr):
    """sum over column chunks (of BLOCK_K; classes, or channels for dO v^T) of
    A[rows_a, k] B[rows_b, k]^T, KD columns -> [BLOCK_A, BLOCK_B] fp32."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < KD
        a = _load(A, rows_a, mask_a, offs_k, mask_k, KD)
        b = _load(B, rows_b, mask_b, offs_k, mask_k, KD)
        acc += dot(a, tl.trans(b), PREC, UPCAST)
    return acc


@triton.jit
def _block(pid, N, Hp, Wp, nWc, nW, WIN: tl.constexpr, ROW64: tl.constexpr,
           NUM_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program ``pid``'s sequence s, its BLOCK_M own tokens (block pid % NUM_BLOCKS) and all
    BLOCK_N tokens of the sequence: (s, offs_m, offs_n, mask_m, mask_n, rows_m, rows_n)."""
    s = pid // NUM_BLOCKS
    offs_m = (pid % NUM_BLOCKS) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    rows_m = _rows(s, offs_m, Hp, Wp, nWc, nW, WIN, ROW64)
    rows_n = _rows(s, offs_n, Hp, Wp, nWc, nW, WIN, ROW64)
    return s, offs_m, offs_n, offs_m < N, offs_n < N, rows_m, rows_n


@triton.jit
def _semantic_rows_fwd_kernel(
        Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, WIN: tl.constexpr,
        ROW64: tl.constexpr, NUM_QB: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr):
    s, offs_m, _, mask_m, mask_n, rows_m, rows_n = _block(
        tl.program_id(0), N, Hp, Wp, nWc, nW, WIN, ROW64, NUM_QB, BLOCK_M, BLOCK_N)
    scores = _scores(Q, Kt, rows_m, rows_n, mask_m, mask_n, KD, BLOCK_M, BLOCK_N, BLOCK_K,
                     PREC, UPCAST)
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m = tl.max(scores, 1)
    p = tl.exp(scores - m[:, None])
    l = tl.sum(p, 1)
    p = (p / l[:, None]).to(V.dtype.element_ty)
    tl.store(LSE + s * N + offs_m, m + tl.log(l), mask=mask_m)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        v = _load(V, rows_n, mask_n, offs_c, mask_c, C)
        out = dot(p, v, PREC, UPCAST)
        _store(O, out, rows_m, mask_m, offs_c, mask_c, C)


@triton.jit
def _semantic_rows_bwd_dq_kernel(
        Q, Kt, V, DO, LSE, DELTA, DQ, DK, DV, N, KD, C, Hp, Wp, nWc, nW, WIN: tl.constexpr,
        ROW64: tl.constexpr, NUM_QB: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr):
    s, offs_m, _, mask_m, mask_n, rows_m, rows_n = _block(
        tl.program_id(0), N, Hp, Wp, nWc, nW, WIN, ROW64, NUM_QB, BLOCK_M, BLOCK_N)
    scores = _scores(Q, Kt, rows_m, rows_n, mask_m, mask_n, KD, BLOCK_M, BLOCK_N, BLOCK_K,
                     PREC, UPCAST)
    # padded query rows get lse = +inf, hence P = 0 (and no dk/dv contribution)
    lse = tl.load(LSE + s * N + offs_m, mask=mask_m, other=float("inf"))
    p = tl.where(mask_n[None, :], tl.exp(scores - lse[:, None]), 0.0)
    p_lo = p.to(DO.dtype.element_ty)
    dp = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        do = _load(DO, rows_m, mask_m, offs_c, mask_c, C)
        v = _load(V, rows_n, mask_n, offs_c, mask_c, C)
        dp += dot(do, tl.trans(v), PREC, UPCAST)
        if NUM_QB == 1:
            dv = dot(tl.trans(p_lo), do, PREC, UPCAST)
            _store(DV, dv, rows_n, mask_n, offs_c, mask_c, C)
    delta = tl.sum(p * dp, 1)
    ds = (p * (dp - delta[:, None])).to(Q.dtype.element_ty)
    if NUM_QB > 1:
        tl.store(DELTA + s * N + offs_m, delta, mask=mask_m)
    for k0 in range(0, KD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < KD
        k = _load(Kt, rows_n, mask_n, offs_k, mask_k, KD)
        dq = dot(ds, k, PREC, UPCAST)
        _store(DQ, dq, rows_m, mask_m, offs_k, mask_k, KD)
        if NUM_QB == 1:
            q = _load(Q, rows_m, mask_m, offs_k, mask_k, KD)
            dk = dot(tl.trans(ds), q, PREC, UPCAST)
            _store(DK, dk, rows_n, mask_n, offs_k, mask_k, KD)


@triton.jit
def _semantic_rows_bwd_dkdv_kernel(
        Q, Kt, V, DO, LSE, DELTA, DK, DV, N, KD, C, Hp, Wp, nWc, nW, WIN: tl.constexpr,
        ROW64: tl.constexpr, NUM_KB: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Key rows (BLOCK_M of them) x all queries (BLOCK_N): the transposed tiles."""
    # own rows j: keys; all rows i: queries
    s, _, offs_i, mask_j, mask_i, rows_j, rows_i = _block(
        tl.program_id(0), N, Hp, Wp, nWc, nW, WIN, ROW64, NUM_KB, BLOCK_M, BLOCK_N)
    scores_t = _scores(Kt, Q, rows_j, rows_i, mask_j, mask_i, KD, BLOCK_M, BLOCK_N, BLOCK_K,
                       PREC, UPCAST)
    lse = tl.load(LSE + s * N + offs_i, mask=mask_i, other=float("inf"))
    delta = tl.load(DELTA + s * N + offs_i, mask=mask_i, other=0.0)
    # padded queries: exp(-inf) = 0; padded keys zeroed too (their exp(-lse) may overflow)
    p_t = tl.where(mask_j[:, None], tl.exp(scores_t - lse[None, :]), 0.0)
    p_lo = p_t.to(DO.dtype.element_ty)
    dp_t = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        do = _load(DO, rows_i, mask_i, offs_c, mask_c, C)
        v = _load(V, rows_j, mask_j, offs_c, mask_c, C)
        dp_t += dot(v, tl.trans(do), PREC, UPCAST)
        dv = dot(p_lo, do, PREC, UPCAST)
        _store(DV, dv, rows_j, mask_j, offs_c, mask_c, C)
    ds_t = (p_t * (dp_t - delta[None, :])).to(Q.dtype.element_ty)
    for k0 in range(0, KD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < KD
        q = _load(Q, rows_i, mask_i, offs_k, mask_k, KD)
        dk = dot(ds_t, q, PREC, UPCAST)
        _store(DK, dk, rows_j, mask_j, offs_k, mask_k, KD)


def _chunk(n: int, sizes: tuple) -> int:
    """The chunk of ``sizes`` that pads n least (the larger one on a tie)."""
    return min(sizes, key=lambda b: (cdiv(n, b) * b, -b))


def config(N: int, K: int, C: int, backward: bool, dtype: torch.dtype) -> dict:
    """Tiles for windows of N tokens, K classes, C channels, ``dtype`` elements.

    BLOCK_N = next power of two >= N (all keys); BLOCK_M = BLOCK_N when N <= 64 (one query
    block: w = 7 pads 49 rows to 64), else 16 (a 16 x 16 map: 16 blocks); class chunks of
    32 or 16, whichever pads least.
    One query block (N <= 64), half precision: 4 warps; channel chunks of 64, 32 or 16 that
    pad least in the forward, the fewest chunks in the backward (its dP = dO v^T is summed
    over them); fp32 (the exact path, dots on FMA units): 8 warps, chunks of 32 or 16 in
    the backward (4 warps spill 25 KB there).
    Timed on an H200 (SeMask-T stage 0, N 49, K 150, C 96, bf16, batch 16; sweep of
    2026-11-27, ``benchmarks/results/h200-2026-11-27-64a1d89``): 4 warps beat 8 on every
    tile; forward 0.165 -> 0.141 ms (chunks of 32), backward 0.455 -> 0.393 ms (chunks of
    64), though Triton 3.8's build for sm_90 spills 0.6 KB there (chunks of 16 spill none:
    0.428 ms). 16-row blocks (global maps of 65..256 tokens, which
    :mod:`semask.kernels.semantic_gemm` takes by default): 8 warps, 4 for the forward (8
    would repeat its 16 x 32 tiles; the backward's spill on 4), channel chunks of 32 or 16;
    from ``ptxas -v`` for sm_90, not timed.
    """
    block_n = max(16, next_pow2(N))
    if block_n > 64:
        return dict(BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=16, BLOCK_C=_chunk(C, (32, 16)),
                    num_warps=warps(8 if backward else 4), num_stages=2)
    half = dtype != torch.float32  # fp32 (FMA dots) on 4 warps spills 0.3 KB fwd, 25 KB bwd
    if backward and half:
        block_c = min((64, 32, 16), key=lambda b: (cdiv(C, b), b))
    else:
        block_c = _chunk(C, (32, 16) if backward else (64, 32, 16))
    return dict(BLOCK_M=block_n, BLOCK_N=block_n, BLOCK_K=_chunk(K, (32, 16)), BLOCK_C=block_c,
                num_warps=warps(4 if half else 8), num_stages=2)


def supports(N: int, window: int) -> bool:
    """Whether sequences of N tokens run here: windows that one query block covers
    (N <= 64, w <= 8) and global maps of up to 256 tokens. Larger windows (w = 12: nine
    query blocks, each re-reading the window's keys, padded 144 -> 256) measured slower
    than the online-softmax kernels of :mod:`semask.kernels.semantic_attention` on an H200
    (SeMask-B 512 stage 1, bf16: 6.3 ms against 2.6 ms forward + backward), so they run
    there, as do longer global maps."""
    return N <= 64 or (window == 0 and N <= MAX_TOKENS)


def forward(q, k, v, out, lse, window: int, geometry, flags: dict) -> None:
    """Fill ``out`` [B, Hp, Wp, C] and ``lse`` [B, nW, N] (see the module docstring);
    ``window`` 0 = global, ``geometry`` = (S, N, Hp, Wp, nWc, nW), ``flags`` = ROW64, PREC,
    UPCAST."""
    S, N, Hp, Wp, nWc, nW = geometry
    KD, C = q.shape[-1], v.shape[-1]
    cfg = config(N, KD, C, backward=False, dtype=q.dtype)
    num_qb = cdiv(N, cfg["BLOCK_M"])
    _semantic_rows_fwd_kernel[(S * num_qb,)](q, k, v, out, lse, N, KD, C, Hp, Wp, nWc, nW,
                                             WIN=window, NUM_QB=num_qb, **flags, **cfg)


def backward(dout, q, k, v, lse, window: int, geometry, flags: dict):
    """(dq, dk, dv) of :func:`forward` in the inputs' dtype."""
    S, N, Hp, Wp, nWc, nW = geometry
    KD, C = q.shape[-1], v.shape[-1]
    cfg = config(N, KD, C, backward=True, dtype=q.dtype)
    num_qb = cdiv(N, cfg["BLOCK_M"])
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # D is stored only for the dk/dv pass; with one query block lse stands in, unread
    delta = torch.empty_like(lse) if num_qb > 1 else lse
    common = dict(WIN=window, **flags, **cfg)
    args = (N, KD, C, Hp, Wp, nWc, nW)
    _semantic_rows_bwd_dq_kernel[(S * num_qb,)](q, k, v, dout, lse, delta, dq, dk, dv, *args,
                                                NUM_QB=num_qb, **common)
    if num_qb > 1:
        _semantic_rows_bwd_dkdv_kernel[(S * num_qb,)](q, k, v, dout, lse, delta, dk, dv, *args,
                                                      NUM_KB=num_qb, **common)
    return dq, dk, dv
