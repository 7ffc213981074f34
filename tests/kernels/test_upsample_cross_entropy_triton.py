"""Fused bilinear-upsample + cross-entropy Triton kernel against PyTorch (fp64 autograd of
``F.interpolate`` + ``F.cross_entropy`` as truth).

CPU: Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) on small maps.
GPU (marker ``gpu``): SeMask's loss shapes (stride-4 logits, 150 and 19 classes) with the
accuracy rule max|kernel - truth| <= 2 * max|torch same dtype - truth| + atol.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

from semask.kernels import upsample_cross_entropy as uce
from semask.models.loss import fused_loss_reasons, upsampled_cross_entropy
from rule import check_rule
from sm90 import compile_sm90, no_spills, run_without_interpreter

IGNORE = 255


def make_inputs(B, K, h, w, H, W, device="cpu", seed=0):
    """logits [B, K, h, w] (fp64 holding fp32 values) and a target [B, H, W] with a band of
    ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, K, h, w, generator=g) * 3).to(device=device, dtype=torch.float64)
    target = torch.randint(0, K, (B, H, W), generator=g)
    target[:, : max(1, H // 8)] = IGNORE
    return logits, target.to(device)


def torch_loss_and_grad(logits, target):
    """Sum of the per-pixel cross-entropy of the upsampled logits and its gradient, by
    PyTorch autograd; half-precision logits upsampled in their dtype, then fp32 (as the
    released code)."""
    x = logits.detach().requires_grad_()
    up = F.interpolate(x, size=target.shape[1:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(up.to(torch.promote_types(x.dtype, torch.float32)), target,
                           ignore_index=IGNORE, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def check_kernel_against_torch(logits, target, dtype):
    """The kernel's loss and gradient on ``logits`` rounded to ``dtype`` against fp64
    truth, by the accuracy rule; returns (rounded logits, target, kernel results)."""
    truth = torch_loss_and_grad(logits, target)
    low = logits.to(dtype)
    same = torch_loss_and_grad(low, target)
    got = uce.upsample_cross_entropy(low, target, IGNORE, grad=True)
    for name, x, s, t in zip(("loss", "dlogits"), got, same, truth):
        check_rule(name, x, s, t, dtype)
    return low, target, got


CPU_CASES = [
    (2, 19, 8, 10, 32, 40),    # 4x, Cityscapes' K, two images
    (1, 150, 7, 9, 29, 35),    # non-integer scales (29/7, 35/9), ADE20K's K, batch 1
    (1, 5, 4, 4, 32, 32),      # 8x
    (1, 6, 5, 3, 5, 3),        # same size: no interpolation
    (1, 3, 3, 2, 40, 5),       # tiles wider than the map, 13x and 2.5x
    (1, 3, 1, 5, 4, 20),       # a one-pixel-high map
    (1, 20, 33, 1, 100, 1),    # one column
]


@pytest.mark.parametrize("B,K,h,w,H,W", CPU_CASES)
def test_fp32_loss_and_gradient_match_float64_autograd(B, K, h, w, H, W):
    logits, target = make_inputs(B, K, h, w, H, W)
    truth_loss, truth_grad = torch_loss_and_grad(logits, target)
    loss, grad = uce.upsample_cross_entropy(logits.float(), target, IGNORE, grad=True)
    assert loss.dtype == grad.dtype == torch.float32
    assert abs(loss.item() - truth_loss.item()) <= 1e-5 * abs(truth_loss.item())
    err = ((grad.double() - truth_grad).abs().max() / truth_grad.abs().max()).item()
    assert err < 1e-5, f"gradient relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,K,h,w,H,W", CPU_CASES[:2])
def test_half_precision_accuracy_rule(dtype, B, K, h, w, H, W):
    check_kernel_against_torch(*make_inputs(B, K, h, w, H, W, seed=1), dtype)


@pytest.fixture
def one_pass(monkeypatch):
    monkeypatch.setattr(uce, "ONE_PASS", True)


@pytest.mark.parametrize("B,K,h,w,H,W", CPU_CASES[:5] + [(1, 256, 3, 4, 12, 16)])
def test_one_pass_fp32_matches_float64_autograd(one_pass, B, K, h, w, H, W):
    """The one-pass kernel (all classes at once: head + tail tiles for 150 -> 128 + 32, one
    tile for 19 -> 32, 256) against fp64 autograd, as the two-pass one."""
    cfg = uce._config(h, w, H, W, K, torch.float32)
    assert cfg["ONE_PASS"] and cfg["TAIL"] == (K == 150)
    logits, target = make_inputs(B, K, h, w, H, W, seed=4)
    truth_loss, truth_grad = torch_loss_and_grad(logits, target)
    loss, grad = uce.upsample_cross_entropy(logits.float(), target, IGNORE, grad=True)
    assert abs(loss.item() - truth_loss.item()) <= 1e-5 * abs(truth_loss.item())
    err = ((grad.double() - truth_grad).abs().max() / truth_grad.abs().max()).item()
    assert err < 1e-5, f"gradient relative error {err:.3g}"
    loss_only, none = uce.upsample_cross_entropy(logits.float(), target, IGNORE, grad=False)
    assert none is None and torch.allclose(loss_only, loss, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_pass_half_precision_accuracy_rule(one_pass, dtype):
    check_kernel_against_torch(*make_inputs(*CPU_CASES[1], seed=5), dtype)


def test_one_pass_only_up_to_its_class_limit(one_pass):
    assert not uce._config(8, 8, 32, 32, uce.ONE_PASS_MAX_K + 1, torch.bfloat16)["ONE_PASS"]
    assert uce._config(8, 8, 32, 32, 150, torch.bfloat16)["ONE_PASS"]


def test_without_gradient_and_int32_target():
    logits, target = make_inputs(1, 7, 6, 6, 24, 24)
    loss, grad = uce.upsample_cross_entropy(logits.float(), target.int(), IGNORE, grad=False)
    assert grad is None
    truth = torch_loss_and_grad(logits, target)[0].item()
    assert abs(loss.item() - truth) <= 1e-5 * abs(truth)


@pytest.mark.parametrize("label", [2 ** 32 + 1, 2 ** 32 + IGNORE])
def test_int64_labels_beyond_int32_are_out_of_range(label):
    """Judged in the target's dtype: 2^32 + 1 is not class 1, 2^32 + ignore not ignored."""
    logits, target = make_inputs(1, 4, 3, 3, 6, 6)
    target[0, 1, 1] = label
    with pytest.raises(RuntimeError, match=r"labels outside \[0, 4\)"):
        uce.upsample_cross_entropy(logits.float(), target, IGNORE, grad=False)


def test_all_pixels_ignored_gives_zero():
    logits, target = make_inputs(1, 4, 4, 4, 16, 16)
    loss, grad = uce.upsample_cross_entropy(logits.float(), torch.full_like(target, IGNORE),
                                            IGNORE, grad=True)
    assert loss.item() == 0 and not grad.any()


def test_bad_inputs_are_named():
    logits, target = make_inputs(1, 4, 4, 4, 16, 16)
    bad = target.clone()
    bad[0, 5, 5] = 4
    with pytest.raises(RuntimeError, match=r"labels outside \[0, 4\)"):
        uce.upsample_cross_entropy(logits.float(), bad, IGNORE, grad=False)

    def why(x, t):
        return " ".join(uce.reasons([x, t], {}))

    assert "dtype torch.float64" in why(logits, target)
    assert "upsamples only" in why(logits.float(), target[:, :2, :2])
    assert "expected logits" in why(logits.float()[0], target)
    assert "not int64 or int32" in why(logits.float(), target.float())
    assert "empty" in why(logits.float()[:0], target[:0])
    assert "int32 range" in " ".join(uce.reasons([logits.float(), target], dict(ignore_index=2**40)))
    with pytest.raises(ValueError, match="dtype torch.float64"):
        uce.upsample_cross_entropy(logits, target, IGNORE, grad=False)


def test_reasons_reject_fp32_on_hopper_with_triton_3_2(monkeypatch):
    """Triton 3.2 aborts building the fp32 kernel for sm_90: such inputs take the reference
    (simulated here: the check stands in for a Hopper GPU under Triton 3.2)."""
    from semask.kernels import common

    logits, target = make_inputs(1, 4, 4, 4, 16, 16)
    monkeypatch.setattr(common, "old_triton_on_hopper", lambda t: True)
    assert any("Triton >= 3.3" in r for r in uce.reasons([logits.float(), target], {}))
    assert uce.reasons([logits.bfloat16(), target], {}) == []


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_loss_function_fused_path_matches_the_unfused_one(avg_non_ignore):
    """upsampled_cross_entropy(fused=True): value and gradient (with an upstream scale) as
    the one-piece loss; without grad mode no gradient is kept."""
    logits, target = make_inputs(2, 19, 8, 10, 32, 40, seed=3)
    assert not fused_loss_reasons(logits.float(), target)  # the kernel does run
    grads = []
    for fused in (True, False):
        x = logits.float().requires_grad_()
        loss = upsampled_cross_entropy(x, target, IGNORE, avg_non_ignore, fused=fused)
        (3 * loss).backward()
        grads.append((loss.detach(), x.grad))
    (lf, gf), (lu, gu) = grads
    assert torch.allclose(lf, lu, rtol=1e-6)
    assert torch.allclose(gf, gu, rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        again = upsampled_cross_entropy(logits.float().requires_grad_(), target, IGNORE,
                                        avg_non_ignore, fused=True)
    assert not again.requires_grad and torch.allclose(again, lf)


def test_unsupported_inputs_fall_back_to_the_unfused_loss():
    """float64 logits: the fused path declines and the reference computes the loss."""
    logits, target = make_inputs(1, 5, 4, 4, 16, 16)
    x = logits.clone().requires_grad_()
    loss = upsampled_cross_entropy(x, target, IGNORE, fused=True)
    loss.backward()
    truth_loss, truth_grad = torch_loss_and_grad(logits, target)
    assert torch.allclose(loss * target.numel(), truth_loss, rtol=1e-12)
    assert torch.allclose(x.grad * target.numel(), truth_grad, rtol=1e-10)


# ------------------------------------------------ compiled (not interpreted) code, on CPU
def compile_for_sm90(dtype, K, h, w, H, W, grad, one_pass=False):
    """Build the kernel for sm_90 with the launcher's configuration for these sizes (with
    ``one_pass``, the one-pass kernel's)."""
    torch_dtype = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)[dtype]
    uce.ONE_PASS = one_pass
    cfg = uce._config(h, w, H, W, K, torch_dtype)
    assert cfg["ONE_PASS"] == one_pass
    warps = cfg.pop("num_warps")
    ptrs = dict(X="*" + dtype, T="*i64", DX="*fp32", PARTIAL="*fp32", BAD="*i32")
    prec = "tf32x3" if dtype == "fp32" else "tf32"
    kernel = compile_sm90(uce._upsample_ce_kernel, ptrs, dict(**cfg, GRAD=grad, PREC=prec), warps,
                          floats=("scale_y", "scale_x"))
    assert no_spills(kernel), "register spills"


@pytest.mark.slow
@pytest.mark.parametrize("dtype,K,h,w,H,W,grad,one_pass", [
    ("bf16", 150, 128, 128, 512, 512, True, False),
    ("fp32", 19, 128, 256, 512, 1024, True, False),
    ("fp16", 150, 128, 128, 512, 512, False, False),
    ("bf16", 150, 128, 128, 512, 512, True, True),
    ("bf16", 19, 128, 256, 512, 1024, True, True)])
def test_kernel_compiles_for_sm90(dtype, K, h, w, H, W, grad, one_pass):
    pytest.importorskip("triton.backends.nvidia")
    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this Triton's ASTSource takes another signature (written for Triton >= 3.3)")
    run_without_interpreter(
        __file__, f"compile_for_sm90({dtype!r}, {K}, {h}, {w}, {H}, {W}, {grad}, {one_pass})")


# --------------------------------------------------------------- GPU, real loss shapes
GPU_CASES = [
    (4, 150, 128, 128, 512, 512),   # ADE20K at 512: stride-4 logits
    (2, 19, 128, 256, 512, 1024),   # Cityscapes 512 x 1024 crops
    (1, 150, 127, 95, 505, 379),    # odd sizes (whole-image evaluation)
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,K,h,w,H,W", GPU_CASES)
def test_gpu_loss_shapes_accuracy_rule(dtype, B, K, h, w, H, W):
    low, target, got = check_kernel_against_torch(
        *make_inputs(B, K, h, w, H, W, device="cuda", seed=2), dtype)
    loss_only, none = uce.upsample_cross_entropy(low, target, IGNORE, grad=False)
    assert none is None and torch.allclose(loss_only, got[0], rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,K,h,w,H,W", GPU_CASES[:2])
def test_gpu_one_pass_accuracy_rule(one_pass, dtype, B, K, h, w, H, W):
    """The one-pass kernel (a sweep candidate, not the default) at the loss shapes."""
    check_kernel_against_torch(*make_inputs(B, K, h, w, H, W, device="cuda", seed=6), dtype)
