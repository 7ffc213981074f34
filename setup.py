"""setuptools entry: packages (``kernels/`` installed as ``semask.kernels``, ``configs/``
and ``csrc/`` as data) and the optional CUDA extension, built only when
``SEMASK_BUILD_CUDA=1``."""
import os

from setuptools import find_packages, setup


def cuda_extensions():
    """The csrc/ extension when SEMASK_BUILD_CUDA=1, else nothing (no nvcc needed)."""
    if os.environ.get("SEMASK_BUILD_CUDA") != "1":
        return [], {}
    from semask_build import cuda_extension  # noqa: E402  (csrc/semask_build.py)
    from torch.utils.cpp_extension import BuildExtension
    return [cuda_extension()], {"build_ext": BuildExtension}


if os.environ.get("SEMASK_BUILD_CUDA") == "1":
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc"))

ext_modules, cmdclass = cuda_extensions()
setup(
    # configs/ and csrc/ travel as data (training presets; sources of the just-in-time
    # CUDA build), so a wheel install trains and builds like a source checkout
    packages=find_packages(include=["semask", "semask.*"])
    + ["semask.kernels", "semask.configs", "semask.csrc"],
    package_dir={"semask.kernels": "kernels", "semask.configs": "configs", "semask.csrc": "csrc"},
    package_data={"semask.configs": ["*.json"], "semask.csrc": ["*.cu", "*.cuh", "*.cpp", "*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
