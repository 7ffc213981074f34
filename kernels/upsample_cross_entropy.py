"""Bilinear upsampling fused with cross-entropy in Triton: the segmentation loss without
full-resolution tensors.

What it computes (the loss of :mod:`semask.models.loss`): for logits [B, K, h, w] and a
target [B, H, W] (H >= h, W >= w),
    z[b, :, y, x] = bilinear(logits, align_corners=False)[b, :, y, x]   (fp32)
    loss = sum over pixels with target != ignore of  logsumexp(z) - z[target],
and, on request, the gradient of that sum with respect to the logits,
    dlogits = U^T (softmax(z) - onehot(target))   (0 at ignored pixels),
where U is the upsampling (a linear map). Neither z nor its gradient is ever stored: per
loss at batch 16, 512 x 512 and 150 classes the unfused loss writes and reads about 1.3 GB
(bf16) + 2 x 2.5 GB (fp32) of them.

Bilinear weights as PyTorch's ``upsample_bilinear2d`` (align_corners=False): source
coordinate src = max(scale * (y + 0.5) - 0.5, 0) with scale = h / H, y0 = floor(src),
y1 = min(y0 + 1, h - 1), weights (1 - (src - y0), src - y0); the same along x.

``_upsample_ce_kernel``, grid (B * row tiles * column tiles,): a program owns a TILE_Y x
TILE_X tile of output pixels (P of them). The low-resolution pixels they read lie in a
SPAN_Y x SPAN_X box (L slots, padded to a power of two); the tile's interpolation matrix
Wt [P, L] is built in registers, so that per chunk of BLOCK_K classes
    z = Wt @ logits[box, chunk]            (forward: online logsumexp over the chunks),
    dbox = Wt^T @ (softmax(z) - onehot)    (gradient: second pass, z recomputed),
are two small matrix products; ``dbox`` is added atomically (boxes of neighbouring tiles
overlap by a pixel) into an fp32 gradient. z at each pixel's target class comes from one
gather of that class's box logits per pixel (``_target_logits``; fp32 products), and every
exp is an exp2 of one fused multiply-add (``_exp_minus``): sm_90 SASS per class chunk
(ptxas, Triton 3.8, bf16, K 150, 8 x 8 tiles) 309 -> 191 instructions in the forward loop,
374 -> 298 in the gradient loop, since picking z[t] out of every chunk and the separate
subtract and scale per element went. Each program stores its partial loss sum and
its count of labels outside [0, K); the launcher adds them (deterministic loss; the
gradient's fp32 atomic sums are not bitwise reproducible) and asserts the count is 0 on
the device (no host sync).
One-pass variant (ONE_PASS, K <= ONE_PASS_MAX_K; not the default until timed): the classes
are a head tile and a tail tile (150 -> 128 + 32) whose z stay in registers, so exp(z - max)
is taken once per pixel and class and serves both the logsumexp and the gradient (softmax =
exp(z - max) / sum), with one product for z instead of two; sm_90 (ptxas, Triton 3.8, bf16,
K = 150, 8 x 8 tiles on 4 warps): 242 registers, no spills (two passes: 96).

Precision: logits are read in their dtype and every product accumulates in fp32; the
matrix products use tf32 inputs for half-precision logits (their values are exact in
tf32; the weights and softmax terms lose up to 2^-10 relative, as tensor cores drop the
low mantissa bits, finer than the bf16 rounding of the unfused loss's upsampled logits and
gradient; the weights of 2x, 4x, 8x upsampling are exact) and, for fp32 logits, three tf32
products per product (``tf32x3``: operands split into high and low tf32 parts, about fp32
accuracy; not on ROCm, where fp32 logits take the unfused loss).

Limits (``reasons``): fp32, fp16 or bf16 logits [B, K, h, w] and an int64 or int32 target
[B, H, W] with H >= h, W >= w (upsampling only) and at most MAX_SLOTS source pixels per
tile (no large downsampling ratios); fewer than 2^31 elements per tensor; ignore_index in
the int32 range; fp32 logits not on ROCm and not on sm_90 with Triton < 3.3 (3.2 fails to
build the kernel); labels are tested in the target's dtype (an int64 label beyond int32 is
out of range). The gradient is the loss's own (no double backward).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import common
from .common import (alert_not_deterministic, bilinear_axis, bilinear_source, cdiv, dot, head_tail,
                     next_pow2, on_device)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SLOTS = 128  # low-resolution box per tile; larger boxes (downsampling) are refused
# The one-pass kernel (every class's logits held at once; see the module docstring): off
# until timed on a GPU (benchmarks/sweep.py sweeps both); for at most ONE_PASS_MAX_K classes.
ONE_PASS = False
ONE_PASS_MAX_K = 256
_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _class_logits(X_b, box_offs, in_box, wt, k, K, hw, PREC: tl.constexpr):
    """z [P, len(k)] = Wt @ logits[box, classes k] in fp32 (0 at classes >= K)."""
    lo = tl.load(X_b + k[None, :].to(tl.int64) * hw + box_offs[:, None],
                 mask=in_box[:, None] & (k[None, :] < K), other=0.0).to(tl.float32)
    return dot(wt, lo, PREC, False)


@triton.jit
def _masked_logits(X_b, box_offs, in_box, wt, k, K, hw, PREC: tl.constexpr):
    """:func:`_class_logits` with -inf at classes >= K (for max and sum of exp)."""
    z = _class_logits(X_b, box_offs, in_box, wt, k, K, hw, PREC)
    return tl.where(k[None, :] < K, z, float("-inf"))


@triton.jit
def _target_logits(X_b, box_offs, in_box, wt, t, ok, hw):
    """z [P] at each pixel's target class t (0 where not ``ok``): one gather of the box's
    logits of that class per pixel and a row sum, in place of picking z[t] out of every
    class chunk."""
    lo = tl.load(X_b + t[:, None].to(tl.int64) * hw + box_offs[None, :],
                 mask=ok[:, None] & in_box[None, :], other=0.0).to(tl.float32)
    return tl.sum(wt * lo, 1)


@triton.jit
def _exp_minus(z, m):
    """exp(z - m[:, None]) as exp2 of one fused multiply-add per element (m scaled once
    per row)."""
    return tl.exp2(z * _LOG2E - (m * _LOG2E)[:, None])


@triton.jit
def _add_box_grad(DX_b, box_offs, in_box, wt, g, k, K, hw, PREC: tl.constexpr):
    """DX[box, classes k] += Wt^T @ g (fp32 atomics: boxes of neighbouring tiles overlap)."""
    dbox = dot(tl.trans(wt), g, PREC, False)
    tl.atomic_add(DX_b + k[None, :].to(tl.int64) * hw + box_offs[:, None], dbox,
                  mask=in_box[:, None] & (k[None, :] < K), sem="relaxed")


@triton.jit
def _pixel_grad(softmax, k, t, counted, K):
    """softmax - onehot(target) of the classes k; 0 at ignored pixels and classes >= K."""
    g = softmax - tl.where(k[None, :] == t[:, None], 1.0, 0.0)
    return tl.where(counted[:, None] & (k[None, :] < K), g, 0.0)


@triton.jit
def _upsample_ce_kernel(X, T, DX, PARTIAL, BAD, K, h, w, H, W, scale_y, scale_x, n_ty, n_tx,
                        ignore_index, TILE_Y: tl.constexpr, TILE_X: tl.constexpr,
                        SPAN_Y: tl.constexpr, SPAN_X: tl.constexpr, SLOTS: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_K2: tl.constexpr, TAIL: tl.constexpr,
                        ONE_PASS: tl.constexpr, GRAD: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // (n_ty * n_tx)
    ty = (pid // n_tx) % n_ty
    tx = pid % n_tx
    b64 = b.to(tl.int64)

    # output pixels of the tile
    p = tl.arange(0, TILE_Y * TILE_X)
    y = ty * TILE_Y + p // TILE_X
    x = tx * TILE_X + p % TILE_X
    valid = (y < H) & (x < W)
    # ignored and out-of-range labels judged in the target's dtype (an int64 label of
    # 2^32 + 1 must not pass as class 1), then int32
    t = tl.load(T + b64 * H * W + y * W + x, mask=valid, other=ignore_index)
    counted = valid & (t != ignore_index)
    tl.store(BAD + pid, tl.sum((counted & ((t < 0) | (t >= K))).to(tl.int32), 0))
    t = t.to(tl.int32)

    # the low-resolution box and the tile's interpolation matrix Wt [P, SLOTS]
    y_base = bilinear_source(ty * TILE_Y, scale_y).to(tl.int32)  # the box's first row (floor)
    x_base = bilinear_source(tx * TILE_X, scale_x).to(tl.int32)
    sy0, sy1, wy0, wy1 = bilinear_axis(y, h, scale_y, y_base)
    sx0, sx1, wx0, wx1 = bilinear_axis(x, w, scale_x, x_base)
    slot = tl.arange(0, SLOTS)
    ly = slot // SPAN_X
    lx = slot % SPAN_X
    wy = (tl.where(ly[None, :] == sy0[:, None], wy0[:, None], 0.0)
          + tl.where(ly[None, :] == sy1[:, None], wy1[:, None], 0.0))
    wx = (tl.where(lx[None, :] == sx0[:, None], wx0[:, None], 0.0)
          + tl.where(lx[None, :] == sx1[:, None], wx1[:, None], 0.0))
    wt = tl.where(valid[:, None], wy * wx, 0.0)
    src_y = y_base + ly
    src_x = x_base + lx
    in_box = (slot < SPAN_Y * SPAN_X) & (src_y < h) & (src_x < w)
    box_offs = src_y * w + src_x
    hw = h * w
    X_b = X + b64 * K * hw
    DX_b = DX + b64 * K * hw
    kk = tl.arange(0, BLOCK_K)
    z_t = _target_logits(X_b, box_offs, in_box, wt, t, counted & (t >= 0) & (t < K), hw)

    if ONE_PASS:  # every class at once (head tile, tail tile): one exp per pixel and class
        z = _masked_logits(X_b, box_offs, in_box, wt, kk, K, hw, PREC)
        m = tl.max(z, 1)
        if TAIL:
            k2 = BLOCK_K + tl.arange(0, BLOCK_K2)
            z2 = _masked_logits(X_b, box_offs, in_box, wt, k2, K, hw, PREC)
            m = tl.maximum(m, tl.max(z2, 1))
        e = _exp_minus(z, m)
        s = tl.sum(e, 1)
        if TAIL:
            e2 = _exp_minus(z2, m)
            s += tl.sum(e2, 1)
        lse = m + tl.log(s)
        tl.store(PARTIAL + pid, tl.sum(tl.where(counted, lse - z_t, 0.0), 0))
        if GRAD:
            inv_s = 1.0 / s
            _add_box_grad(DX_b, box_offs, in_box, wt,
                          _pixel_grad(e * inv_s[:, None], kk, t, counted, K), kk, K, hw, PREC)
            if TAIL:
                _add_box_grad(DX_b, box_offs, in_box, wt,
                              _pixel_grad(e2 * inv_s[:, None], k2, t, counted, K), k2, K, hw,
                              PREC)
    else:  # class chunks of BLOCK_K: online logsumexp, then a second pass for the gradient
        m = tl.full([TILE_Y * TILE_X], float("-inf"), tl.float32)
        s = tl.zeros([TILE_Y * TILE_X], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            z = _masked_logits(X_b, box_offs, in_box, wt, k, K, hw, PREC)
            m_new = tl.maximum(m, tl.max(z, 1))
            s = s * tl.exp(m - m_new) + tl.sum(_exp_minus(z, m_new), 1)
            m = m_new
        lse = m + tl.log(s)
        tl.store(PARTIAL + pid, tl.sum(tl.where(counted, lse - z_t, 0.0), 0))
        if GRAD:  # z recomputed
            for k0 in range(0, K, BLOCK_K):
                k = k0 + kk
                z = _class_logits(X_b, box_offs, in_box, wt, k, K, hw, PREC)
                _add_box_grad(DX_b, box_offs, in_box, wt,
                              _pixel_grad(_exp_minus(z, lse), k, t, counted, K), k, K, hw, PREC)


@functools.lru_cache(maxsize=64)
def _span(n_in: int, n_out: int, tile: int) -> int:
    """Source pixels that one tile of ``tile`` output coordinates reads, at most. Computed
    in float64 with a margin of a few fp32 ulps where a source coordinate lies next to an
    integer, so that the kernel's fp32 arithmetic (which may round differently there)
    never reaches outside the box."""
    o = torch.arange(n_out, dtype=torch.float64)
    src = torch.clamp_min((n_in / n_out) * (o + 0.5) - 0.5, 0)
    eps = 1e-6 * (src + 1)
    first = torch.floor(torch.clamp_min(src - eps, 0)).long()
    last = torch.clamp_max(torch.floor(src + eps).long() + 1, n_in - 1)
    starts = torch.arange(0, n_out, tile)
    ends = torch.clamp_max(starts + tile, n_out) - 1
    return int((last[ends] - first[starts]).max()) + 1


def _config(h: int, w: int, H: int, W: int, K: int, dtype: torch.dtype) -> dict:
    """Half-precision logits: tiles of 8 x 8 output pixels (a 4x upsampling reads a 4 x 4
    box: 16 slots), classes in chunks of 32, 4 warps (H200 sweep at SeMask-T 512, bf16:
    1.9 ms against 3.7-4.5 ms for 8 x 16 and 4 x 32 tiles with 8 warps; some 4-warp
    configurations of 128-pixel tiles fail to compile in Triton 3.6). fp32: 4 x 16 tiles,
    chunks of 16 (tf32x3 products need more registers), 8 warps. No register spills on
    sm_90 at 4x (ptxas). With :data:`ONE_PASS` (and K <= ONE_PASS_MAX_K) the classes are
    one head tile and a tail tile instead (``common.head_tail``: 150 -> 128 + 32)."""
    half = dtype != torch.float32
    tile_y = min(8 if half else 4, next_pow2(H))
    tile_x = max(min(8 if half else 16, next_pow2(W)), 16 // tile_y)  # P >= 16
    span_y, span_x = _span(h, H, tile_y), _span(w, W, tile_x)
    slots = max(16, next_pow2(span_y * span_x))
    return dict(TILE_Y=tile_y, TILE_X=tile_x, SPAN_Y=span_y, SPAN_X=span_x, SLOTS=slots,
                **class_tiles(K, ONE_PASS, 32 if K > 16 and half else 16), num_warps=4 if half else 8)


def class_tiles(K: int, one_pass: bool, block_k: int) -> dict:
    """How the kernel covers K classes: in one pass (``one_pass`` and K <= ONE_PASS_MAX_K)
    a head tile BLOCK_K and, where that pads less, a tail tile BLOCK_K2 (TAIL); else chunks
    of ``block_k`` in two passes."""
    if one_pass and K <= ONE_PASS_MAX_K:
        head, tail, has_tail = head_tail(K)
        return dict(BLOCK_K=head, BLOCK_K2=tail, TAIL=has_tail, ONE_PASS=True)
    return dict(BLOCK_K=block_k, BLOCK_K2=16, TAIL=False, ONE_PASS=False)


def reasons(tensors, params: dict) -> list[str]:
    """Why the kernel cannot compute the loss of ``[logits, target]`` (empty: it can)."""
    logits, target = tensors
    why = []
    if logits.dtype not in DTYPES:
        why.append(f"dtype {logits.dtype} is not supported (float32, float16, bfloat16)")
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0]:
        return why + [f"expected logits [B, K, h, w] and target [B, H, W], got "
                      f"{tuple(logits.shape)} and {tuple(target.shape)}"]
    if logits.device != target.device:
        why.append(f"logits on {logits.device}, target on {target.device}")
    if target.dtype not in (torch.int64, torch.int32):
        why.append(f"target dtype {target.dtype} is not int64 or int32")
    (h, w), (H, W) = logits.shape[2:], target.shape[1:]
    if logits.numel() == 0 or target.numel() == 0:
        why.append("empty input")
    elif H < h or W < w:
        why.append(f"the kernel upsamples only; logits {h}x{w} are larger than the target {H}x{W}")
    elif _config(h, w, H, W, logits.shape[1], logits.dtype)["SLOTS"] > MAX_SLOTS:
        why.append(f"upsampling {h}x{w} -> {H}x{W} reads more than {MAX_SLOTS} source "
                   f"pixels per tile")
    if max(logits.numel(), target.numel()) >= 2**31:
        why.append("more than 2^31 elements")
    if not -2**31 <= params.get("ignore_index", 0) < 2**31:
        why.append("ignore_index outside the int32 range")
    if logits.dtype == torch.float32 and torch.version.hip and logits.device.type == "cuda":
        why.append("fp32 logits need tf32x3 products, which Triton's ROCm backend lacks")
    if logits.dtype == torch.float32 and common.old_triton_on_hopper(logits):
        why.append("fp32 logits on sm_90 need Triton >= 3.3 (3.2 fails to build the kernel)")
    return why


def upsample_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                           grad: bool):
    """logits [B, K, h, w], target [B, H, W] -> (loss sum fp32 [], dlogits fp32
    [B, K, h, w] of that sum, or None when not ``grad``). Inputs as :func:`reasons` takes."""
    why = reasons([logits, target], dict(ignore_index=ignore_index))
    if why:
        raise ValueError("upsample_cross_entropy: " + "; ".join(why))
    logits, target = logits.contiguous(), target.contiguous()
    B, K, h, w = logits.shape
    H, W = target.shape[1:]
    if grad:
        alert_not_deterministic("semask fused upsample + cross-entropy loss gradient (triton)")
    cfg = _config(h, w, H, W, K, logits.dtype)
    n_ty, n_tx = cdiv(H, cfg["TILE_Y"]), cdiv(W, cfg["TILE_X"])
    partial = torch.empty(B * n_ty * n_tx, device=logits.device, dtype=torch.float32)
    bad = torch.empty(B * n_ty * n_tx, device=logits.device, dtype=torch.int32)
    dlogits = torch.zeros(logits.shape, device=logits.device, dtype=torch.float32) if grad else None
    prec = "tf32x3" if logits.dtype == torch.float32 else "tf32"
    with on_device(logits):
        _upsample_ce_kernel[(B * n_ty * n_tx,)](
            logits, target, dlogits if grad else partial, partial, bad, K, h, w, H, W, h / H,
            w / W, n_ty, n_tx, ignore_index, GRAD=grad, PREC=prec, **cfg)
    # labels outside [0, K): an error without a host sync (a device-side assert on a GPU,
    # as F.cross_entropy's; a RuntimeError with this message on the CPU)
    torch._assert_async(bad.sum() == 0, f"upsample_cross_entropy: target holds labels outside "
                                        f"[0, {K}) that are not ignore_index {ignore_index}")
    return partial.sum(), dlogits
