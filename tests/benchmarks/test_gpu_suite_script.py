"""benchmarks/gpu_suite.sh without a GPU: it parses, and stages that no longer fit the
time budget are recorded as skipped (the script carries on and exits non-zero)."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def test_script_parses():
    assert subprocess.run(["bash", "-n", SUITE]).returncode == 0


def test_stages_over_budget_are_recorded_as_skipped(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), SUITE_BUDGET="5", PYTHON=sys.executable)
    proc = subprocess.run(["bash", SUITE, "setup", "bench", "nosuchstage"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (folder,) = list(tmp_path.iterdir())
    summary = (folder / "suite_summary.txt").read_text()
    assert "setup: SKIPPED (no time left" in summary
    assert "bench: SKIPPED (no time left" in summary
    assert "unknown stage nosuchstage" in summary
    assert "total " in summary and (folder / "suite.log").exists()
