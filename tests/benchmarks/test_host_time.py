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
