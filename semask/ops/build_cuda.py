"""Build and load the semask CUDA extension (the ``cuda`` backend).

    python -m semask.ops.build_cuda          # build now, print where the module went
    python -m semask.ops.build_cuda --help

:func:`load_extension` returns the ahead-of-time build ``semask._C`` when it is installed
(``SEMASK_BUILD_CUDA=1 pip install --no-build-isolation -e .``: setup.py needs the installed
torch), else builds the sources in ``csrc/`` just in time with
``torch.utils.cpp_extension.load`` and ninja. The JIT build targets
``TORCH_CUDA_ARCH_LIST`` if set, else the visible GPUs, else ``8.0;9.0+PTX``; it is cached in
:func:`build_directory` (``$SEMASK_CUDA_BUILD_DIR``, else
``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, under ``py<ver>_cu<ver>/``)
and rebuilt only when sources or flags change. Sources, flags and arch handling come from
``csrc/semask_build.py``, which setup.py uses too. Importing this module compiles nothing.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

BUILD_COMMAND = "python -m semask.ops.build_cuda"
AOT_COMMAND = "SEMASK_BUILD_CUDA=1 pip install --no-build-isolation -e ."
AOT_MODULE = "semask._C"

_loaded = None
_failure: str | None = None  # a failed JIT build is not retried in the same process


class ExtensionUnavailable(RuntimeError):
    """The CUDA extension is neither installed nor buildable here."""


def unavailable_message(detail: str) -> str:
    return (f"the semask CUDA extension is not built and cannot be built here ({detail}); "
            f"build it with `{BUILD_COMMAND}` (needs nvcc and ninja) or `{AOT_COMMAND}`")


def csrc_dir() -> Path:
    """The csrc/ sources: ``$SEMASK_CSRC``, else semask/csrc of an installed wheel, else
    csrc/ of the source checkout beside the package."""
    package = Path(__file__).resolve().parents[1]
    env = os.environ.get("SEMASK_CSRC")
    candidates = [Path(env)] if env else [package / "csrc", package.parent / "csrc"]
    for path in candidates:
        if (path / "semask_build.py").is_file():
            return path
    raise ExtensionUnavailable(unavailable_message(
        f"no csrc/ sources at {' or '.join(map(str, candidates))}; the just-in-time build "
        f"needs them (a wheel of semask, a source checkout, or SEMASK_CSRC)"))


def build_definition():
    """csrc/semask_build.py as a module (sources, flags, arch list)."""
    path = csrc_dir() / "semask_build.py"
    spec = importlib.util.spec_from_file_location("semask_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jit_archs(build) -> list[str]:
    """``TORCH_CUDA_ARCH_LIST`` if set, else the archs of every visible GPU, else the
    default list."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or not torch.cuda.is_available():
        return build.arch_list()
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return [f"{major}.{minor}" for major, minor in sorted(caps)]


def module_name(archs: list[str]) -> str:
    """``semask_cuda_<archs>``, e.g. ``semask_cuda_90`` or ``semask_cuda_80_90``."""
    return "semask_cuda_" + "_".join(a.replace(".", "").replace("+PTX", "ptx") for a in archs)


def build_directory(name: str) -> str:
    """Where the JIT build of module ``name`` is cached."""
    if os.environ.get("SEMASK_CUDA_BUILD_DIR"):
        return os.environ["SEMASK_CUDA_BUILD_DIR"]
    import torch

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions")
    cuda = (torch.version.cuda or "cpu").replace(".", "")
    return os.path.join(root, f"py{sys.version_info.major}{sys.version_info.minor}_cu{cuda}", name)


def toolkit_mismatch(cuda_home: str) -> str | None:
    """Why the toolkit at ``cuda_home`` cannot build for this torch (None: it can)."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        info = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                              capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvcc in {cuda_home} does not run ({exc})"
    found = re.search(r"release (\d+)\.(\d+)", info)
    if found and found[1] != torch.version.cuda.split(".")[0]:
        return (f"nvcc {found[1]}.{found[2]} in {cuda_home} does not match CUDA "
                f"{torch.version.cuda} of torch {torch.__version__}")
    return None


def jit_build(archs: list[str] | None = None, verbose: bool = False):
    """Build (or reuse the cached build of) the extension just in time; returns the module.

    Raises :class:`ExtensionUnavailable` when nvcc or ninja is missing or nvcc does not match
    torch's CUDA major version; compiler errors propagate.
    """
    build = build_definition()
    archs = archs or jit_archs(build)
    cuda_home = build.use_cuda_home()
    if cuda_home is None:
        raise ExtensionUnavailable(unavailable_message(
            "no CUDA toolkit found: nvcc is not on PATH and CUDA_HOME is not set"))
    mismatch = toolkit_mismatch(cuda_home)
    if mismatch:
        raise ExtensionUnavailable(unavailable_message(mismatch))
    from torch.utils.cpp_extension import is_ninja_available, load

    if not is_ninja_available():
        raise ExtensionUnavailable(unavailable_message("ninja is not installed (pip install ninja)"))
    name = module_name(archs)
    directory = build_directory(name)
    os.makedirs(directory, exist_ok=True)
    _warn_if_locked(directory)
    module = load(name=name, sources=build.source_paths(), extra_cflags=list(build.CXX_FLAGS),
                  extra_cuda_cflags=build.nvcc_flags(archs), extra_include_paths=[build.CSRC],
                  build_directory=directory, with_cuda=True, verbose=verbose)
    # what the provider checks a GPU against: (major, minor, suffix, with PTX) per arch
    module.semask_archs = tuple(build.parse_arch(a) for a in archs)
    return module


def _warn_if_locked(directory: str) -> None:
    """torch before 2.14 (its FileBaton) waits, silently and for ever, while a ``lock`` file
    is in the build folder: another process's build, or one interrupted (Ctrl-C) before it
    removed the file. Say which file, so that a stale one can be deleted."""
    from torch.utils import cpp_extension

    lock = os.path.join(directory, "lock")
    if hasattr(cpp_extension, "FileBaton") and os.path.exists(lock):
        warnings.warn(f"semask: {lock} exists: another process is building the CUDA extension, or an "
                      "interrupted build left it behind; torch waits until the file is gone, so delete it "
                      "if no build is running", stacklevel=3)


def _warn_if_building() -> None:
    """Say so when a first use is about to compile (minutes), not just stall."""
    archs = jit_archs(build_definition())
    name = module_name(archs)
    directory = build_directory(name)
    if not glob.glob(os.path.join(glob.escape(directory), name + ".*so")):
        warnings.warn(f"semask: building the CUDA extension {name} just in time in {directory} "
                      f"(first use, a few minutes; `{BUILD_COMMAND}` builds it ahead)",
                      stacklevel=3)


def load_extension(verbose: bool = False):
    """The extension module (installed ``semask._C``, else the JIT build, built if needed)."""
    global _loaded, _failure
    if _loaded is not None:
        return _loaded
    if _failure is not None:
        raise ExtensionUnavailable(_failure)
    if importlib.util.find_spec(AOT_MODULE) is not None:
        _loaded = importlib.import_module(AOT_MODULE)
        return _loaded
    try:
        _warn_if_building()
        _loaded = jit_build(verbose=verbose)
    except ExtensionUnavailable as exc:
        _failure = str(exc)
        raise
    except Exception as exc:  # compiler errors and the like
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _failure = unavailable_message(f"the just-in-time build failed: {first}")
        raise ExtensionUnavailable(_failure) from exc
    return _loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=BUILD_COMMAND,
        description="Build the semask CUDA extension just in time (torch.utils.cpp_extension "
                    "+ ninja) and print where it went. Targets TORCH_CUDA_ARCH_LIST if set, else "
                    "the visible GPUs, else 8.0;9.0+PTX. Cached: a second run with unchanged sources "
                    f"and flags only loads it. The ahead-of-time alternative is `{AOT_COMMAND}`.")
    parser.add_argument("--arch", help="arch list overriding TORCH_CUDA_ARCH_LIST, e.g. '9.0' "
                                       "or '8.0;9.0'")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    build = build_definition()
    archs = jit_archs(build)
    directory = build_directory(module_name(archs))
    print(f"building {module_name(archs)} for arch {';'.join(archs)} in {directory}", flush=True)
    start = time.perf_counter()
    try:
        module = jit_build(archs, verbose=args.verbose)
    except ExtensionUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ready in {time.perf_counter() - start:.1f} s (a cached build only loads): {module.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
