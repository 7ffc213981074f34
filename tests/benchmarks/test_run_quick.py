"""``benchmarks/run.py --quick`` end to end on the CPU: results.json schema, FLOPs of every
provider equal to the reference's matmuls, derived figures, report files.

The run gets TRITON_INTERPRET=1: once the Triton kernels exist, the triton provider runs
them in the interpreter on the (small) op cases; until then it is skipped with the reason.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # the `benchmarks` package lives at the repository root

from benchmarks import cases as C  # noqa: E402
from benchmarks.run import RECORD_FIELDS  # noqa: E402
RUN = os.path.join(REPO, "benchmarks", "run.py")
PROVIDERS = {"reference", "sdpa", "compile", "triton", "triton-compile", "cuda"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, RUN, "--quick", "--out", str(out), "--time-budget", "300",
                           "--compile-budget", "20"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.json") as f:
        return json.load(f), out


def test_help_runs():
    proc = subprocess.run([sys.executable, RUN, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--quick", "--device", "--cases", "--providers", "--dtype", "--batch", "--out"):
        assert flag in proc.stdout


def test_schema(quick):
    res, _ = quick
    env = res["environment"]
    for key in ("device", "torch", "triton", "commit", "date"):
        assert env[key], key
    assert env["device_type"] == "cpu"
    records = res["records"]
    expected = {(c.name, c.mode) for c in C.quick_cases(None)}
    assert {(r["case"], r["mode"]) for r in records} == expected
    for key in expected:  # every provider once per case and mode
        assert sorted(r["provider"] for r in records if (r["case"], r["mode"]) == key) == sorted(PROVIDERS)
    for r in records:
        assert set(RECORD_FIELDS) <= set(r), r
        assert r["mode"] in ("fwd", "fwd_bwd") and r["dtype"] == "fp32"
        if r["time_ms"] is None:
            assert isinstance(r["skipped_reason"], str) and r["skipped_reason"]
            assert r["speedup"] is None and r["throughput"] is None
        else:
            assert r["skipped_reason"] is None
            assert r["time_ms"] > 0
            if r["provider"] == "triton":  # the interpreter: one call, no memory figure
                assert "interpreter" in r["note"] and r["peak_mem_mb"] is None
                assert r["max_rel_err"] < 1e-4, r
            else:
                assert r["peak_mem_mb"] > 0
            assert r["throughput"] == pytest.approx(r["batch"] / (r["time_ms"] * 1e-3))


def test_reference_runs_and_fused_skips_say_why(quick):
    res, _ = quick
    for r in res["records"]:
        if r["provider"] == "reference" and r["kind"] != "model":
            assert r["time_ms"] is not None or "time budget" in r["skipped_reason"], r
            if r["time_ms"] is not None:
                assert r["speedup"] == pytest.approx(1.0)
        if r["provider"] in ("cuda", "triton-compile"):  # GPU-only: never measured here
            assert r["time_ms"] is None and r["skipped_reason"]


def test_fused_flops_equal_reference_flops(quick):
    """The formulas of semask/ops/flops.py make fused providers count what the reference's
    matmuls count; both equal the hand count (4 N C per token forward, 3x for fwd+bwd)."""
    res, _ = quick
    by_case = {}
    for r in res["records"]:
        by_case.setdefault((r["case"], r["mode"]), {})[r["provider"]] = r
    cases = {(c.name, c.mode): c for c in C.quick_cases(None)}
    n_op = 0
    for key, recs in by_case.items():
        case = cases[key]
        if case.kind == "model":
            assert recs["reference"]["flops"] > 0
            continue
        n_op += 1
        hand = C.attention_flops(case)
        assert recs["reference"]["flops"] == hand, key
        for p in ("sdpa", "compile", "triton", "cuda"):
            assert recs[p]["flops"] == hand, (key, p, recs[p]["flops_source"])
    assert n_op == 16


def test_every_op_result_matches_the_fp32_reference(quick):
    """The harness checks what it times: fp32 outputs / gradients of every provider that
    ran agree with the reference (the reference against itself is exact)."""
    res, _ = quick
    ran = [r for r in res["records"] if r["kind"] != "model" and r["time_ms"] is not None]
    assert ran
    for r in ran:
        assert r["max_rel_err"] is not None and r["max_rel_err"] < 1e-4, r
        if r["provider"] == "reference":
            assert r["max_rel_err"] == 0.0


def test_derived_figures(quick):
    res, _ = quick
    bw = res["peak_bandwidth"]["gbps"]
    assert bw > 0
    for r in res["records"]:
        if r["time_ms"] is None or r["kind"] == "model":
            continue
        seconds = r["time_ms"] * 1e-3
        assert r["gbps"] == pytest.approx(r["bytes"] / seconds / 1e9)
        if r["kind"] in C.NO_MATMUL:  # no matmul: no FLOPs, no rate
            assert r["flops"] == 0 and r["tflops"] is None
        else:
            assert r["tflops"] == pytest.approx(r["flops"] / seconds / 1e12)
        floor_s = max(r["bytes"] / (bw * 1e9), (r["flops"] or 0) / (res["measured"]["matmul_tflops"] * 1e12))
        assert r["floor_frac"] == pytest.approx(floor_s / seconds)
        assert r["floor_bound"] == ("memory" if floor_s == r["bytes"] / (bw * 1e9) else "compute")


def test_model_flops_match_published(quick):
    res, _ = quick
    for row in res["model_flops"]["swin"]:  # published to 1 decimal: within 1.5 %
        assert abs(row["gmacs"] / row["published_gmacs"] - 1) < 0.015, row
    for row in res["model_flops"]["semask"]:
        assert abs(row["params_m"] - row["published_params_m"]) < 1.0, row
        assert row["semantic_layers_gmacs"] > 0


def test_report_files(quick):
    _, out = quick
    md = (out / "results.md").read_text()
    assert "CPU numbers" in md and "Model FLOPs" in md
    for name in ("speedup.png", "memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_terminated_benchmark_takes_its_isolated_child_along(tmp_path):
    """A time limit's SIGTERM to run.py (the GPU suite's `timeout`) also kills the provider
    process, which runs in a session of its own and would go on using the GPU."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = ("import sys; sys.path.insert(0, {repo!r}); from benchmarks.run import _run_child; "
              "_run_child([sys.executable, '-c', {child!r}], 120)").format(repo=REPO, child=child)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
