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


def test_commit_without_semask_commit_is_dirty_with_untracked_files(tmp_path):
    """Unset SEMASK_COMMIT: HEAD, with -dirty when git status lists anything (an untracked
    file too); the suite's first summary line records it."""
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(SUITE, repo / "benchmarks")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "suite")
    sha = git("rev-parse", "HEAD")
    env = {k: v for k, v in os.environ.items() if k != "SEMASK_COMMIT"}
    env.update(OUT=str(out), SUITE_BUDGET="5", PYTHON=sys.executable)
    for untracked, commit in ((False, sha), (True, sha + "-dirty")):
        if untracked:
            (repo / "new.py").write_text("")
        subprocess.run(["bash", str(repo / "benchmarks" / "gpu_suite.sh"), "nosuchstage"], env=env,
                       cwd=repo, capture_output=True, text=True, timeout=120)
        (summary,) = out.glob("*/suite_summary.txt")
        assert summary.read_text().startswith(f"semask GPU suite: commit {commit},")
