"""benchmarks/measure.py without a GPU: the order of a flushed call's timing, the peak
memory figures, the reused side stream (torch.cuda stubbed), and the recorded commit."""
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # the `benchmarks` package lives at the repository root

from benchmarks import measure  # noqa: E402


def test_stream_time_waits_for_the_flush_before_the_start_event(monkeypatch):
    """Each timed call: flush, synchronize, start event, the call, end event; the start
    is never recorded while the flush may still run on the GPU."""
    log = []

    class Buffer:
        def zero_(self):
            log.append("flush")

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self):
            log.append("event")

        def elapsed_time(self, end):
            return 2.0

    monkeypatch.setattr(measure, "_l2_flush_buffer", lambda: Buffer())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "Event", Event)
    assert measure.time_ms(lambda: log.append("fn"), "cuda", target_s=0.01) == 2.0
    calls = " ".join(log).split("fn")[1:]  # what precedes each call after the first, untimed one
    timed = [c for c in calls if "flush" in c]
    assert len(timed) >= 8
    for before in timed:
        assert before.strip().endswith("flush sync event"), before
    assert "flush sync event fn event" in " ".join(log)


def test_peak_memory_frees_cublas_workspaces_and_reports_growth(monkeypatch):
    """(peak, growth over what was allocated before the call), with cuBLAS's workspaces
    and the cache freed first; without the workspace hook (older torch) it still works."""
    log = []
    mib = 2 ** 20
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: log.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 100 * mib)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 350 * mib)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: log.append("clear"),
                        raising=False)
    assert measure.peak_memory_mb(lambda: log.append("fn"), "cuda") == (350.0, 250.0)
    assert log == ["clear", "empty_cache", "reset", "fn"]
    monkeypatch.delattr(torch._C, "_cuda_clearCublasWorkspaces")
    assert measure.peak_memory_mb(lambda: None, "cuda") == (350.0, 250.0)


def test_cpu_peak_memory_has_a_growth():
    peak, growth = measure.peak_memory_mb(lambda: torch.ones(64 << 20, dtype=torch.uint8), "cpu")
    assert peak > 0 and growth is not None and growth >= 0


def test_side_stream_is_made_once(monkeypatch):
    """Each new stream gets its own cuBLAS workspace: graph timings reuse one."""
    made = []
    monkeypatch.setattr(measure, "_SIDE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: made.append(object()) or made[-1])
    assert measure._side_stream() is measure._side_stream() is made[0] and len(made) == 1


@pytest.fixture
def git_repo(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    (tmp_path / ".gitignore").write_text("*.log\n")
    git("add", ".gitignore")
    git("commit", "-q", "-m", "init")
    monkeypatch.setattr(measure, "REPO", str(tmp_path))
    monkeypatch.delenv("SEMASK_COMMIT", raising=False)
    return tmp_path, git("rev-parse", "HEAD")


def test_commit_is_dirty_with_untracked_files_not_ignored_ones(git_repo, monkeypatch):
    path, sha = git_repo
    (path / "run.log").write_text("ignored")
    assert measure.git_commit() == sha
    (path / "new.py").write_text("untracked")
    assert measure.git_commit() == sha + "-dirty"
    monkeypatch.setenv("SEMASK_COMMIT", "abc123")  # given from outside: kept as given
    assert measure.git_commit() == "abc123"
