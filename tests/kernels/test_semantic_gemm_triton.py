"""The GEMM path of global semantic attention (``semask.kernels.semantic_gemm``) against
float64 autograd of the reference op: passes over image chunks, one-row programs, autocast.

Global cases of every size and dtype also run through it in
``test_semantic_attention_triton.py`` (its "gemm" path); this file covers what those
shapes do not reach.
"""
import pytest
import torch

from semask.kernels import semantic_gemm as sg
from semask.ops.reference import semantic_attention_lse_reference, semantic_attention_reference
from sm90 import compile_sm90, no_spills, run_without_interpreter


def _inputs(B, H, W, K, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, W, K, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    v, dout = (torch.randn(B, H, W, C, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v, dout


def _truth(q, k, v, dout):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = semantic_attention_reference(*leaves, 0)
    out.backward(dout)
    return out.detach(), semantic_attention_lse_reference(q, k, 0), *(t.grad for t in leaves)


def _run(q, k, v, dout):
    out, lse = sg.forward(q, k, v)
    return (out, lse, *sg.backward(dout, q, k, v, lse))


def _rel(x, t):
    return ((x.double() - t).abs().max() / t.abs().max()).item()


def test_images_per_pass_hand_computed():
    """2^25 score elements per pass: 32 images of 32 x 32 tokens (16 of a batch of 16), 2 of
    64 x 64, at least one."""
    assert sg.images_per_pass(16, 1024) == 16
    assert sg.images_per_pass(40, 1024) == 32
    assert sg.images_per_pass(16, 4096) == 2
    assert sg.images_per_pass(3, 8192) == 1


def test_several_passes_and_one_row_programs(monkeypatch):
    """3 images in passes of 2 + 1 (the last pass uses part of the scratch buffers), and
    programs of one row with masked columns (N = 20 in a 32-wide block), fp32 to 1e-5."""
    N = 4 * 5
    monkeypatch.setattr(sg, "CHUNK_ELEMENTS", 2 * N * N)
    monkeypatch.setattr(sg, "TILE_ELEMENTS", 16)
    assert sg.images_per_pass(3, N) == 2
    q, k, v, dout = _inputs(3, 4, 5, 19, 24)
    truth = _truth(q, k, v, dout)
    got = _run(*(t.float() for t in (q, k, v, dout)))
    for name, x, t in zip(("out", "lse", "dq", "dk", "dv"), got, truth):
        assert x.shape == t.shape and x.dtype == torch.float32, name
        assert _rel(x, t) < 1e-5, f"{name}: relative error {_rel(x, t):.3g}"


def test_autocast_does_not_reach_the_products():
    """fp32 inputs under a bf16 autocast region: fp32 products and outputs (to 1e-5; the
    products write into preallocated tensors, which autocast leaves alone)."""
    q, k, v, dout = _inputs(2, 6, 7, 19, 16, seed=1)
    truth = _truth(q, k, v, dout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run(*(t.float() for t in (q, k, v, dout)))
    for name, x, t in zip(("out", "lse", "dq", "dk", "dv"), got, truth):
        assert x.dtype == torch.float32, name
        assert _rel(x, t) < 1e-5, f"{name}: relative error {_rel(x, t):.3g}"


# ------------------------------------------------ compiled (not interpreted) code, on CPU
def compile_rows_sm90(dtype: str, N: int) -> None:
    """Build both row kernels for sm_90 as :func:`sg._rows_launch` launches them; no spills."""
    block_n = 1 << (N - 1).bit_length()
    cfg = dict(BLOCK_R=max(1, sg.TILE_ELEMENTS // block_n), BLOCK_N=block_n)
    for fn, names in ((sg._softmax_rows_kernel, ("S",)), (sg._softmax_grad_rows_kernel, ("S", "DP"))):
        ptrs = dict({n: "*" + dtype for n in names}, LSE="*fp32")
        assert no_spills(compile_sm90(fn, ptrs, cfg, 8)), (fn.__name__, N)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,N", [("bf16", 256), ("bf16", 1024), ("fp16", 4096), ("fp32", 1024)])
def test_row_kernels_compile_for_sm90(dtype, N):
    pytest.importorskip("triton.backends.nvidia")
    import inspect

    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this Triton's ASTSource takes another signature (written for Triton >= 3.3)")
    run_without_interpreter(__file__, f"compile_rows_sm90({dtype!r}, {N})")
