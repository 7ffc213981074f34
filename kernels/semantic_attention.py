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

Windows of up to 8 x 8 and global maps of up to 256 tokens run on the whole-row kernels
of :mod:`semask.kernels.semantic_window` (see its ``supports``); this module runs the
others (windows 9..16 such as 12 x 12, global maps such as 32 x 32) with the online
softmax below, and :func:`forward`/:func:`backward` dispatch between the two.

One "sequence" s in [0, B*nW) is one window (or one image when global). Block sizes:
BLOCK_M query tokens, BLOCK_N key tokens, BLOCK_K = K padded to a power of two (masked),
BLOCK_C channels of v/out; chosen by ``_config`` (no autotuning yet).

Forward ``_semantic_fwd_kernel``, grid (num_m_blocks * S, num_c_chunks): one program owns BLOCK_M
query rows and one BLOCK_C channel chunk, loops over all key blocks with the online
softmax of flash attention (Dao et al. 2022, Alg. 1) and writes its out chunk; the c = 0
program also writes lse. Scores are recomputed per channel chunk (cost K per chunk, cheap
next to C when C is split in few chunks).

Backward (flash attention 2, Dao 2023, Alg. 2, with P recomputed from q, k and lse):
    D  = rowsum(dO * O)                    (``_semantic_bwd_delta_kernel``, grid (m blocks * S))
    P  = exp(q k^T - lse),  dP = dO v^T,  dS = P * (dP - D)
    dv = P^T dO,  dk = dS^T q,  dq = dS k.
``_semantic_bwd_kernel``, grid (num_n_blocks * S, num_c_chunks): a program owns BLOCK_N key rows
and one channel chunk c, loops over all query blocks and accumulates dv[:, c] (complete,
stored directly) and dk. dP is a sum over channel chunks, so dS splits linearly:
dS = sum_c P * dP_c - P * D, with the -P*D term taken by chunk 0. Each program's partial
dq (sequences here span several key blocks) and partial dk (if several channel chunks) are
added with fp32 atomics (relaxed) into zeroed fp32 buffers, cast to the input dtype at the
end; the atomics make the last bits of dq (and dk) non-deterministic.

Limits: K <= 256 (BLOCK_K = next power of two, registers); any C (chunked); fp32, fp16,
bf16 (q, k, v of one dtype); contiguous inputs; int32 offsets (int64 when a tensor has
>= 2^31 elements). In Triton's CPU interpreter bf16 dots are wrong (Triton 3.8), so there
the already-rounded bf16 operands are widened to fp32 before each dot (``UPCAST``);
compiled GPU code uses bf16 dots.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import semantic_window
from .common import dot
from .semantic_window import _rows

MAX_K = 256
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _semantic_fwd_kernel(Q, Kt, V, O, LSE, N, KD, C, Hp, Wp, nWc, nW, num_m,
                         WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                         PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    s = pid // num_m
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < N
    mask_k = offs_k < KD
    mask_c = offs_c < C
    rows_m = _rows(s, offs_m, Hp, Wp, nWc, nW, WIN, ROW64)
    q = tl.load(Q + rows_m[:, None] * KD + offs_k[None, :],
                mask=mask_m[:, None] & mask_k[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows_n = _rows(s, offs_n, Hp, Wp, nWc, nW, WIN, ROW64)
        k = tl.load(Kt + rows_n[:, None] * KD + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        scores = dot(q, tl.trans(k), PREC, UPCAST)
        scores = tl.where(mask_n[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + rows_n[:, None] * C + offs_c[None, :],
                    mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(O + rows_m[:, None] * C + offs_c[None, :], out.to(O.dtype.element_ty),
             mask=mask_m[:, None] & mask_c[None, :])
    if pid_c == 0:
        tl.store(LSE + s * N + offs_m, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _semantic_bwd_delta_kernel(O, DO, DELTA, N, C, Hp, Wp, nWc, nW, num_m,
                               WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    s = pid // num_m
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    rows_m = _rows(s, offs_m, Hp, Wp, nWc, nW, WIN, ROW64)
    delta = tl.zeros([BLOCK_M], tl.float32)
    for start_c in range(0, C, BLOCK_C):
        offs_c = start_c + tl.arange(0, BLOCK_C)
        mask = mask_m[:, None] & (offs_c < C)[None, :]
        ptr = rows_m[:, None] * C + offs_c[None, :]
        o = tl.load(O + ptr, mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + ptr, mask=mask, other=0.0).to(tl.float32)
        delta += tl.sum(o * do, 1)
    tl.store(DELTA + s * N + offs_m, delta, mask=mask_m)


@triton.jit
def _semantic_bwd_kernel(Q, Kt, V, DO, LSE, DELTA, DQ, DK, DV, N, KD, C, Hp, Wp, nWc, nW, num_n,
                         WIN: tl.constexpr, ROW64: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                         PREC: tl.constexpr, UPCAST: tl.constexpr,
                         DK_ATOMIC: tl.constexpr):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    s = pid // num_n
    offs_n = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    mask_k = offs_k < KD
    mask_c = offs_c < C
    mask_nk = mask_n[:, None] & mask_k[None, :]
    mask_nc = mask_n[:, None] & mask_c[None, :]
    rows_n = _rows(s, offs_n, Hp, Wp, nWc, nW, WIN, ROW64)
    k = tl.load(Kt + rows_n[:, None] * KD + offs_k[None, :], mask=mask_nk, other=0.0)
    v = tl.load(V + rows_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
    # chunk 0 carries the -P*D term of dS (see module docstring)
    delta_weight = (pid_c == 0).to(tl.float32)

    dk = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        mask_mk = mask_m[:, None] & mask_k[None, :]
        rows_m = _rows(s, offs_m, Hp, Wp, nWc, nW, WIN, ROW64)
        q = tl.load(Q + rows_m[:, None] * KD + offs_k[None, :], mask=mask_mk, other=0.0)
        # padded query rows get lse = +inf, hence P = 0
        lse = tl.load(LSE + s * N + offs_m, mask=mask_m, other=float("inf"))
        delta = tl.load(DELTA + s * N + offs_m, mask=mask_m, other=0.0)
        do = tl.load(DO + rows_m[:, None] * C + offs_c[None, :],
                     mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        scores = dot(q, tl.trans(k), PREC, UPCAST)
        p = tl.exp(scores - lse[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dv += dot(tl.trans(p.to(do.dtype)), do, PREC, UPCAST)
        dp = dot(do, tl.trans(v), PREC, UPCAST)
        ds = p * (dp - delta_weight * delta[:, None])
        dk += dot(tl.trans(ds.to(q.dtype)), q, PREC, UPCAST)
        dq = dot(ds.to(k.dtype), k, PREC, UPCAST)
        tl.atomic_add(DQ + rows_m[:, None] * KD + offs_k[None, :], dq, mask=mask_mk,
                      sem="relaxed")

    tl.store(DV + rows_n[:, None] * C + offs_c[None, :], dv.to(DV.dtype.element_ty), mask=mask_nc)
    dk_ptr = DK + rows_n[:, None] * KD + offs_k[None, :]
    if DK_ATOMIC:
        tl.atomic_add(dk_ptr, dk, mask=mask_nk, sem="relaxed")
    else:
        tl.store(dk_ptr, dk.to(DK.dtype.element_ty), mask=mask_nk)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def _config(N: int, K: int, C: int, backward: bool, dtype: torch.dtype) -> dict:
    """Block sizes and warps for sequences of N > 256 tokens, K classes, C channels.

    BLOCK_C is the power of two (32..256 forward, 32..128 backward, 32..64 fp32) minimising
    the work per (query, key) pair, chunks * (score recompute + padded channel work).
    BLOCK_M/N are 64; 32 for fp32 (ieee dots run on FMA units) and for the backward with
    BLOCK_K > 64, whose k/dk and q/dq tiles spill registers at 64. Register counts of
    ``ptxas -v`` for sm_90 guided these choices, not timings.
    """
    fp32 = dtype == torch.float32
    block_k = _pow2(K)
    block_mn = 32 if fp32 or (backward and block_k > 64) else 64
    score_cost = (3 if backward else 1) * block_k
    chan_cost = 2 if backward else 1
    cands = (32, 64) if fp32 else (32, 64, 128) if backward else (32, 64, 128, 256)
    block_c = min(cands, key=lambda bc: (triton.cdiv(C, bc) * (score_cost + chan_cost * bc), bc))
    block_c = min(block_c, _pow2(C))
    tile = block_mn * (block_k + block_c) * (2 if backward else 1)
    return dict(BLOCK_M=block_mn, BLOCK_N=block_mn, BLOCK_K=block_k, BLOCK_C=block_c,
                num_warps=8 if fp32 or tile > 64 * 128 else 4, num_stages=2)


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


def _on_device(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


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
    if not isinstance(window, int) or window < 0:
        why.append(f"window must be an int >= 0, got {window!r}")
    elif window and (q.shape[1] % window or q.shape[2] % window):
        why.append(f"map {tuple(q.shape[1:3])} is not a multiple of window {window}")
    return why


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int):
    """q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> (out [B, Hp, Wp, C], lse fp32 [B, nW, N])."""
    S, N, Hp, Wp, nWc, nW = _geometry(q, window)
    KD, C = q.shape[-1], v.shape[-1]
    out = torch.empty_like(v)
    lse = torch.empty(q.shape[0], S // q.shape[0], N, device=q.device, dtype=torch.float32)
    flags = _flags(q, v)
    if semantic_window.supports(N, window):
        with _on_device(q):
            semantic_window.forward(q, k, v, out, lse, window, (S, N, Hp, Wp, nWc, nW), flags)
        return out, lse
    cfg = _config(N, KD, C, backward=False, dtype=q.dtype)
    num_m = triton.cdiv(N, cfg["BLOCK_M"])
    with _on_device(q):
        _semantic_fwd_kernel[(num_m * S, triton.cdiv(C, cfg["BLOCK_C"]))](
            q, k, v, out, lse, N, KD, C, Hp, Wp, nWc, nW, num_m,
            WIN=window, **flags, **cfg)
    return out, lse


def backward(dout, q, k, v, out, lse, window: int):
    """Gradients (dq, dk, dv) of :func:`forward`, recomputing P from q, k and lse."""
    S, N, Hp, Wp, nWc, nW = _geometry(q, window)
    KD, C = q.shape[-1], v.shape[-1]
    dout = dout.to(v.dtype).contiguous()
    lse = lse.contiguous()
    flags = _flags(q, v)
    if semantic_window.supports(N, window):
        with _on_device(q):
            return semantic_window.backward(dout, q, k, v, lse, window, (S, N, Hp, Wp, nWc, nW),
                                            flags)
    cfg = _config(N, KD, C, backward=True, dtype=q.dtype)
    num_m = triton.cdiv(N, cfg["BLOCK_M"])
    num_n = triton.cdiv(N, cfg["BLOCK_N"])
    num_c = triton.cdiv(C, cfg["BLOCK_C"])
    dk_atomic = num_c > 1
    f32 = dict(device=q.device, dtype=torch.float32)
    dq = torch.zeros(q.shape, **f32)
    dk = torch.zeros(k.shape, **f32) if dk_atomic else torch.empty_like(k)
    dv = torch.empty_like(v)
    delta = torch.empty_like(lse)
    with _on_device(q):
        _semantic_bwd_delta_kernel[(num_m * S,)](
            out, dout, delta, N, C, Hp, Wp, nWc, nW, num_m, WIN=window, ROW64=flags["ROW64"],
            BLOCK_M=cfg["BLOCK_M"], BLOCK_C=cfg["BLOCK_C"], num_warps=4)
        _semantic_bwd_kernel[(num_n * S, num_c)](
            q, k, v, dout, lse, delta, dq, dk, dv, N, KD, C, Hp, Wp, nWc, nW, num_n,
            WIN=window, DK_ATOMIC=dk_atomic, **flags, **cfg)
    return dq.to(q.dtype), dk.to(k.dtype), dv
