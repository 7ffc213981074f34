"""The kernel accuracy rule of the developers' guide, shared by the kernel tests."""
import torch

EPS = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def check_rule(name, kernel, same_dtype, truth, dtype):
    """max|kernel - truth| <= 2 * max|same dtype torch - truth| + eps(dtype) * max|truth|."""
    err = (kernel.double() - truth).abs().max().item()
    err_torch = (same_dtype.double() - truth).abs().max().item()
    atol = EPS[dtype] * truth.abs().max().item()
    assert err <= 2 * err_torch + atol, f"{name}: {err:.3g} > 2 * {err_torch:.3g} + {atol:.3g}"
