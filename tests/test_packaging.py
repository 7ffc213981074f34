"""A wheel of semask carries what a source checkout has: the Triton kernels as
semask.kernels, the training presets and the CUDA sources (and an install of it finds them)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", str(REPO), "-w", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("semask-*.whl")
    return path


def test_wheel_holds_kernels_presets_and_cuda_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"semask/kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")}
    expected |= {f"semask/configs/{p.name}" for p in (REPO / "configs").glob("*.json")}
    expected |= {f"semask/csrc/{p.name}" for p in (REPO / "csrc").iterdir()
                 if p.suffix in (".cu", ".cuh", ".cpp", ".h", ".py")}
    assert len(expected) > 15
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith("kernels/") for n in names)  # never a top-level `kernels`


def test_installed_wheel_finds_presets_and_sources(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    code = ("from semask.train.config import CONFIG_DIR, preset_names; "
            "from semask.ops.build_cuda import csrc_dir; "
            "print(CONFIG_DIR); print(csrc_dir()); print(len(preset_names()))")
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    config_dir, csrc, count = run.stdout.split()
    assert Path(config_dir) == target / "semask" / "configs"
    assert Path(csrc) == target / "semask" / "csrc"
    assert int(count) == len(list((REPO / "configs").glob("*.json")))
