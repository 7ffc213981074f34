"""Fused SeMask semantic attention in Triton: out = softmax(Q K^T) V, forward and backward.

What it computes (single head, no scaling; ``semask.ops.reference.semantic_attention_reference``)
    q, k [B, Hp, Wp, K]  (K = number of classes, any K <= MAX_K)
    v    [B, Hp, Wp, C]
    window > 0: attention inside non-overlapping window x window tiles (windows row-major,
                tokens row-major inside a window; no shift, no mask), N = window^2;
    window = 0: global attention over all N = Hp*Wp tokens of an image.
    out [B, Hp, Wp, C] in q's dtype; lse float32 [B, nW, N] = log-sum-exp of each score row
    (nW = (Hp/window)*(Wp/window), or 1 when global).
The window partition is pure address arithmetic (``semantic_window._rows``, shared with
the whole-row kernels): every program reads and
writes the natural [B, Hp, Wp, *] layout; no partition copy, no N x N tensor in memory.
Every dot accumulates in fp32; fp32 inputs use ``input_precision="ieee"`` (no TF32).

Global maps of up to 4096 tokens run on cuBLAS products with fused softmax rows
(:mod:`semask.kernels.semantic_gemm`, see its ``supports``), windows of up to 8 x 8 on the
whole-row kernels of :mod:`semask.kernels.semantic_window` (see its ``supports``); this
module runs the others (windows 9..16 such as 12 x 12, longer global maps) with the online
softmax below, and :func:`forward`/:func:`backward` dispatch between the three. (With
``semantic_gemm.MAX_TOKENS`` lowered, global maps of up to 256 tokens run on the whole-row
kernels and longer ones here, as before that path existed.)

One "sequence" s in [0, B*nW) is one window (or one image when global). Block sizes:
BLOCK_M query tokens, BLOCK_N key tokens, BLOCK_C channels of v/out; the K classes are
held as a head tile of BLOCK_K columns (a power of two) and, where that pads less, a tail
tile of BLOCK_K2 (TAIL; ``_classes``: 150 -> 128 + 32, not 256), every product over
classes taken as the sum of the two tiles' products; chosen by ``_config`` (no autotuning).
In the forward and dq kernels the last query block may be a smaller tile (ROW_TAIL,
BLOCK_M2; a runtime branch per program picks the tile). Every loop over a sequence (the
forward's and dq's keys, dk/dv's and the GEMM kernel's queries) takes full steps and,
where the rest fits a smaller tile, a last step of BLOCK_STEP2 (STEP_TAIL,
``common.step_tail``: 144 = 128 + 16, not 256), the step's code built twice.

Forward ``_semantic_fwd_kernel``, grid (num_m_blocks * S, num_c_chunks): one program owns BLOCK_M
query rows and one BLOCK_C channel chunk, loops over all key blocks with the online
softmax of flash attention (Dao et al. 2022, Alg. 1) and writes its out chunk; the c = 0
program also writes lse. Scores are recomputed per channel chunk (cost K per chunk, cheap
next to C when C is split in few chunks).

Backward (flash attention 2, Dao 2023, Alg. 2, with P recomputed from q, k and lse):
    D  = rowsum(dO * O),  P = exp(q k^T - lse),  dP = dO v^T,  dS = P * (dP - D)
    dv = P^T dO,  dk = dS^T q,  dq = dS k.
Two kernels, each storing its results once (no dq atomics: with C split over programs and
key blocks of 32, those were ~100 fp32 atomic adds per dq element):
``_semantic_bwd_dq_kernel``, grid (num_m_blocks * S,): a program owns BLOCK_M query rows,
computes their D from O and dO (stored for the next kernel), then loops over all key
blocks with the channels looped inside (dP needs all of them) and stores dq.
``_semantic_bwd_dkdv_kernel``, grid (num_n_blocks * S, num_c_chunks): a program owns
BLOCK_N key rows and one channel chunk c, loops over all query blocks and stores dv[:, c].
dP is a sum over channel chunks, so dS splits linearly: dS = sum_c P * dP_c - P * D,
with the -P*D term taken by chunk 0; with several chunks each adds its share of dk with
fp32 atomics (relaxed, one add per chunk and element) into a zeroed fp32 buffer, cast at
the end (the last bits of dk are then non-deterministic); with one chunk dk is stored.
Scores are computed 1 + num_c_chunks times in the backward, dP twice.
Scratch backward (windows, ``SCRATCH_BACKWARD``; the default, timed faster in bf16, fp32
untimed): the dq kernel also stores its P and dS tiles, transposed, into [S, N, N] scratch
tensors in the inputs' dtype (the dtype the dots take them in), and
``_semantic_bwd_gemm_kernel``, grid (num_n_blocks * S, num_c_chunks + 1), computes dv[:, c]
= P^T dO[:, c] per channel chunk and, in the last grid column, dk = dS^T q, as products
over the queries: no score or dP recomputation, no dk atomics (with SPLIT, off until timed,
dv and dk are two launches of it, each holding only its own tiles). With DQ_IN_GEMM (in
dq's config, off until timed) the dq kernel only stores D, P^T and dS^T (WITH_DQ off: no
dq accumulators; sm_90, K 160 as the fused model pads 150: 208 registers instead of 255
at its 64 x 128 tiles, 171 at 64 x 64 on 4 warps) and one more grid column of the GEMM kernel computes dq = dS k per
query block from dS^T read transposed (N^2 K more multiply-adds there, N^2 K fewer in
the dq kernel, dS read twice). Multiply-adds per
window N^2 (3 K + 2 C) instead of N^2 (2 K + C) + N^2 (2 K chunks + 2 C): SeMask-B at 512,
stage 0 (K 160 padded, C 128, one chunk) 736 against 1024 N^2, stage 3 (C 1024, 8 chunks)
2528 against 5952 N^2; the scratch adds 2 N^2 elements written and read per window (stage
0, batch 16, bf16: 160 MB; fp32: 320 MB).

Limits: K <= 256 (class tiles in registers); any C (chunked); fp32, fp16,
bf16 (q, k, v of one dtype); contiguous inputs; int32 offsets (int64 when a tensor has
>= 2^31 elements); fp32 on sm_90 with Triton < 3.3 is refused where the online-softmax
kernels would run (neither the GEMM path nor the whole-row kernels take the sequence):
3.2 fails to build the online dk/dv kernel. In Triton's CPU interpreter bf16 dots are wrong (Triton 3.8), so there
the already-rounded bf16 operands are widened to fp32 before each dot (``UPCAST``);
compiled GPU code uses bf16 dots.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common, semantic_gemm, semantic_window
from .common import (alert_not_deterministic, cdiv, dot, head_tail, next_pow2, on_device, row_tail,
                     step_tail, warps)
from .semantic_window import _load, _rows, _scores, _store

MAX_K = 256
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _class_tiles(X, rows, mask_rows, KD, BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr,
                 TAIL: tl.constexpr):
    """X[rows, :KD] of a row-major [*, KD] tensor as a head tile (classes [0, BLOCK_K)) and
    a tail tile (classes [BLOCK_K, BLOCK_K + BLOCK_K2); zeros, never loaded, unless TAIL)."""
    offs = tl.arange(0, BLOCK_K)
    head = _load(X, rows, mask_rows, offs, offs < KD, KD)
    if TAIL:
        offs2 = BLOCK_K + tl.arange(0, BLOCK_K2)
        tail = _load(X, rows, mask_rows, offs2, offs2 < KD, KD)
    else:
        tail = tl.zeros([rows.shape[0], BLOCK_K2], head.dtype)
    return head, tail


@triton.jit
def _class_scores(a, a2, b, b2, TAIL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """sum over classes of a b^T from head (a, b) and tail (a2, b2) tiles -> fp32."""
    acc = dot(a, tl.trans(b), PREC, UPCAST)
    if TAIL:
        acc += dot(a2, tl.trans(b2), PREC, UPCAST)
    return acc


@triton.jit
def _store_classes(X, x, x2, rows, mask_rows, KD, BLOCK_K: tl.constexpr,
                   BLOCK_K2: tl.constexpr, TAIL: tl.constexpr, ATOMIC: tl.constexpr):
    """X[rows, :KD] = (or, ATOMIC, += in fp32) the head tile x and the tail tile x2."""
    offs = tl.arange(0, BLOCK_K)
    if ATOMIC:
        tl.atomic_add(X + rows[:, None] * KD + offs[None, :], x,
                      mask=mask_rows[:, None] & (offs < KD)[None, :], sem="relaxed")
    else:
        _store(X, x, rows, mask_rows, offs, offs < KD, KD)
    if TAIL:
        offs2 = BLOCK_K + tl.arange(0, BLOCK_K2)
        if ATOMIC:
            tl.atomic_add(X + rows[:, None] * KD + offs2[None, :], x2,
                          mask=mask_rows[:, None] & (offs2 < KD)[None, :], sem="relaxed")
        else:
            _store(X, x2, rows, mask_rows, offs2, offs2 < KD, KD)


@triton.jit
def _tokens(s, start, N, Hp, Wp, nWc, nW, WIN: tl.constexpr, ROW64: tl.constexpr,
            BLOCK: tl.constexpr):
    """Tokens start .. start + BLOCK of sequence s: (offsets, mask of those < N, rows)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < N, _rows(s, offs, Hp, Wp, nWc, nW, WIN, ROW64)


@triton.jit
def _full_steps(N, STEP: tl.constexpr, STEP_TAIL: tl.constexpr):
    """Tokens the full steps of STEP cover in a loop over N: all N, or with STEP_TAIL the
    multiple of STEP below N (the last step, of BLOCK_STEP2, takes the rest)."""
    if STEP_TAIL:
        return N - N % STEP
    else:
        return N


@triton.jit
def _fwd_keys(q, q2, Kt, V, m_i, l_i, acc, s, start_n, N, KD, C, Hp, Wp, nWc, nW, offs_c,
              mask_c, WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
              PREC: tl.constexpr, UPCAST: tl.constexpr):
    """One online-softmax step over keys start_n .. start_n + BLOCK_N: (m, l, acc) updated."""
    _, mask_n, rows_n = _tokens(s, start_n, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_N)
    k, k2 = _class_tiles(Kt, rows_n, mask_n, KD, BLOCK_K, BLOCK_K2, TAIL)
    scores = _class_scores(q, q2, k, k2, TAIL, PREC, UPCAST)
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load(V, rows_n, mask_n, offs_c, mask_c, C)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PREC, UPCAST)
    return m_new, l_i, acc


@triton.jit
def _semantic_fwd_rows(Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, s, start_m, pid_c,
                       WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_STEP2: tl.constexpr, STEP_TAIL: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                       BLOCK_C: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Forward of query rows start_m .. start_m + BLOCK_M of sequence s, channel chunk pid_c:
    keys in steps of BLOCK_N, with STEP_TAIL the last one of BLOCK_STEP2."""
    offs_m, mask_m, rows_m = _tokens(s, start_m, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    q, q2 = _class_tiles(Q, rows_m, mask_m, KD, BLOCK_K, BLOCK_K2, TAIL)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    n_full = _full_steps(N, BLOCK_N, STEP_TAIL)
    for start_n in range(0, n_full, BLOCK_N):
        m_i, l_i, acc = _fwd_keys(q, q2, Kt, V, m_i, l_i, acc, s, start_n, N, KD, C, Hp, Wp,
                                  nWc, nW, offs_c, mask_c, WIN, ROW64, BLOCK_N, BLOCK_K,
                                  BLOCK_K2, TAIL, PREC, UPCAST)
    if STEP_TAIL:
        m_i, l_i, acc = _fwd_keys(q, q2, Kt, V, m_i, l_i, acc, s, n_full, N, KD, C, Hp, Wp,
                                  nWc, nW, offs_c, mask_c, WIN, ROW64, BLOCK_STEP2, BLOCK_K,
                                  BLOCK_K2, TAIL, PREC, UPCAST)

    _store(O, acc / l_i[:, None], rows_m, mask_m, offs_c, mask_c, C)
    if pid_c == 0:
        tl.store(LSE + s * N + offs_m, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _semantic_fwd_kernel(Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, num_m,
                         WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_M2: tl.constexpr, ROW_TAIL: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_STEP2: tl.constexpr, STEP_TAIL: tl.constexpr,
                         BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                         BLOCK_C: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Query blocks of BLOCK_M rows; with ROW_TAIL the last one holds only BLOCK_M2."""
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    s = pid // num_m
    mb = pid % num_m
    if ROW_TAIL:
        if mb == num_m - 1:
            _semantic_fwd_rows(Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, s, mb * BLOCK_M,
                               pid_c, WIN, ROW64, BLOCK_M2, BLOCK_N, BLOCK_STEP2, STEP_TAIL,
                               BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST)
        else:
            _semantic_fwd_rows(Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, s, mb * BLOCK_M,
                               pid_c, WIN, ROW64, BLOCK_M, BLOCK_N, BLOCK_STEP2, STEP_TAIL,
                               BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST)
    else:
        _semantic_fwd_rows(Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, s, mb * BLOCK_M, pid_c,
                           WIN, ROW64, BLOCK_M, BLOCK_N, BLOCK_STEP2, STEP_TAIL, BLOCK_K,
                           BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST)


@triton.jit
def _store_transposed(X, x, s, offs_m, offs_n, mask_m, mask_n, N):
    """X[s, n, m] = x[m, n] of a [sequences, N, N] scratch tensor, in X's dtype."""
    offs = s.to(tl.int64) * N * N + offs_n[None, :] * N + offs_m[:, None]
    tl.store(X + offs, x.to(X.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _dq_keys(q, q2, Kt, V, DO, PT, DST, dq, dq2, lse, delta, s, offs_m, mask_m, rows_m, start_n,
             N, KD, C, Hp, Wp, nWc, nW, WIN: tl.constexpr, ROW64: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             BLOCK_K2: tl.constexpr, TAIL: tl.constexpr, BLOCK_C: tl.constexpr,
             PREC: tl.constexpr, UPCAST: tl.constexpr, STORE_PS: tl.constexpr,
             WITH_DQ: tl.constexpr):
    """dq's step over keys start_n .. start_n + BLOCK_N (with STORE_PS, their P^T and dS^T
    stored): (dq, dq2) updated with WITH_DQ, else returned as they are."""
    offs_n, mask_n, rows_n = _tokens(s, start_n, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_N)
    k, k2 = _class_tiles(Kt, rows_n, mask_n, KD, BLOCK_K, BLOCK_K2, TAIL)
    scores = _class_scores(q, q2, k, k2, TAIL, PREC, UPCAST)
    p = tl.where(mask_n[None, :], tl.exp(scores - lse[:, None]), 0.0)
    dp = _scores(DO, V, rows_m, rows_n, mask_m, mask_n, C, BLOCK_M, BLOCK_N, BLOCK_C,
                 PREC, UPCAST)  # dO v^T over channel chunks
    ds = (p * (dp - delta[:, None])).to(k.dtype)
    if STORE_PS:
        _store_transposed(PT, p, s, offs_m, offs_n, mask_m, mask_n, N)
        _store_transposed(DST, ds, s, offs_m, offs_n, mask_m, mask_n, N)
    if WITH_DQ:
        dq += dot(ds, k, PREC, UPCAST)
        if TAIL:
            dq2 += dot(ds, k2, PREC, UPCAST)
    return dq, dq2


@triton.jit
def _semantic_dq_rows(Q, Kt, V, O, DO, LSE, DELTA, DQ, PT, DST, N, KD, C, Hp, Wp, nWc, nW, s,
                      start_m, WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_STEP2: tl.constexpr, STEP_TAIL: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                      BLOCK_C: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                      STORE_PS: tl.constexpr, WITH_DQ: tl.constexpr):
    """D and, WITH_DQ, dq of query rows start_m .. start_m + BLOCK_M of sequence s (keys in
    steps of BLOCK_N, with STEP_TAIL the last one of BLOCK_STEP2); with STORE_PS also their
    P and dS, transposed, into the scratch PT and DST."""
    offs_m, mask_m, rows_m = _tokens(s, start_m, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M)
    delta = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        o = _load(O, rows_m, mask_m, offs_c, mask_c, C).to(tl.float32)
        do = _load(DO, rows_m, mask_m, offs_c, mask_c, C).to(tl.float32)
        delta += tl.sum(o * do, 1)
    tl.store(DELTA + s * N + offs_m, delta, mask=mask_m)

    q, q2 = _class_tiles(Q, rows_m, mask_m, KD, BLOCK_K, BLOCK_K2, TAIL)
    # padded query rows get lse = +inf, hence P = 0 and dS = 0
    lse = tl.load(LSE + s * N + offs_m, mask=mask_m, other=float("inf"))
    dq = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_K2], tl.float32)
    n_full = _full_steps(N, BLOCK_N, STEP_TAIL)
    for start_n in range(0, n_full, BLOCK_N):
        dq, dq2 = _dq_keys(q, q2, Kt, V, DO, PT, DST, dq, dq2, lse, delta, s, offs_m, mask_m,
                           rows_m, start_n, N, KD, C, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M,
                           BLOCK_N, BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST, STORE_PS,
                           WITH_DQ)
    if STEP_TAIL:
        dq, dq2 = _dq_keys(q, q2, Kt, V, DO, PT, DST, dq, dq2, lse, delta, s, offs_m, mask_m,
                           rows_m, n_full, N, KD, C, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M,
                           BLOCK_STEP2, BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST,
                           STORE_PS, WITH_DQ)
    if WITH_DQ:
        _store_classes(DQ, dq, dq2, rows_m, mask_m, KD, BLOCK_K, BLOCK_K2, TAIL, False)


@triton.jit
def _semantic_bwd_dq_kernel(Q, Kt, V, O, DO, LSE, DELTA, DQ, PT, DST, N, KD, C, Hp, Wp, nWc, nW,
                            num_m, WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_M2: tl.constexpr, ROW_TAIL: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_STEP2: tl.constexpr,
                            STEP_TAIL: tl.constexpr, BLOCK_K: tl.constexpr,
                            BLOCK_K2: tl.constexpr, TAIL: tl.constexpr, BLOCK_C: tl.constexpr,
                            PREC: tl.constexpr, UPCAST: tl.constexpr, STORE_PS: tl.constexpr,
                            WITH_DQ: tl.constexpr):
    """Query rows x all keys: D (stored for the dk/dv kernel), WITH_DQ dq (complete,
    stored), with STORE_PS also P^T and dS^T (for the GEMM kernel); with ROW_TAIL the last
    query block holds only BLOCK_M2 rows."""
    pid = tl.program_id(0)
    s = pid // num_m
    mb = pid % num_m
    if ROW_TAIL:
        if mb == num_m - 1:
            _semantic_dq_rows(Q, Kt, V, O, DO, LSE, DELTA, DQ, PT, DST, N, KD, C, Hp, Wp, nWc,
                              nW, s, mb * BLOCK_M, WIN, ROW64, BLOCK_M2, BLOCK_N, BLOCK_STEP2,
                              STEP_TAIL, BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST,
                              STORE_PS, WITH_DQ)
        else:
            _semantic_dq_rows(Q, Kt, V, O, DO, LSE, DELTA, DQ, PT, DST, N, KD, C, Hp, Wp, nWc,
                              nW, s, mb * BLOCK_M, WIN, ROW64, BLOCK_M, BLOCK_N, BLOCK_STEP2,
                              STEP_TAIL, BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST,
                              STORE_PS, WITH_DQ)
    else:
        _semantic_dq_rows(Q, Kt, V, O, DO, LSE, DELTA, DQ, PT, DST, N, KD, C, Hp, Wp, nWc, nW,
                          s, mb * BLOCK_M, WIN, ROW64, BLOCK_M, BLOCK_N, BLOCK_STEP2, STEP_TAIL,
                          BLOCK_K, BLOCK_K2, TAIL, BLOCK_C, PREC, UPCAST, STORE_PS,
                          WITH_DQ)


@triton.jit
def _dkdv_queries(Q, DO, LSE, DELTA, k, k2, v, dk, dk2, dv, delta_weight, s, mask_n, start_m, N,
                  KD, C, Hp, Wp, nWc, nW, offs_c, mask_c, WIN: tl.constexpr,
                  ROW64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_K2: tl.constexpr, TAIL: tl.constexpr, PREC: tl.constexpr,
                  UPCAST: tl.constexpr):
    """dk/dv's step over queries start_m .. start_m + BLOCK_M: (dk, dk2, dv) updated."""
    offs_m, mask_m, rows_m = _tokens(s, start_m, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M)
    q, q2 = _class_tiles(Q, rows_m, mask_m, KD, BLOCK_K, BLOCK_K2, TAIL)
    # padded query rows get lse = +inf, hence P = 0
    lse = tl.load(LSE + s * N + offs_m, mask=mask_m, other=float("inf"))
    delta = tl.load(DELTA + s * N + offs_m, mask=mask_m, other=0.0)
    do = _load(DO, rows_m, mask_m, offs_c, mask_c, C)
    p = tl.exp(_class_scores(q, q2, k, k2, TAIL, PREC, UPCAST) - lse[:, None])
    p = tl.where(mask_n[None, :], p, 0.0)
    dv += dot(tl.trans(p.to(do.dtype)), do, PREC, UPCAST)
    dp = dot(do, tl.trans(v), PREC, UPCAST)
    ds = tl.trans((p * (dp - delta_weight * delta[:, None])).to(q.dtype))
    dk += dot(ds, q, PREC, UPCAST)
    if TAIL:
        dk2 += dot(ds, q2, PREC, UPCAST)
    return dk, dk2, dv


@triton.jit
def _semantic_bwd_dkdv_kernel(Q, Kt, V, DO, LSE, DELTA, DK, DV, N, KD, C, Hp, Wp, nWc, nW, num_n,
                              WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_STEP2: tl.constexpr, STEP_TAIL: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              BLOCK_K2: tl.constexpr, TAIL: tl.constexpr, BLOCK_C: tl.constexpr,
                              PREC: tl.constexpr, UPCAST: tl.constexpr,
                              DK_ATOMIC: tl.constexpr):
    """Key rows x all queries (in steps of BLOCK_M, with STEP_TAIL the last one of
    BLOCK_STEP2), one channel chunk: dv[:, c] (complete) and dk (this chunk's share when
    DK_ATOMIC)."""
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    s = pid // num_n
    _, mask_n, rows_n = _tokens(s, (pid % num_n) * BLOCK_N, N, Hp, Wp, nWc, nW, WIN, ROW64,
                                BLOCK_N)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    k, k2 = _class_tiles(Kt, rows_n, mask_n, KD, BLOCK_K, BLOCK_K2, TAIL)
    v = _load(V, rows_n, mask_n, offs_c, mask_c, C)
    # chunk 0 carries the -P*D term of dS (see module docstring)
    delta_weight = (pid_c == 0).to(tl.float32)

    dk = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_K2], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    m_full = _full_steps(N, BLOCK_M, STEP_TAIL)
    for start_m in range(0, m_full, BLOCK_M):
        dk, dk2, dv = _dkdv_queries(Q, DO, LSE, DELTA, k, k2, v, dk, dk2, dv, delta_weight, s,
                                    mask_n, start_m, N, KD, C, Hp, Wp, nWc, nW, offs_c, mask_c,
                                    WIN, ROW64, BLOCK_M, BLOCK_K, BLOCK_K2, TAIL, PREC, UPCAST)
    if STEP_TAIL:
        dk, dk2, dv = _dkdv_queries(Q, DO, LSE, DELTA, k, k2, v, dk, dk2, dv, delta_weight, s,
                                    mask_n, m_full, N, KD, C, Hp, Wp, nWc, nW, offs_c, mask_c,
                                    WIN, ROW64, BLOCK_STEP2, BLOCK_K, BLOCK_K2, TAIL, PREC,
                                    UPCAST)

    _store(DV, dv, rows_n, mask_n, offs_c, mask_c, C)
    _store_classes(DK, dk, dk2, rows_n, mask_n, KD, BLOCK_K, BLOCK_K2, TAIL, DK_ATOMIC)


@triton.jit
def _scratch_tile(X, s, offs_n, offs_m, mask_n, mask_m, N, TRANSPOSED: tl.constexpr):
    """[BLOCK_N, BLOCK_M] tile of a [sequences, N, N] scratch tensor: X[s, n, m], or with
    TRANSPOSED X[s, m, n] (masked entries 0)."""
    base = s.to(tl.int64) * N * N
    if TRANSPOSED:
        offs = base + offs_m[None, :] * N + offs_n[:, None]
    else:
        offs = base + offs_n[:, None] * N + offs_m[None, :]
    return tl.load(X + offs, mask=mask_n[:, None] & mask_m[None, :], other=0.0)


@triton.jit
def _gemm_dv_steps(DO, PT, dv, s, offs_n, mask_n, start_m, N, C, Hp, Wp, nWc, nW, offs_c,
                   mask_c, WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                   PREC: tl.constexpr, UPCAST: tl.constexpr):
    """dv += P^T dO over queries start_m .. start_m + BLOCK_M."""
    offs_m, mask_m, rows_m = _tokens(s, start_m, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M)
    pt = _scratch_tile(PT, s, offs_n, offs_m, mask_n, mask_m, N, False)
    return dv + dot(pt, _load(DO, rows_m, mask_m, offs_c, mask_c, C), PREC, UPCAST)


@triton.jit
def _gemm_class_steps(X, DST, acc, acc2, s, offs_n, mask_n, start_m, N, KD, Hp, Wp, nWc, nW,
                      WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                      PREC: tl.constexpr, UPCAST: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Over tokens start_m .. start_m + BLOCK_M: (acc, acc2) += dS^T q with X = q (rows n
    keys, tokens m queries: dk), or with TRANSPOSED dS k with X = k (rows n queries, tokens
    m keys: dq)."""
    offs_m, mask_m, rows_m = _tokens(s, start_m, N, Hp, Wp, nWc, nW, WIN, ROW64, BLOCK_M)
    ds = _scratch_tile(DST, s, offs_n, offs_m, mask_n, mask_m, N, TRANSPOSED)
    x, x2 = _class_tiles(X, rows_m, mask_m, KD, BLOCK_K, BLOCK_K2, TAIL)
    acc += dot(ds, x, PREC, UPCAST)
    if TAIL:
        acc2 += dot(ds, x2, PREC, UPCAST)
    return acc, acc2


@triton.jit
def _gemm_class_rows(X, DST, OUT, s, offs_n, mask_n, rows_n, N, KD, Hp, Wp, nWc, nW,
                     WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_STEP2: tl.constexpr, STEP_TAIL: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr, TRANSPOSED: tl.constexpr):
    """OUT[rows_n] = dk (X = q) or, with TRANSPOSED, dq (X = k) of the BLOCK_N rows, over all
    tokens in steps of BLOCK_M (with STEP_TAIL the last one of BLOCK_STEP2)."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_K2], tl.float32)
    m_full = _full_steps(N, BLOCK_M, STEP_TAIL)
    for start_m in range(0, m_full, BLOCK_M):
        acc, acc2 = _gemm_class_steps(X, DST, acc, acc2, s, offs_n, mask_n, start_m, N, KD, Hp,
                                      Wp, nWc, nW, WIN, ROW64, BLOCK_M, BLOCK_K, BLOCK_K2, TAIL,
                                      PREC, UPCAST, TRANSPOSED)
    if STEP_TAIL:
        acc, acc2 = _gemm_class_steps(X, DST, acc, acc2, s, offs_n, mask_n, m_full, N, KD, Hp,
                                      Wp, nWc, nW, WIN, ROW64, BLOCK_STEP2, BLOCK_K, BLOCK_K2,
                                      TAIL, PREC, UPCAST, TRANSPOSED)
    _store_classes(OUT, acc, acc2, rows_n, mask_n, KD, BLOCK_K, BLOCK_K2, TAIL, False)


@triton.jit
def _semantic_bwd_gemm_kernel(Q, Kt, DO, PT, DST, DQ, DK, DV, N, KD, C, Hp, Wp, nWc, nW, num_n,
                              num_c, WIN: tl.constexpr, ROW64: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_STEP2: tl.constexpr,
                              STEP_TAIL: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                              BLOCK_C: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                              PART: tl.constexpr, WITH_DQ: tl.constexpr):
    """Products over all tokens (in steps of BLOCK_M, with STEP_TAIL the last one of
    BLOCK_STEP2) from the stored P^T and dS^T; program (row block, j) owns BLOCK_N rows.
    PART 0: columns j < num_c store dv[:, chunk j] = P^T dO[:, chunk j] (rows = keys),
    column num_c dk = dS^T q (rows = keys) and, WITH_DQ, column num_c + 1 dq = dS k (rows =
    queries); PART 1: only the dv columns; PART 2: only dk and, WITH_DQ, dq (so that each
    launch holds only its own tiles' registers)."""
    pid = tl.program_id(0)
    j = tl.program_id(1)
    s = pid // num_n
    offs_n, mask_n, rows_n = _tokens(s, (pid % num_n) * BLOCK_N, N, Hp, Wp, nWc, nW, WIN, ROW64,
                                     BLOCK_N)
    if PART == 1 or (PART == 0 and j < num_c):
        offs_c = j * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        dv = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        m_full = _full_steps(N, BLOCK_M, STEP_TAIL)
        for start_m in range(0, m_full, BLOCK_M):
            dv = _gemm_dv_steps(DO, PT, dv, s, offs_n, mask_n, start_m, N, C, Hp, Wp, nWc, nW,
                                offs_c, mask_c, WIN, ROW64, BLOCK_M, PREC, UPCAST)
        if STEP_TAIL:
            dv = _gemm_dv_steps(DO, PT, dv, s, offs_n, mask_n, m_full, N, C, Hp, Wp, nWc, nW,
                                offs_c, mask_c, WIN, ROW64, BLOCK_STEP2, PREC, UPCAST)
        _store(DV, dv, rows_n, mask_n, offs_c, mask_c, C)
    elif WITH_DQ and j == (num_c + 1 if PART == 0 else 1):
        _gemm_class_rows(Kt, DST, DQ, s, offs_n, mask_n, rows_n, N, KD, Hp, Wp, nWc, nW, WIN,
                         ROW64, BLOCK_M, BLOCK_STEP2, STEP_TAIL, BLOCK_N, BLOCK_K, BLOCK_K2,
                         TAIL, PREC, UPCAST, True)
    else:
        _gemm_class_rows(Q, DST, DK, s, offs_n, mask_n, rows_n, N, KD, Hp, Wp, nWc, nW, WIN,
                         ROW64, BLOCK_M, BLOCK_STEP2, STEP_TAIL, BLOCK_N, BLOCK_K, BLOCK_K2,
                         TAIL, PREC, UPCAST, False)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, next_pow2(n))


KERNELS = ("fwd", "dq", "dkdv", "gemm")
# Windows' backward through scratch P^T and dS^T (the dq kernel stores them, the GEMM kernel
# reads them; see the module docstring). Timed on an H200 (SeMask-B window 12, bf16, batch 16,
# 2026-11-27, 963d38c; both at the tiles of then): stage 0 1.78 ms against 2.02 ms for dk/dv,
# stage 2 0.343 against 0.529 ms. False: dk/dv recomputing the scores, as long global maps do.
SCRATCH_BACKWARD = True


def _classes(K: int) -> dict:
    """The K classes as a head tile BLOCK_K and, where that pads less (TAIL), a tail tile
    BLOCK_K2 (``common.head_tail``): 150 -> 128 + 32 columns instead of 256; 19 -> 32."""
    head, tail, has_tail = head_tail(K)
    return dict(BLOCK_K=head, BLOCK_K2=tail, TAIL=has_tail)


def _width(classes: dict) -> int:
    """Class columns of :func:`_classes`' tiles: head plus tail (150 -> 160)."""
    return classes["BLOCK_K"] + classes["BLOCK_K2"] * classes["TAIL"]


def _step(N: int, largest: int) -> int:
    """Tokens per step of a loop over a sequence: the largest power of two from ``largest``
    down to 16 whose padded length cdiv(N, b) * b is within 1.1x the shortest one (windows
    of 12: 144 tokens in steps of 16, not 64 + 64 + 64 with 48 masked; 272 in steps of 32;
    multiples of 64, e.g. 1024: ``largest``)."""
    sizes = [b for b in (64, 32, 16) if b <= largest]
    least = min(cdiv(N, b) * b for b in sizes)
    return next(b for b in sizes if cdiv(N, b) * b <= 1.1 * least)


def _config(N: int, K: int, C: int, kernel: str, dtype: torch.dtype) -> dict:
    """Block sizes and warps of ``kernel`` (one of KERNELS) for the sequences that the
    whole-row kernels leave here (windows > 8, global maps > 256 tokens): N tokens, K
    classes (tiles of :func:`_classes`, width W), C channels.

    Tiles of 64 rows where registers allow, since on sm_90 Triton issues wgmma (warpgroup
    MMA) only for dots with M >= 64 and falls back to mma.sync below (but see the timed
    exception at the end). As BLOCK_M query x BLOCK_N key rows: forward 64 x 64 (64 x 32
    when W = 256, 193..256 classes); dq 64 x 64, 64 x 32 when W > 64, 32 x 32 when W = 256;
    dk/dv (a program owns BLOCK_N keys and steps through the queries BLOCK_M at a time)
    64 x 64, 32 x 64 when W > 64, 32 x 32 when W = 256. fp32 (ieee dots on FMA units, the
    exact path rather than the fast one): 32 x 32, dq 16 x 16, 8 warps. The forward's and dq's key
    steps (but for the timed half-precision windows at the end) and dk/dv's query steps
    shrink where that pads N less (``_step``: windows of 12 step 16 tokens, so dk/dv there
    is 16 x 64), and the forward's and dq's last query block
    is a smaller tile where its rows fit one (``common.row_tail``: 144 rows = 64 + 64 + 16).
    dk/dv's keys per program stay as they are (windows of 12 in half precision: 3 x 64): a
    16-key last block on its 8 warps would hold its tiles 2-4 times, and 4 warps spill
    0.5-1.4 KB.
    Warps: for a chained dot (scores feeding P v) Triton puts every warp along the rows,
    so with fewer than 16 rows per warp the warps repeat each other's score tiles (and
    their exp2). The forward runs 4 warps; dk/dv 4 on 64 x 64 and 32 x 32 tiles, 8 on
    32 x 64 and 16 x 64 (there mma.sync splits the warps over the keys); dq keeps 8, its
    score tiles held twice (with 4 warps its dq accumulators spill 230-610 B). The 16-row
    last blocks of windows of 12 in dq repeat their 16 x 16 score tiles 4x: one block in
    three.
    fwd and dkdv split C over programs and recompute the scores per chunk: their BLOCK_C is
    the power of two (forward 32..128, 32..64 for windows (N <= 256) or W <= 64; dk/dv
    64..128, 64 for W > 160 or W <= 64; fp32 32..64) minimising the work per (query, key)
    pair, chunks * (score work + padded channel work). dq loops over C inside (dP needs
    every channel) in the chunk of 64, 32 or 16 that pads C least.
    Chosen from ``ptxas -v`` for sm_90 (register counts, at most a few dozen bytes of
    spills at bf16, wgmma count) and the TTGIR layouts, not from timings, except the
    half-precision windows (N <= 256) with class tiles of W <= 192, timed on an H200
    (SeMask-B stage 0, N 144, K 150, C 128, bf16, batch 16, CUDA graph replay; runs of
    2026-11-27, ``benchmarks/results/h200-2026-11-27-963d38c``, call 3, with the step
    tails): forward 64 x 64 tiles (144 keys = 2 x 64 + 16), channel chunks of 128, 4
    warps: 0.257 ms against 0.343 ms for the 32 x 32 tiles timed best before (without
    step tails; 0.500 ms with them: 218 registers instead of 124 as launched), 0.374 ms
    for 64 x 128 on 8 warps; dq 64 x 128 (keys 128 + 16), channel chunks of 64, 8 warps,
    in the scratch backward with :func:`_gemm_config`'s tiles: 1.00 ms for the whole
    backward against 1.61 ms with the 64 x 16 steps of ``_step`` (1.05 ms 64 x 64, 1.23 ms
    64 x 32; sm_90: 255 registers and 48 B of spills at 64 x 128, 241 and none at
    64 x 16; with 161..192 class columns, K 171 say, 64 x 128 spills 116 B, so there
    64 x 64, none). Other K, C and windows are untimed; windows with 193..256 classes (one
    256-column class tile) keep the smaller tiles below (the forward's 32 x 32 on 4 warps,
    timed at K 150 on 64a1d89: 0.345 ms; 40 B of spills at K 256). dq's DQ_IN_GEMM (dq
    computed by the GEMM kernel in the scratch backward, see the module docstring) is off
    until timed.
    """
    if kernel == "gemm":
        return _gemm_config(C, K, dtype)
    fp32 = dtype == torch.float32
    classes = _classes(K)
    width = _width(classes)
    widest = width > 192  # one 256-column tile: smaller blocks
    window = N <= semantic_window.MAX_TOKENS and not fp32  # half-precision windows: timed
    if kernel == "dq":
        sizes = (32, 16) if fp32 else (64, 32, 16)
        block_c = min(sizes, key=lambda bc: (cdiv(C, bc) * bc, -bc))
        if window and not widest:  # timed (see the docstring); 128 spills 116 B at W 192
            block_n = 128 if width <= 160 else 64
        else:
            block_n = _step(N, 16 if fp32 else 32 if width > 64 else 64)
        return dict(BLOCK_M=16 if fp32 else 32 if widest else 64, BLOCK_N=block_n,
                    BLOCK_C=block_c, **classes, num_warps=warps(8), num_stages=2,
                    DQ_IN_GEMM=False)
    backward = kernel == "dkdv"
    block_n = 32 if fp32 or widest else 64
    block_m = 32 if fp32 or (backward and width > 64) else 64
    if backward:  # the step of dk/dv's query loop (its keys per program stay)
        block_m = _step(N, block_m)
    elif window:
        tile = 32 if widest else 64
        return dict(BLOCK_M=tile, BLOCK_N=tile, BLOCK_C=min(128, _pow2(C)), **classes,
                    num_warps=warps(4), num_stages=2)
    else:  # the step of the forward's key loop
        block_n = _step(N, block_n)
    score_cost = (2 if backward else 1) * width
    chan_cost = 2 if backward else 1
    if fp32:
        cands = (32, 64)
    elif backward:  # 128 channels spill beside > 160 class columns or on 4 warps
        cands = (64,) if width > 160 or width <= 64 else (64, 128)
    else:  # 128 channels spill registers beside windowed rows or narrow class tiles
        cands = (32, 64) if N <= 256 or width <= 64 else (32, 64, 128)
    block_c = min(cands, key=lambda bc: (cdiv(C, bc) * (score_cost + chan_cost * bc), bc))
    block_c = min(block_c, _pow2(C))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_C=block_c, **classes,
                num_warps=warps(8 if fp32 or (backward and 64 < width <= 192) else 4),
                num_stages=2)


def _gemm_config(C: int, K: int, dtype: torch.dtype) -> dict:
    """Tiles of the GEMM kernel: BLOCK_N rows per program (keys; queries in dq's column,
    with dq's DQ_IN_GEMM), the other tokens BLOCK_M at a time, dv's channel chunks BLOCK_C,
    dk's and dq's class tiles (:func:`_classes`). Half precision: 64 x 64
    on 4 warps, chunks of 128, timed best on an H200 (sweep of 2026-11-27 at 963d38c,
    SeMask-B window 12, bf16, batch 16; the dq kernel at its 64 x 16 tiles then): stage 0
    (C 128) 1.633 ms for the backward against 1.794 ms with the 64-key x 16-query steps
    on 8 warps chosen before from ptxas, stage 2 (C 512) 0.316 against 0.343 ms; with
    128-query steps 1.623 ms (4 warps) and 1.693 ms (8). ptxas for sm_90 reports 255
    registers and 248 B of spills for it (the 8-warp 16-query steps: 123, none). With more
    than 160 class columns it spills 388 B (K 171) to 528 B (K 200): there, and in fp32,
    the 16-query steps on 8 warps, from ptxas, not timed. SPLIT (off until timed): dv and dk
    (and dq, with DQ_IN_GEMM) as two launches (``PART`` 1 and 2) of the same tiles; at
    64 x 64 on 4 warps, K 150, ptxas gives the dv launch 126 registers and the dk launch
    255, neither spilling. (These register counts are of unaligned K 150 rows; the fused
    model's K 160 rows build to 142 registers in one launch, no spills.)"""
    classes = _classes(K)
    fp32 = dtype == torch.float32
    timed = not fp32 and _width(classes) <= 160  # the 64 x 64 tiles on 4 warps
    return dict(BLOCK_N=32 if fp32 else 64, BLOCK_M=64 if timed else 16,
                BLOCK_C=min(64 if fp32 else 128, _pow2(C)), **classes,
                num_warps=warps(4 if timed else 8), num_stages=2, SPLIT=False)


def _tiles(N: int, K: int, C: int, kernel: str, dtype: torch.dtype) -> dict:
    """:func:`_config` with the tails of the launch: forward and dq, their last query block
    (``row_tail``) and last key step (``step_tail``); dk/dv and the GEMM kernel, their last
    query step."""
    cfg = _config(N, K, C, kernel, dtype)
    if kernel in ("fwd", "dq"):
        return dict(cfg, **row_tail(N, cfg["BLOCK_M"]), **step_tail(N, cfg["BLOCK_N"]))
    return dict(cfg, **step_tail(N, cfg["BLOCK_M"]))


def scratch_fits(N: int, window: int) -> bool:
    """Whether the scratch backward can take these sequences: windows (at most 256 tokens:
    N x N scratch per window)."""
    return window > 0 and N <= semantic_window.MAX_TOKENS


def _scratch(N: int, window: int) -> bool:
    """Whether the backward of these sequences goes through the scratch P^T and dS^T: where
    :func:`scratch_fits`, with SCRATCH_BACKWARD."""
    return SCRATCH_BACKWARD and scratch_fits(N, window)


def _geometry(q: torch.Tensor, window: int):
    """(S, N, Hp, Wp, nWc, nW): sequences, tokens per sequence and window grid."""
    B, Hp, Wp, _ = q.shape
    if window:
        nWc, nW = Wp // window, (Hp // window) * (Wp // window)
        return B * nW, window * window, Hp, Wp, nWc, nW
    return B, Hp * Wp, Hp, Wp, 1, 1


def _row64(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether element offsets need int64."""
    return max(q.numel(), v.numel()) >= 2 ** 31


def _flags(q: torch.Tensor, v: torch.Tensor) -> dict:
    """Kernel flags shared by every launch: ROW64 (int64 offsets); PREC: "ieee" keeps fp32
    dots exact (no TF32); UPCAST: bf16 in the CPU interpreter."""
    interpreted = q.device.type == "cpu"
    return dict(ROW64=_row64(q, v), PREC="ieee" if q.dtype == torch.float32 else "tf32",
                UPCAST=interpreted and q.dtype == torch.bfloat16)


def _online(N: int, window: int) -> bool:
    """Whether sequences of N tokens run on this module's online-softmax kernels."""
    return not (semantic_gemm.supports(N, window) or semantic_window.supports(N, window))


def reasons(tensors, params: dict) -> list[str]:
    """Why these kernels cannot run ``[q, k, v]`` with ``params['window']`` (empty: they can)."""
    q, k, v = tensors
    window = params.get("window", 0)
    why = []
    if len({t.dtype for t in (q, k, v)}) > 1:
        why.append(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if q.dtype not in DTYPES:
        why.append(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    if len({t.device for t in (q, k, v)}) > 1:
        why.append("q, k, v are on different devices")
    if q.dim() != 4 or v.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        why.append(f"expected q, k [B, Hp, Wp, K] and v [B, Hp, Wp, C], got "
                   f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        return why
    if q.shape[-1] > MAX_K:
        why.append(f"K = {q.shape[-1]} classes exceeds the kernel's limit {MAX_K}")
    if any(t.numel() == 0 for t in (q, k, v)):
        why.append("empty input")
    if not all(t.is_contiguous() for t in (q, k, v)):
        why.append("q, k, v must be contiguous")
    # (the map being a multiple of the window is the op's input check: backend choice sees
    # the map sizes as ops.backend.MAP_DIM, a multiple of windows up to 16 only)
    if not isinstance(window, int) or window < 0:
        why.append(f"window must be an int >= 0, got {window!r}")
    elif q.dtype == torch.float32 and common.old_triton_on_hopper(q) and \
            _online(_geometry(q, window)[1], window):
        why.append("fp32 on sm_90 with windows > 8 or global maps needs Triton >= 3.3 (3.2 "
                   "fails to build the online dk/dv kernel, which long global maps use)")
    return why


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int):
    """q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> (out [B, Hp, Wp, C], lse fp32 [B, nW, N])."""
    S, N, Hp, Wp, nWc, nW = _geometry(q, window)
    if semantic_gemm.supports(N, window):
        return semantic_gemm.forward(q, k, v)
    KD, C = q.shape[-1], v.shape[-1]
    out = torch.empty_like(v)
    lse = torch.empty(q.shape[0], S // q.shape[0], N, device=q.device, dtype=torch.float32)
    flags = _flags(q, v)
    if semantic_window.supports(N, window):
        with on_device(q):
            semantic_window.forward(q, k, v, out, lse, window, (S, N, Hp, Wp, nWc, nW), flags)
        return out, lse
    cfg = _tiles(N, KD, C, "fwd", q.dtype)
    num_m = cdiv(N, cfg["BLOCK_M"])
    with on_device(q):
        _semantic_fwd_kernel[(num_m * S, cdiv(C, cfg["BLOCK_C"]))](
            q, k, v, out, lse, N, KD, C, Hp, Wp, nWc, nW, num_m,
            WIN=window, **flags, **cfg)
    return out, lse


def backward(dout, q, k, v, out, lse, window: int):
    """Gradients (dq, dk, dv) of :func:`forward`, recomputing P from q, k and lse."""
    S, N, Hp, Wp, nWc, nW = _geometry(q, window)
    KD, C = q.shape[-1], v.shape[-1]
    dout = dout.to(v.dtype).contiguous()
    lse = lse.contiguous()
    if semantic_gemm.supports(N, window):
        return semantic_gemm.backward(dout, q, k, v, lse)
    flags = _flags(q, v)
    if semantic_window.supports(N, window):
        with on_device(q):
            return semantic_window.backward(dout, q, k, v, lse, window, (S, N, Hp, Wp, nWc, nW),
                                            flags)
    scratch = _scratch(N, window)
    cfg = _tiles(N, KD, C, "gemm" if scratch else "dkdv", q.dtype)
    dq_cfg = _tiles(N, KD, C, "dq", q.dtype)
    num_m = cdiv(N, dq_cfg["BLOCK_M"])
    num_n = cdiv(N, cfg["BLOCK_N"])
    num_c = cdiv(C, cfg["BLOCK_C"])
    dk_atomic = num_c > 1 and not scratch
    if dk_atomic:
        alert_not_deterministic("semask semantic_attention backward (triton: dk by channel chunk)")
    dq, dv = torch.empty_like(q), torch.empty_like(v)
    dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32) if dk_atomic else torch.empty_like(k)
    delta = torch.empty_like(lse)
    # P^T and dS^T [sequences, N, N] in q's dtype (the dtype the dots take them in); without
    # the scratch path dq stands in for them, never touched
    pt, dst = ((torch.empty(S, N, N, device=q.device, dtype=q.dtype) for _ in range(2))
               if scratch else (dq, dq))
    args = (N, KD, C, Hp, Wp, nWc, nW)
    # dq from the scratch dS^T in the GEMM kernel (DQ_IN_GEMM) rather than in the dq kernel
    dq_in_gemm = dq_cfg.pop("DQ_IN_GEMM") and scratch
    with on_device(q):
        _semantic_bwd_dq_kernel[(num_m * S,)](q, k, v, out, dout, lse, delta, dq, pt, dst, *args,
                                              num_m, WIN=window, STORE_PS=scratch,
                                              WITH_DQ=not dq_in_gemm, **flags, **dq_cfg)
        if scratch:
            # dv (grid columns 0 .. num_c - 1), dk (column num_c) and with dq_in_gemm dq (one
            # more) in one launch, or split into dv and the rest
            classes = 1 + dq_in_gemm
            parts = ((1, num_c), (2, classes)) if cfg.pop("SPLIT") else ((0, num_c + classes),)
            for part, columns in parts:
                _semantic_bwd_gemm_kernel[(num_n * S, columns)](
                    q, k, dout, pt, dst, dq, dk, dv, *args, num_n, num_c, WIN=window, PART=part,
                    WITH_DQ=dq_in_gemm, **flags, **cfg)
        else:
            _semantic_bwd_dkdv_kernel[(num_n * S, num_c)](q, k, v, dout, lse, delta, dk, dv,
                                                          *args, num_n, WIN=window,
                                                          DK_ATOMIC=dk_atomic, **flags, **cfg)
    return dq, dk.to(k.dtype), dv
