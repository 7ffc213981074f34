"""The CUDA C++ provider of the fused ops (see :mod:`semask.ops.backend`).

Answers the shared launcher signatures with the extension built from ``csrc/``
(:mod:`semask.ops.build_cuda`: the installed ``semask._C`` or a just-in-time build on first
use). :meth:`CudaProvider.reasons` never compiles for inputs it cannot run anyway.
Limits: CUDA tensors of float32/float16/bfloat16; window attention with window <= 12 and
head dim <= 64; semantic attention with K <= 256 classes (any C, any window, or global);
the kernels' shared memory within the device's opt-in limit per block (window 12 with head
dim 64 needs 169 KiB: sm_90, not sm_80 or sm_86/89); a GPU whose arch the build holds.
"""
from __future__ import annotations

import torch

from .build_cuda import ExtensionUnavailable, load_extension

OPS = ("window_attention", "semantic_attention")
DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")
MAX_WINDOW = 12
MAX_HEAD_DIM = 64
MAX_CLASSES = 256


def _shape_reasons(op: str, tensors, params: dict) -> list[str]:
    if op == "window_attention":
        window, head_dim = params["window"], _head_dim(tensors, params)
        why = []
        if window > MAX_WINDOW:
            why.append(f"window {window} > {MAX_WINDOW} is not supported")
        if head_dim > MAX_HEAD_DIM:
            why.append(f"head dim {head_dim} > {MAX_HEAD_DIM} is not supported")
        return why
    classes = tensors[0].shape[-1]
    return [f"K={classes} classes > {MAX_CLASSES} is not supported"] if classes > MAX_CLASSES else []


def _device_reasons(op: str, tensors, params: dict, ext) -> list[str]:
    """What the GPU of the inputs lacks: the arch the extension was built for, or the shared
    memory per block its largest kernel for these sizes needs (reported instead of failing
    at launch, possibly in the backward after the forward ran)."""
    device = tensors[0].device
    major, minor = torch.cuda.get_device_capability(device)
    built = getattr(ext, "semask_archs", None)  # set by build_cuda's JIT build
    if built is not None and not _runs_on(built, (major, minor)):
        names = ";".join(f"{a}.{b}{s}" + ("+PTX" if ptx else "") for a, b, s, ptx in built)
        return [f"the extension was built for {names}, not for this GPU's sm_{major}{minor} "
                f"(rebuild with TORCH_CUDA_ARCH_LIST={major}.{minor})"]
    if op == "window_attention":
        need = ext.window_attention_shared_memory(params["window"], _head_dim(tensors, params))
    else:
        need = ext.semantic_attention_shared_memory(tensors[0].shape[-1])
    props = torch.cuda.get_device_properties(device)
    allowed = getattr(props, "shared_memory_per_block_optin", None)  # torch >= 2.5
    if allowed is not None and need > allowed:
        return [f"needs {need} bytes of shared memory per block, {props.name} allows {allowed}"]
    return []


def _runs_on(archs: tuple, capability: tuple[int, int]) -> bool:
    """Whether a build for ``archs`` ((major, minor, suffix, with PTX) each, as
    ``semask_build.parse_arch`` gives) runs on a GPU of ``capability`` (8, 6): machine code
    of the same major at most its minor (sm_80 runs on 8.6; sm_90a only on 9.0), or PTX of
    an arch at most the GPU's, which the driver compiles."""
    for major, minor, suffix, ptx in archs:
        if ptx and (major, minor) <= capability:
            return True
        if major == capability[0] and (minor == capability[1] if suffix else minor <= capability[1]):
            return True
    return False


def _head_dim(tensors, params: dict) -> int:
    return tensors[0].shape[-1] // 3 // max(params["num_heads"], 1)


class CudaProvider:
    name = "cuda"

    def reasons(self, op: str, tensors, params: dict) -> list[str]:
        """Why the CUDA extension cannot run ``op`` on these inputs (empty: it can)."""
        if op not in OPS:
            return [f"unknown op {op!r}"]
        why = []
        devices = sorted({t.device.type for t in tensors})
        if devices != ["cuda"]:
            why.append(f"inputs are on {', '.join(devices)}; the cuda backend needs CUDA tensors")
        dtypes = sorted({str(t.dtype) for t in tensors if str(t.dtype) not in DTYPES})
        if dtypes:
            why.append(f"dtype {', '.join(dtypes)} is not supported (float32, float16, bfloat16)")
        why += _shape_reasons(op, tensors, params)
        if not why:  # only now may the first use build the extension
            try:
                why += _device_reasons(op, tensors, params, load_extension())
            except ExtensionUnavailable as exc:
                why.append(str(exc))
        return why

    def window_attention_fwd(self, qkv, table, num_heads, window, shift, scale, height, width):
        return tuple(load_extension().window_attention_fwd(
            qkv, table, int(num_heads), int(window), int(shift), float(scale), int(height),
            int(width)))

    def window_attention_bwd(self, dout, qkv, table, out, lse, num_heads, window, shift, scale):
        return tuple(load_extension().window_attention_bwd(
            dout, qkv, table, out, lse, int(num_heads), int(window), int(shift), float(scale)))

    def semantic_attention_fwd(self, q, k, v, window):
        return tuple(load_extension().semantic_attention_fwd(q, k, v, int(window)))

    def semantic_attention_bwd(self, dout, q, k, v, out, lse, window):
        return tuple(load_extension().semantic_attention_bwd(dout, q, k, v, out, lse, int(window)))


PROVIDER = CudaProvider()
