"""Triton LayerNorm (kernels/layer_norm.py) against PyTorch's (float64 autograd as truth).

CPU: Triton's interpreter (TRITON_INTERPRET=1, tests/conftest.py) on small row counts and the
row lengths of Swin (96 .. 1536) plus awkward ones. GPU (marker ``gpu``): SeMask-T stage
shapes at 512 x 512.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from semask.kernels import layer_norm as ln
from semask.ops.layer_norm import LayerNorm, _use_triton, layer_norm
from rule import check_rule
from sm90 import compile_sm90, no_spills, run_without_interpreter


def reference(x, w, b, dy, eps=1e-5):
    """y, dx, dw, db of F.layer_norm through autograd, in the inputs' dtypes."""
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = F.layer_norm(x, x.shape[-1:], w, b, eps)
    return (y.detach(), *torch.autograd.grad(y, (x, w, b), dy.to(y.dtype)))


def fused(x, w, b, dy, eps=1e-5):
    """The same through the public op on the Triton kernels."""
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = layer_norm(x, w, b, eps, "triton")
    return (y.detach(), *torch.autograd.grad(y, (x, w, b), dy.to(y.dtype)))


def make(shape, device="cpu", dtype=torch.float64, seed=0):
    """x (offset and scaled rows, as a residual stream), weight, bias, dy."""
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 0.5
    w = torch.randn(C, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, w, b, dy)]


NAMES = ("y", "dx", "dweight", "dbias")


@pytest.mark.parametrize("shape", [(37, 96), (5, 40), (2, 3, 7, 192), (130, 384), (3, 1536),
                                   (4, 3), (33, 768)], ids=str)
def test_fp32_matches_float64_autograd(shape):
    """Rows of Swin's widths and odd ones, row counts not a multiple of the row block."""
    x, w, b, dy = make(shape)
    truth = reference(x, w, b, dy)
    got = fused(x.float(), w.float(), b.float(), dy.float())
    for name, g, t in zip(NAMES, got, truth):
        assert g.dtype == torch.float32 and g.shape == t.shape
        err = ((g.double() - t).abs().max() / t.abs().max()).item()
        assert err < 1e-5, f"{name}: {err:.3g}"


@pytest.mark.parametrize("shape,multiple,programs", [
    ((2, 5, 9, 24), 7, None),      # pad rows and columns, two images
    ((1, 12, 5, 96), 12, None),    # pad columns only; window 12
    ((2, 9, 14, 40), 7, None),     # pad rows only
    ((3, 7, 14, 40), 7, None),     # already a multiple: no pad rows
    ((2, 9, 10, 96), 7, 3),        # backward programs looping over row blocks
], ids=str)
def test_zero_padded_output_matches_pad_of_float64(monkeypatch, shape, multiple, programs):
    """pad_to_multiple(LayerNorm(x)) and its gradients (dy nonzero on the pad tokens, which
    must not reach dx, dweight or dbias), fp32 to 1e-5; the torch backend pads too."""
    from semask.ops.reference import pad_to_multiple

    if programs:
        monkeypatch.setattr(ln, "BWD_PROGRAMS", programs)
    x, w, b, _ = make(shape)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = pad_to_multiple(F.layer_norm(leaves[0], shape[-1:], leaves[1], leaves[2], 1e-5), multiple)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = (y.detach(), *torch.autograd.grad(y, leaves, dy))
    for backend in ("triton", "torch"):
        leaves = [t.float().requires_grad_() for t in (x, w, b)]
        got = layer_norm(*leaves, 1e-5, backend, pad_multiple=multiple)
        got = (got.detach(), *torch.autograd.grad(got, leaves, dy.float()))
        for name, g, t in zip(NAMES, got, truth):
            assert g.shape == t.shape, name
            err = ((g.double() - t).abs().max() / t.abs().max()).item()
            assert err < 1e-5, f"{backend} {name}: {err:.3g}"


def test_padding_needs_a_map():
    x, w, b, _ = make((6, 96))
    with pytest.raises(ValueError, match="B, H, W, C"):
        layer_norm(x.float(), w.float(), b.float(), 1e-5, "triton", pad_multiple=7)


@pytest.mark.parametrize("rows", [144, 150])  # 9 blocks of 16 rows; 10, the last one partial
def test_backward_programs_looping_over_row_blocks(monkeypatch, rows):
    """At most 3 backward programs: each loops over 3 or 4 row blocks (the last program
    runs past the rows) and sums its dweight / dbias share in registers."""
    monkeypatch.setattr(ln, "BWD_PROGRAMS", 3)
    x, w, b, dy = make((rows, 96))
    truth = reference(x, w, b, dy)
    got = fused(x.float(), w.float(), b.float(), dy.float())
    for name, g, t in zip(NAMES, got, truth):
        err = ((g.double() - t).abs().max() / t.abs().max()).item()
        assert err < 1e-5, f"{name}: {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_and_autocast(dtype):
    """y is in x's dtype (one rounding of the fp32 result; the interpreter truncates to
    bf16, so 2 ulps), also under CPU autocast, which leaves layer_norm alone (CUDA autocast
    makes it fp32: test_gpu_autocast_output_is_fp32). Gradients come back in the inputs'
    dtypes."""
    x, w, b, dy = make((70, 96))
    x, dy = x.to(dtype), dy.to(dtype)
    truth = reference(x.double(), w, b, dy.double())
    y, dx, dw, db = fused(x, w.float(), b.float(), dy)
    assert (y.dtype, dx.dtype, dw.dtype) == (dtype, dtype, torch.float32)
    ulp = 2 * 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    for name, g, t in zip(NAMES, (y, dx, dw, db), truth):
        err = ((g.double() - t).abs().max() / t.abs().max()).item()
        assert err < ulp, f"{name}: {err:.3g}"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = layer_norm(x, w.float(), b.float(), 1e-5, "triton")
        torch_y = F.layer_norm(x, (96,), w.float(), b.float())
    assert y_auto.dtype == torch_y.dtype == dtype


def test_autocast_dtype_output_equals_the_cast_of_the_fp32_result():
    """to_autocast_dtype: under autocast y comes in the autocast dtype with the values of
    autocast's cast of the fp32 LayerNorm (the interpreter truncates to bf16 where a GPU
    rounds: within 1 ulp here) and the gradients it would give; without autocast, fp32."""
    x, w, b, dy = (t.float() for t in make((70, 96)))
    mod = LayerNorm(96, backend="triton", to_autocast_dtype=True)
    with torch.no_grad():
        mod.weight.copy_(w), mod.bias.copy_(b)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mod(xs[0])
    want = F.layer_norm(xs[1], (96,), w, b).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert ((y.float() - want.float()).abs() <= want.float().abs() * 2.0 ** -7).all()
    for out, leaf in ((y, xs[0]), (want, xs[1])):
        out.backward(dy.bfloat16())
    err = ((xs[0].grad - xs[1].grad).abs().max() / xs[1].grad.abs().max()).item()
    assert xs[0].grad.dtype == torch.float32 and err < 1e-5
    assert mod(x).dtype == torch.float32


def test_module_keeps_nn_layernorm_parameters_and_choice():
    """Same state dict as nn.LayerNorm; Triton only where asked for and runnable."""
    mod = LayerNorm(96, backend="triton")
    assert isinstance(mod, torch.nn.LayerNorm)
    assert mod.state_dict().keys() == torch.nn.LayerNorm(96).state_dict().keys()
    x = torch.randn(4, 96)
    assert _use_triton("triton", x, mod.weight, mod.bias)  # interpreter, asked by name
    assert not _use_triton("auto", x, mod.weight, mod.bias)  # auto on CPU: reference
    assert not _use_triton("cuda", x, mod.weight, mod.bias)  # no CUDA C++ LayerNorm
    assert not _use_triton("torch", x, mod.weight, mod.bias)
    assert not _use_triton("triton", x.double(), mod.weight, mod.bias)  # fp64: PyTorch's
    with FakeTensorMode():  # tracing and dispatch modes see PyTorch's op
        assert not _use_triton("triton", torch.empty(4, 96), mod.weight, mod.bias)
    torch.testing.assert_close(mod(x), F.layer_norm(x, (96,), mod.weight, mod.bias),
                               rtol=1e-6, atol=1e-6)


def test_graphs_only_runs_the_kernels_inside_graph_capture(monkeypatch):
    """A graphs_only LayerNorm (a fused model's default) runs PyTorch's op outside
    graph_capture and the Triton kernels inside (nested contexts included); same values."""
    from semask.ops import layer_norm as ops

    calls = []
    apply = ops._LayerNorm.apply
    monkeypatch.setattr(ops._LayerNorm, "apply", lambda *a: calls.append(1) or apply(*a))
    mod = LayerNorm(40, backend="triton", graphs_only=True)
    x = torch.randn(2, 3, 5, 40)
    want = F.layer_norm(x, (40,), mod.weight, mod.bias)
    torch.testing.assert_close(mod(x), want, rtol=0, atol=0)
    assert calls == []
    with ops.graph_capture():
        with ops.graph_capture():
            torch.testing.assert_close(mod(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mod(x, pad_multiple=7), ops.pad_to_multiple(want, 7),
                                   rtol=1e-5, atol=1e-5)
    assert len(calls) == 2
    mod(x)  # the contexts closed: PyTorch's again
    assert len(calls) == 2


@pytest.mark.parametrize("layout", ["every other element", "column", "expanded"])
def test_weight_and_bias_views_match_pytorch(layout):
    """The kernels read weight and bias with unit stride: views of wider tensors and
    expanded scalars (stride 0) are copied first (they gave errors of 11.5 and 1e35)."""
    C = 24
    x = torch.randn(5, C)
    if layout == "every other element":
        w, b = torch.randn(2 * C)[::2], torch.randn(2 * C)[::2]
    elif layout == "column":
        table = torch.randn(C, 2)
        w, b = table[:, 0], table[:, 1]
    else:
        w, b = torch.full((1,), 2.0).expand(C), torch.zeros(1).expand(C)
    assert not w.is_contiguous() and not b.is_contiguous()
    got = layer_norm(x, w, b, 1e-5, backend="triton")
    want = F.layer_norm(x.double(), (C,), w.double(), b.double(), 1e-5)
    assert (got.double() - want).abs().max().item() < 1e-5


def test_reasons_name_what_is_missing():
    x = torch.randn(2, 8)
    assert ln.reasons([x, torch.ones(8), torch.zeros(8)], {}) == []
    assert "affine" in ln.reasons([x, None, None], {})[0]
    assert "float64" in ln.reasons([x.double(), torch.ones(8), torch.zeros(8)], {})[0]
    wide = torch.randn(1, ln.MAX_C + 1)
    affine = torch.ones(ln.MAX_C + 1), torch.zeros(ln.MAX_C + 1)
    assert "rows of" in ln.reasons([wide, *affine], {})[0]


def test_mismatched_weight_raises_as_pytorch():
    """A weight of another length than x's rows: PyTorch's error, not reads past its end."""
    with pytest.raises(RuntimeError):
        LayerNorm(4, backend="triton")(torch.randn(3, 8))
    assert "must be [8]" in ln.reasons([torch.randn(3, 8), torch.ones(4), torch.zeros(4)], {})[0]


def test_too_many_rows_are_refused():
    """The kernels' row arithmetic is int32 (padded rows < 2^31): 2^30 rows are refused
    (meta tensors: nothing allocated)."""
    w, b = torch.ones(4, device="meta"), torch.zeros(4, device="meta")
    assert ln.reasons([torch.empty(2**30 - 1, 4, device="meta"), w, b], {}) == []
    assert "2^30" in " ".join(ln.reasons([torch.empty(2**30, 4, device="meta"), w, b], {}))


def test_gradient_cannot_be_differentiated_again():
    x = torch.randn(3, 16, requires_grad=True)
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16)
    (dx,) = torch.autograd.grad(layer_norm(x, w, b, 1e-5, "triton").pow(2).sum(), x,
                                create_graph=True)
    with pytest.raises(RuntimeError, match="differentiates once"):
        dx.sum().backward()
    with pytest.raises(RuntimeError, match="differentiates once"):  # only a path to w asked for
        torch.autograd.grad(dx.square().sum(), w)


# ------------------------------------------------ compiled (not interpreted) code, on CPU
def compile_for_sm90(C: int):
    """Build both kernels with the launch configuration of row length C for sm_90, padded
    and not (C specialized as a multiple of 16 where it is one, as the launcher does): no
    register spills."""
    block_m, block_c, warps = ln._config(C)
    e = "*fp32"
    ptrs = dict(X=e, WEIGHT=e, BIAS=e, Y="*bf16", MEAN=e, RSTD=e, DY="*bf16", DX=e, PART=e)
    for fn in (ln._ln_fwd_kernel, ln._ln_bwd_kernel):
        for padded in (False, True):
            consts = dict(BLOCK_M=block_m, BLOCK_C=block_c, PADDED=padded)
            if fn is ln._ln_bwd_kernel:
                consts.update(NUM_STAGES=ln.NUM_STAGES)
            built = compile_sm90(fn, {a: t for a, t in ptrs.items() if a in fn.arg_names}, consts,
                                 warps, floats=("eps",), divisible=["C"] if C % 16 == 0 else [])
            assert no_spills(built), f"{fn.__name__} (C {C}, padded {padded}) spills"


@pytest.mark.slow
@pytest.mark.parametrize("C", [96, 1536, 100])
def test_kernels_compile_for_sm90(C):
    pytest.importorskip("triton.backends.nvidia")
    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this Triton's ASTSource takes another signature (written for Triton >= 3.3)")
    run_without_interpreter(__file__, f"compile_for_sm90({C})")


# SeMask-T at 512 x 512, batch 2: (rows, C) of a block's norms per stage and of a merge
GPU_SHAPES = [(2 * 128 * 128, 96), (2 * 64 * 64, 192), (2 * 32 * 32, 384), (2 * 16 * 16, 768),
              (2 * 16 * 16, 1536)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_accuracy_rule(shape, dtype):
    """|kernel - fp64| <= 2 |torch same dtype - fp64| + eps |fp64| for y, dx, dw, db.
    Every input, weight and bias too, holds values of ``dtype``: PyTorch's CUDA LayerNorm
    takes no fp32 weight with a half x ("expected scalar type BFloat16 but found Float"),
    so its same-dtype run has half weights, and the kernel gets their (exact) fp32 copies,
    as a model's fp32 parameters under autocast."""
    x, w, b, dy = (t.to(dtype) for t in make(shape, "cuda"))
    truth = reference(x.double(), w.double(), b.double(), dy.double())
    same = reference(x, w, b, dy)
    for name, got, s, t in zip(NAMES, fused(x, w.float(), b.float(), dy), same, truth):
        check_rule(name, got, s, t, dtype)


@pytest.mark.gpu
def test_gpu_autocast_output_is_fp32():
    """CUDA autocast runs layer_norm in fp32 and returns fp32: so do the kernels, with the
    values of fp32 PyTorch on the same (bf16) input."""
    x, w, b, dy = make((4096, 96), "cuda")
    x, w, b = x.bfloat16(), w.float(), b.float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = layer_norm(x, w, b, 1e-5, "triton")
        want = F.layer_norm(x, (96,), w, b)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # feeding a Linear: bf16 directly
        low = layer_norm(x, w, b, 1e-5, "triton", to_autocast_dtype=True)
    assert low.dtype == torch.bfloat16
    assert ((low.float() - want.bfloat16().float()).abs() <= want.abs() * 2.0 ** -7).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_zero_padded_accuracy_rule(dtype):
    """SeMask-T 512 stage 1 (128 x 128 padded to 133 x 133, C = 96): the accuracy rule
    against the pad of PyTorch's LayerNorm; pad tokens exactly 0."""
    from semask.ops.reference import pad_to_multiple

    x, w, b, _ = (t.to(dtype) for t in make((2, 128, 128, 96), "cuda"))  # see above
    dy = torch.randn(2, 133, 133, 96, device="cuda", dtype=torch.float64)

    def run(fn, x, w, b):
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        y = fn(*leaves)
        return (y.detach(), *torch.autograd.grad(y, leaves, dy.to(y.dtype)))

    def torch_ln(x, w, b):
        return pad_to_multiple(F.layer_norm(x, x.shape[-1:], w, b, 1e-5), 7)

    truth = run(torch_ln, x.double(), w.double(), b.double())
    same = run(torch_ln, x, w, b)
    got = run(lambda x, w, b: layer_norm(x, w, b, 1e-5, "triton", pad_multiple=7),
              x, w.float(), b.float())
    assert got[0][:, 128:].eq(0).all() and got[0][:, :, 128:].eq(0).all()
    for name, g, s, t in zip(NAMES, got, same, truth):
        check_rule(name, g, s, t, dtype)
