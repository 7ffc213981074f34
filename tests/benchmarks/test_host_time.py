"""benchmarks/host_time.py: host time per fused-op call, with stubbed launches on the CPU."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_run_times_every_op_with_stubbed_launches(tmp_path):
    """A separate process (the stub replaces the interpreter's launch for good): every op
    and mode gets a positive time for torch and triton, the LayerNorm and window rows also
    for their direct launchers; the table goes to --out as printed."""
    out = tmp_path / "host.md"
    run = subprocess.run([sys.executable, "benchmarks/host_time.py", "--calls", "3", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 14
    for op, mode, torch_us, triton_us, direct_us in (map(str.strip, r) for r in rows):
        assert mode in ("fwd", "fwd_bwd")
        assert float(torch_us) > 0 and float(triton_us) > 0
        if op.startswith(("layer_norm 7x7", "window_attention")):
            assert float(direct_us) > 0
        else:
            assert direct_us == "–"
    assert out.read_text() in run.stdout


def test_profile_ranks_functions_of_the_triton_calls(tmp_path):
    """--profile 5: after the table, one ranking of 5 functions per op with a direct
    launcher (LayerNorm, window attention), each row with calls and own/cumulative µs."""
    out = tmp_path / "host.md"
    run = subprocess.run([sys.executable, "benchmarks/host_time.py", "--calls", "3", "--profile",
                          "5", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    sections = text.split("## Own time per triton fwd_bwd call: ")[1:]
    assert [s.split(" (")[0] for s in sections] == ["layer_norm 7x7x768",
                                                    "window_attention 14x14, 3 heads, shift 3"]
    for section in sections:
        rows = [r.strip("|").split("|") for r in section.splitlines() if r.startswith("| `")]
        assert len(rows) == 5
        own = [float(r[3]) for r in rows]
        assert own == sorted(own, reverse=True) and all(float(r[4]) >= float(r[3]) for r in rows)
