"""benchmarks/report.py: goals only at their settings (bf16, batch 16) and labelled with a
device other than an H100; merges refused across runs that differ."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # the `benchmarks` package lives at the repository root

from benchmarks import cases as C  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import run as R  # noqa: E402

GOAL = "window attention fwd >= 4x eager"


def _records(dtype: str, batch: int) -> list[dict]:
    """Swin-T 512 stage 0 shifted, forward: triton 5x faster than the reference."""
    case = C.window_case("swin_t", 512, 0, True, "fwd", batch)
    records = [dict(R.new_record(case, prov, dtype), time_ms=t, flops=10 ** 9)
               for prov, t in (("reference", 5.0), ("triton", 1.0))]
    R.finalize(records, 3e12)
    return records


def _results(records, device="NVIDIA H100 80GB HBM3", **env) -> dict:
    return dict(environment=dict(dict(device=device, device_type="cuda", torch="2.9", triton="3.5",
                                      python="3.12", commit="abc", date="d"), **env),
                measured={}, peak_bandwidth=dict(gbps=None), settings=dict(dtype=records[0]["dtype"]),
                records=records)


@pytest.mark.parametrize("dtype,batch", [("fp32", 16), ("bf16", 1)])
def test_goals_not_evaluated_at_other_settings(dtype, batch):
    goals = {(g["goal"], g["provider"]): g for g in report.goal_values(_records(dtype, batch))}
    g = goals[(GOAL, "triton")]
    assert g["n"] == 0 and g["other_settings"] and "met" not in g
    md = report.markdown(_results(_records(dtype, batch)))
    assert f"| {GOAL} | triton | 0 | – | – | not the goal's settings |" in md


def test_goals_at_their_settings_name_a_device_other_than_an_h100():
    g = {(g["goal"], g["provider"]): g for g in report.goal_values(_records("bf16", 16))}[(GOAL, "triton")]
    assert g["n"] == 1 and g["met"] and g["worst"] == pytest.approx(5.0)
    assert f"| {GOAL} | triton | 1 | 5.00 | 5.00 | yes |" in report.markdown(_results(_records("bf16", 16)))
    md = report.markdown(_results(_records("bf16", 16), device="NVIDIA H200"))
    assert f"| {GOAL} | triton | 1 | 5.00 | 5.00 | yes on NVIDIA H200 |" in md
    assert "measured on NVIDIA H200, not an H100 SXM" in md
    md = report.markdown(_results(_records("bf16", 16), device="NVIDIA H100 PCIe"))  # 2.0 TB/s
    assert "measured on NVIDIA H100 PCIe, not an H100 SXM" in md


def _write(path, results):
    path.write_text(json.dumps(results))
    return str(path)


@pytest.mark.parametrize("field,value", [("commit", "def-dirty"), ("torch", "2.10"),
                                         ("triton", "3.6"), ("device", "NVIDIA H200"), ("dtype", "fp32")])
def test_merge_refuses_runs_that_differ(tmp_path, field, value):
    first = _results(_records("bf16", 16))
    second = (_results(_records("fp32", 16)) if field == "dtype" else
              _results(_records("bf16", 16), **{field: value}))
    paths = [_write(tmp_path / "a.json", first), _write(tmp_path / "b.json", second)]
    with pytest.raises(SystemExit, match=f"different {field}: .*{value}"):
        report.merge(paths)


def test_merge_without_a_floor_bandwidth(tmp_path):
    """peak_bandwidth.gbps None (nothing measured): merged, no floor, speed-ups recomputed."""
    records = _records("bf16", 16)
    paths = [_write(tmp_path / "a.json", _results(records[:1])),
             _write(tmp_path / "b.json", _results(records[1:]))]
    report.main(["--merge", str(tmp_path / "m"), *paths])
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    triton = next(r for r in merged["records"] if r["provider"] == "triton")
    assert triton["speedup"] == pytest.approx(5.0) and triton["floor_frac"] is None
