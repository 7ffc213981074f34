"""Small forward + backward cases of the cuda backend, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/cuda_memcheck.py

(the memcheck stage of benchmarks/gpu_suite.sh; build the extension first with
``python -m semask.ops.build_cuda``). Window attention with windows 7 and 12, shifted and
not, on maps padded to the window multiple (H, W not multiples of it), float32 and
bfloat16; semantic attention windowed (7, 12) and global. Every kernel of the extension
runs. Prints each result's max error relative to the fp32 reference and exits 1 when one
is off (the sanitizer reports memory errors itself); exits 2 without a GPU.
"""
from __future__ import annotations

import sys

import torch

import semask
from semask.ops.reference import (pad_to_multiple, semantic_attention_reference,
                                  window_attention_reference)

BOUND = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # max error / max |reference|


def _grads(fn, inputs, dout):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return [out, *torch.autograd.grad(out, inputs, dout.to(out.dtype))]


def _relative_errors(got, ref) -> list[float]:
    return [((g.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-6)).item()
            for g, r in zip(got, ref)]


def window_case(window: int, shift: int, dtype: torch.dtype) -> list[float]:
    """B=2, heads=2, D=32 on a 10x13 map padded to the window multiple."""
    heads, D = 2, 32
    x = pad_to_multiple(torch.randn(2, 10, 13, 3 * heads * D, device="cuda"), window)
    qkv = x.to(dtype)
    table = torch.randn((2 * window - 1) ** 2, heads, device="cuda").to(dtype)
    dout = torch.randn(*qkv.shape[:3], heads * D, device="cuda").to(dtype)
    scale = D ** -0.5
    got = _grads(lambda a, t: semask.ops.window_attention(a, t, heads, window, shift, scale,
                                                         backend="cuda"), [qkv, table], dout)
    ref = _grads(lambda a, t: window_attention_reference(a, t, heads, window, shift, scale),
                 [qkv.float(), table.float()], dout)
    return _relative_errors(got, ref)


def semantic_case(window: int, dtype: torch.dtype) -> list[float]:
    """B=2, K=19, C=136 (two channel chunks) on a 9x13 map (padded when windowed)."""
    shape = (2, 9, 13)
    q, k = (torch.randn(*shape, 19, device="cuda") * 0.5 for _ in range(2))
    v, dout = (torch.randn(*shape, 136, device="cuda") for _ in range(2))
    if window:
        q, k, v, dout = (pad_to_multiple(t, window) for t in (q, k, v, dout))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    got = _grads(lambda *a: semask.ops.semantic_attention(*a, window, backend="cuda"),
                 [q, k, v], dout)
    ref = _grads(lambda *a: semantic_attention_reference(*a, window),
                 [q.float(), k.float(), v.float()], dout)
    return _relative_errors(got, ref)


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_memcheck: needs a CUDA GPU")
        return 2
    torch.manual_seed(0)
    failed = False
    cases = [(f"window w={w} shift={s}", lambda d, w=w, s=s: window_case(w, s, d))
             for w, s in ((7, 0), (7, 3), (12, 0), (12, 6))]
    cases += [(f"semantic window={w}", lambda d, w=w: semantic_case(w, d)) for w in (7, 12, 0)]
    for name, run in cases:
        for dtype in BOUND:
            errors = run(dtype)
            ok = max(errors) <= BOUND[dtype]
            failed |= not ok
            print(f"{name:24s} {str(dtype):15s} max rel. error per result "
                  f"{' '.join(f'{e:.1e}' for e in errors)} {'ok' if ok else 'FAIL'}", flush=True)
    torch.cuda.synchronize()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
