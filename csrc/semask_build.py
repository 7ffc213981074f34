"""One definition of the semask CUDA extension, shared by both build routes.

* ahead of time: ``SEMASK_BUILD_CUDA=1 pip install --no-build-isolation -e .`` (setup.py calls
  :func:`cuda_extension`; the module is ``semask._C``);
* just in time: :mod:`semask.ops.build_cuda` (``torch.utils.cpp_extension.load`` with
  ninja; the module is ``semask_cuda_<archs>``) uses :func:`source_paths`,
  :data:`CXX_FLAGS` and :func:`nvcc_flags`.

Flags: ``-O3 -lineinfo`` and one ``-gencode`` per entry of ``TORCH_CUDA_ARCH_LIST``
(default ``8.0;9.0+PTX``; ``+PTX`` adds PTX, ``9.0a`` gives ``sm_90a``). No
``--use_fast_math``: the kernels keep the accurate ``expf``/``logf`` so that fp32 results
stay within a few ulps of the PyTorch reference.

Nothing here imports torch at module level, so setup.py can import it cheaply.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import sys

CSRC = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("bindings.cpp", "window_attention.cu", "semantic_attention.cu")
HEADERS = ("common.cuh", "semask_ops.h")
EXTENSION_NAME = "semask._C"
DEFAULT_ARCHS = "8.0;9.0+PTX"  # PTX of the newest for later GPUs (the driver compiles it)
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def source_paths() -> list[str]:
    """Absolute paths of the compiled sources."""
    return [os.path.join(CSRC, s) for s in SOURCES]


def arch_list(default: str = DEFAULT_ARCHS) -> list[str]:
    """Entries of ``TORCH_CUDA_ARCH_LIST`` (``;``, ``,`` or space separated), else ``default``."""
    raw = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or default
    return [a for a in re.split(r"[;,\s]+", raw) if a]


def parse_arch(arch: str) -> tuple[int, int, str, bool]:
    """(major, minor, suffix "", "a" or "f", with PTX) of an entry such as ``8.0``,
    ``9.0a`` or ``9.0+PTX``."""
    match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", arch)
    if not match:
        raise ValueError(f"TORCH_CUDA_ARCH_LIST entry {arch!r} is not of the form 9.0, 9.0a "
                         f"or 9.0+PTX")
    return int(match[1]), int(match[2]), match[3], bool(match[4])


def gencode_flags(archs: list[str]) -> list[str]:
    """nvcc ``-gencode`` flags for entries such as ``8.0``, ``9.0+PTX`` or ``9.0a``."""
    flags = []
    for arch in archs:
        major, minor, suffix, ptx = parse_arch(arch)
        num = f"{major}{minor}{suffix}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def nvcc_flags(archs: list[str] | None = None) -> list[str]:
    """All nvcc flags for ``archs`` (default: :func:`arch_list`)."""
    return NVCC_FLAGS + gencode_flags(archs if archs is not None else arch_list())


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: ``$CUDA_HOME``/``$CUDA_PATH``, else that of the nvcc on PATH,
    else ``/usr/local/cuda[-X.Y]``; the first that holds ``bin/nvcc`` and
    ``include/cuda_runtime.h`` (an nvcc wrapper script on PATH does not count)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) \
                and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def use_cuda_home() -> str | None:
    """Point torch's extension builder at :func:`find_cuda_home` (torch takes the parent of
    the nvcc on PATH, which is wrong for wrapper scripts); returns the root or None."""
    root = find_cuda_home()
    if root is None:
        return None
    os.environ.setdefault("CUDA_HOME", root)
    builder = sys.modules.get("torch.utils.cpp_extension")
    if builder is not None and builder.CUDA_HOME != root:
        builder.CUDA_HOME = root
    return root


def cuda_extension():
    """The ``semask._C`` CUDAExtension for setup.py (sources relative to the working dir)."""
    use_cuda_home()
    from torch.utils.cpp_extension import CUDAExtension

    return CUDAExtension(
        EXTENSION_NAME,
        sources=[os.path.relpath(p) for p in source_paths()],
        include_dirs=[CSRC],
        depends=[os.path.relpath(os.path.join(CSRC, h)) for h in HEADERS],
        extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": nvcc_flags()},
    )
