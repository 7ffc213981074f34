"""Global SeMask semantic attention on batched GEMMs plus Triton whole-row softmax kernels.

What it computes: :mod:`semask.kernels.semantic_attention` in global mode (window = 0;
same tensors, layouts and fp32 lse [B, 1, N]) for maps of N <= MAX_TOKENS tokens, where
the N x N scores of a few images fit in memory and every product is a large dense GEMM.
Why: on an H200 (SeMask-T 512, bf16, batch 16; benchmarks/results/h200-2026-11-26-60040ca)
eager PyTorch ran the global stages' products on cuBLAS at ~190 TFLOP/s, while the fused
online-softmax kernels reached ~50 (forward + backward 0.28x eager). This path keeps
cuBLAS (``torch.bmm``) for the products and fuses what lies between them; like the fused
kernels it keeps only lse for the backward (eager keeps P, N x N per image).

Per chunk of ``images_per_pass`` images (chunk * N * N <= CHUNK_ELEMENTS, bounding the
scratch buffers):
Forward:  S = q k^T (bmm, rounded to q's dtype as eager rounds it);
          ``_softmax_rows_kernel``: P = softmax(S) in fp32, stored over S in q's dtype,
          lse = max + log(sum);  out = P v (bmm).
Backward (P recomputed from S and lse, Dao 2023, Alg. 2 with whole rows):
          S = q k^T, dP = dO v^T (bmm);
          ``_softmax_grad_rows_kernel``: P = exp(S - lse), D = rowsum(P * dP) (fp32),
          dS = P * (dP - D) stored over dP, P stored over S (q's dtype);
          dv = P^T dO, dq = dS k, dk = dS^T q (bmm).
Grid of both row kernels (cdiv(rows, BLOCK_R),): a program owns BLOCK_R whole score rows
(BLOCK_N = next power of two >= N, masked) and reads each before it overwrites it.

Numerics: the scores and dP are rounded to the input dtype before the fp32 softmax, as in
eager PyTorch (whose error the accuracy rule measures against); so lse is the log-sum-exp
of the rounded scores. fp32 products follow ``torch.backends.cuda.matmul.allow_tf32``
(off by default) as eager's do. The products write into preallocated tensors (``out=``),
which autocast leaves alone: results in the inputs' dtype under autocast too.

Limits: window = 0, N <= MAX_TOKENS (one row per program at most 4096 wide); inputs
as :func:`semask.kernels.semantic_attention.reasons` accepts.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import cdiv, next_pow2, on_device, row_block

MAX_TOKENS = 4096
CHUNK_ELEMENTS = 2 ** 25  # score elements per pass (64 MiB in bf16, 128 MiB in fp32)
TILE_ELEMENTS = 4096  # BLOCK_R * BLOCK_N of a program: 16 fp32 per thread on 8 warps
NUM_WARPS = 8  # (tile and warps not tuned on a GPU yet: benchmarks/sweep.py sweeps them)


@triton.jit
def _softmax_rows_kernel(S, LSE, R, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask, offs = row_block(tl.program_id(0), R, N, BLOCK_R, BLOCK_N)
    s = tl.load(S + offs, mask=mask, other=float("-inf")).to(tl.float32)
    m = tl.max(s, 1)
    m = tl.where(rows < R, m, 0.0)  # rows past the end: no -inf - -inf, no 0 / 0
    p = tl.exp(s - m[:, None])
    total = tl.where(rows < R, tl.sum(p, 1), 1.0)
    tl.store(S + offs, (p / total[:, None]).to(S.dtype.element_ty), mask=mask)
    tl.store(LSE + rows, m + tl.log(total), mask=rows < R)


@triton.jit
def _softmax_grad_rows_kernel(S, DP, LSE, R, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask, offs = row_block(tl.program_id(0), R, N, BLOCK_R, BLOCK_N)
    s = tl.load(S + offs, mask=mask, other=float("-inf")).to(tl.float32)
    dp = tl.load(DP + offs, mask=mask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + rows, mask=rows < R, other=0.0)
    p = tl.exp(s - lse[:, None])
    delta = tl.sum(p * dp, 1)
    tl.store(DP + offs, (p * (dp - delta[:, None])).to(DP.dtype.element_ty), mask=mask)
    tl.store(S + offs, p.to(S.dtype.element_ty), mask=mask)


def supports(N: int, window: int) -> bool:
    """Whether sequences of N tokens run here: global maps of at most MAX_TOKENS."""
    return window == 0 and N <= MAX_TOKENS


def images_per_pass(B: int, N: int) -> int:
    """Images whose scores one pass holds: chunk * N * N <= CHUNK_ELEMENTS, at least 1."""
    return max(1, min(B, CHUNK_ELEMENTS // (N * N)))


def _rows_launch(kernel, buffers, lse, rows: int, N: int) -> None:
    """Launch a row kernel over ``rows`` score rows of N columns."""
    block_n = next_pow2(N)
    block_r = max(1, TILE_ELEMENTS // block_n)
    kernel[(cdiv(rows, block_r),)](*buffers, lse, rows, N, BLOCK_R=block_r,
                                          BLOCK_N=block_n, num_warps=NUM_WARPS)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, Hp, Wp, D] -> [B, N, D] (a view)."""
    return x.view(x.shape[0], -1, x.shape[-1])


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k [B, Hp, Wp, K], v [B, Hp, Wp, C] -> (out [B, Hp, Wp, C], lse fp32 [B, 1, N])."""
    B, N = q.shape[0], q.shape[1] * q.shape[2]
    qf, kf, vf = _flat(q), _flat(k), _flat(v)
    out = torch.empty_like(v)
    lse = torch.empty(B, 1, N, device=q.device, dtype=torch.float32)
    chunk = images_per_pass(B, N)
    scores = q.new_empty(chunk, N, N)
    with on_device(q):
        for b0 in range(0, B, chunk):
            b1 = min(B, b0 + chunk)
            s = scores[:b1 - b0]
            torch.bmm(qf[b0:b1], kf[b0:b1].transpose(1, 2), out=s)
            _rows_launch(_softmax_rows_kernel, (s,), lse[b0:b1], (b1 - b0) * N, N)
            torch.bmm(s, vf[b0:b1], out=_flat(out)[b0:b1])
    return out, lse


def backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             lse: torch.Tensor):
    """Gradients (dq, dk, dv) of :func:`forward` from dout [B, Hp, Wp, C] (q's dtype,
    contiguous) and its lse."""
    B, N = q.shape[0], q.shape[1] * q.shape[2]
    qf, kf, vf, dof = _flat(q), _flat(k), _flat(v), _flat(dout)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    chunk = images_per_pass(B, N)
    scores, dscores = q.new_empty(chunk, N, N), q.new_empty(chunk, N, N)
    with on_device(q):
        for b0 in range(0, B, chunk):
            b1 = min(B, b0 + chunk)
            p, ds = scores[:b1 - b0], dscores[:b1 - b0]
            torch.bmm(qf[b0:b1], kf[b0:b1].transpose(1, 2), out=p)
            torch.bmm(dof[b0:b1], vf[b0:b1].transpose(1, 2), out=ds)
            _rows_launch(_softmax_grad_rows_kernel, (p, ds), lse[b0:b1], (b1 - b0) * N, N)
            torch.bmm(p.transpose(1, 2), dof[b0:b1], out=_flat(dv)[b0:b1])
            torch.bmm(ds, kf[b0:b1], out=_flat(dq)[b0:b1])
            torch.bmm(ds.transpose(1, 2), qf[b0:b1], out=_flat(dk)[b0:b1])
    return dq, dk, dv
