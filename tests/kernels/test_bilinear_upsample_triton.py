"""Triton bilinear x2 upsampling against PyTorch's (float64 autograd as truth).

CPU: Triton's interpreter (TRITON_INTERPRET=1, tests/conftest.py) on small maps, NCHW,
channels-last and strided inputs. GPU (marker ``gpu``): the FPN head's and the semantic
decoder's shapes at 512 x 512, batch 16.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

from semask.kernels import bilinear_upsample as bu
from semask.ops.upsample import fused_upsample_reasons, upsample2x
from rule import check_rule
from sm90 import compile_sm90, no_spills, run_without_interpreter


def reference(x, dy):
    """y and dx of PyTorch's upsampling through autograd, in x's dtype."""
    x = x.detach().requires_grad_()
    y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    (dx,) = torch.autograd.grad(y, x, dy.to(y.dtype))
    return y.detach(), dx


def fused(x, dy):
    """y and dx of the Triton kernels through the public op."""
    x = x.detach().requires_grad_()
    y = upsample2x(x, fused=True)
    (dx,) = torch.autograd.grad(y, x, dy.to(y.dtype))
    return y.detach(), dx


def make(shape, layout="nchw", device="cpu", seed=0):
    """float64 x [B, C, H, W] in ``layout`` (nchw, channels_last, strided: a view with a
    stride-2 W) and an upstream gradient [B, C, 2H, 2W]."""
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    x = torch.randn(B, C, H, 2 * W if layout == "strided" else W, generator=g, dtype=torch.float64)
    dy = torch.randn(B, C, 2 * H, 2 * W, generator=g, dtype=torch.float64)
    if layout == "strided":
        x = x[..., ::2]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), dy.to(device)


# 1-pixel axes (both borders at once), odd and rectangular maps, channels under, over and
# not a multiple of the channel block
SHAPES = [(2, 3, 5, 7), (1, 4, 1, 1), (1, 2, 6, 1), (1, 3, 1, 9), (2, 20, 4, 3), (1, 130, 2, 2)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_float64_autograd(shape, layout):
    x, dy = make(shape, layout)
    y_true, dx_true = reference(x, dy)
    y, dx = fused(x.float(), dy.float())
    assert y.shape == y_true.shape and dx.shape == x.shape and y.dtype == torch.float32
    for name, got, truth in (("y", y, y_true), ("dx", dx, dx_true)):
        err = ((got.double() - truth).abs().max() / truth.abs().max()).item()
        assert err < 1e-6, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_output_and_gradient_keep_the_memory_format(layout):
    x, dy = make((2, 8, 4, 6), layout)
    y, dx = fused(x.float(), dy.float())
    channels_last = layout == "channels_last"
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert dx.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert y.is_contiguous() != channels_last and dx.is_contiguous() != channels_last


def bounded(x, dtype):
    """x as multiples of 1/64 in [-4, 4) in ``dtype``: any weighted sum of four of them with
    weights 1/16 .. 9/16 is exact in fp32 (and in float64)."""
    return (x * 64).round().clamp(-256, 255).div(64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 130, 2, 2)])
def test_half_precision(dtype, shape):
    """Forward: on values whose sums are exact in fp32, fp16 y is the exact result rounded
    once (so PyTorch's, whatever the order of its fp32 operations); bf16 too on a GPU
    (test_gpu_accuracy_rule), while Triton's interpreter truncates fp32 -> bf16, so here
    bf16 y meets the accuracy rule. Backward: the rule against float64, torch same dtype
    as the yardstick."""
    check_low_precision(*make(shape), dtype, exact=dtype == torch.float16)


def check_low_precision(x, dy, dtype, exact: bool):
    """The accuracy rule for y and dx (float64 truth, torch same dtype the yardstick) and,
    when ``exact``, y of bounded inputs equal to the exact result rounded once."""
    low_x, low_dy = x.to(dtype), dy.to(dtype)
    y, dx = fused(low_x, low_dy)
    y_true, dx_true = reference(low_x.double(), low_dy.double())
    y_same, dx_same = reference(low_x, low_dy)
    check_rule("y", y, y_same, y_true, dtype)
    check_rule("dx", dx, dx_same, dx_true, dtype)
    if exact:
        exact_x = bounded(x, dtype)
        y_exact = reference(exact_x.double(), low_dy.double())[0].to(dtype)
        assert torch.equal(fused(exact_x, low_dy)[0], y_exact)


def test_gradient_of_a_broadcast_upstream_gradient():
    """dy as autograd hands it over from a sum: an expanded tensor (all strides 0)."""
    x, _ = make((2, 3, 4, 5))
    grads = []
    for flag in (True, False):
        leaf = x.float().requires_grad_()
        upsample2x(leaf, fused=flag).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


def test_infinite_gradients_reach_only_the_inputs_that_read_them():
    """An inf in dy reaches the inputs with a non-zero weight for its pixel, and no 0 * inf
    = NaN appears (neither from taps outside the map nor from zero-weight taps, which
    PyTorch's CPU backward adds: NaN there)."""
    x = torch.zeros(1, 1, 3, 3)
    dy = torch.zeros(1, 1, 6, 6)
    dy[0, 0, 0, 3] = float("inf")  # top row: reads input row 0, columns 1 and 2
    dy[0, 0, 5, 0] = float("-inf")  # bottom-left corner: reads input (2, 0) alone
    _, dx = fused(x, dy)
    _, dx_ref = reference(x, dy)
    assert not dx.isnan().any()
    finite_ref = ~dx_ref.isnan()
    assert torch.equal(dx[finite_ref], dx_ref[finite_ref])
    assert dx[0, 0, 0, 1] == dx[0, 0, 0, 2] == float("inf") and dx[0, 0, 2, 0] == float("-inf")


@pytest.mark.parametrize("shape,pos", [((1, 1, 3, 3), (1, 1)), ((1, 1, 3, 1), (1, 0)),
                                       ((1, 2, 2, 5), (0, 1))], ids=str)
def test_forward_infinities_as_pytorch(shape, pos):
    """An inf in x: the outputs that are inf or NaN are PyTorch's (its border outputs add the
    zero-weight neighbour, 0 * inf = NaN: column 1 into output column 0, the only pixel of a
    one-column map), the finite ones agree."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    x[0, 0][pos] = float("inf")
    y = upsample2x(x, fused=True)
    y_ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.isinf(), y_ref.isinf())
    finite = torch.isfinite(y_ref)
    torch.testing.assert_close(y[finite], y_ref[finite], rtol=1e-6, atol=1e-6)


def test_unsupported_inputs_fall_back_to_pytorch():
    x, dy = make((1, 2, 3, 3))
    assert "dtype" in " ".join(fused_upsample_reasons(x))  # float64
    assert "expected" in " ".join(fused_upsample_reasons(x[0]))
    assert "empty" in " ".join(fused_upsample_reasons(x[:0]))
    y, dx = fused(x, dy)
    y_true, dx_true = reference(x, dy)
    assert torch.equal(y, y_true) and torch.equal(dx, dx_true)


def test_gradient_cannot_be_differentiated_again():
    x, _ = make((1, 2, 3, 3))
    x = x.float().requires_grad_()
    y = upsample2x(x, fused=True)
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiates once"):
        dx.sum().backward()
    scale = torch.ones((), requires_grad=True)  # only a path to scale, upstream, asked for
    (dx,) = torch.autograd.grad(upsample2x(x * scale, fused=True).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiates once"):
        torch.autograd.grad(dx.square().sum(), scale)


# ------------------------------------------------ compiled (not interpreted) code, on CPU
def compile_for_sm90(dtype, layout):
    """Build both kernels for sm_90 with the launcher's blocks for a 64x64x256 map."""
    torch_dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[dtype]
    x = torch.empty(1, 256, 64, 64, dtype=torch_dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for fn, (X, Y), width, elements in ((bu._upsample2x_fwd_kernel, ("X", "Y"), 128, bu.FWD_ELEMENTS),
                                        (bu._upsample2x_bwd_kernel, ("DY", "DX"), 64, bu.BWD_ELEMENTS)):
        block_c, block_p = bu._blocks(x, width, elements)
        kernel = compile_sm90(fn, {X: "*" + dtype, Y: "*" + dtype},
                              dict(BLOCK_C=block_c, BLOCK_P=block_p), 4)
        assert no_spills(kernel), fn.__name__


@pytest.mark.slow
@pytest.mark.parametrize("dtype,layout", [("bf16", "nchw"), ("bf16", "channels_last"), ("fp32", "nchw")])
def test_kernels_compile_for_sm90(dtype, layout):
    pytest.importorskip("triton.backends.nvidia")
    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this Triton's ASTSource takes another signature (written for Triton >= 3.3)")
    run_without_interpreter(__file__, f"compile_for_sm90({dtype!r}, {layout!r})")


# ---------------------------------------------------------------- GPU, real shapes
# Semantic FPN head (256 channels) and semantic decoder (150 classes), 512 x 512, batch 16
GPU_SHAPES = [(16, 256, 64, 64), (16, 256, 16, 16), (16, 150, 32, 32)]


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_accuracy_rule(shape, dtype, layout):
    """Half precision: also bitwise the exactly rounded result where it is exact (as
    PyTorch's CUDA kernel gives it)."""
    check_low_precision(*make(shape, layout, device="cuda"), dtype, exact=dtype != torch.float32)
