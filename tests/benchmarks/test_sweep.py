"""benchmarks/sweep.py --quick in Triton's interpreter: every swept configuration of both
kernels (forward and backward, the online semantic dq and dk/dv kernels apart) gives the
default configuration's numbers in fp32, and the report names the best of each case and
direction."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from benchmarks import sweep  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the sweep runs the kernels on the CPU only in Triton's interpreter")
    out = tmp_path_factory.mktemp("sweep")
    assert sweep.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "sweep.json") as f:
        return json.load(f), (out / "sweep.md").read_text()


def test_every_configuration_agrees_with_the_default(result):
    res, _ = result
    rows = [r for r in res["rows"] if r["config"] != "default"]
    keys = {(r["case"], r["direction"]) for r in rows}
    assert {k[0] for k in keys} == {"window/quick/sw", "semantic/quick/win7", "semantic/quick/global",
                                    "loss/cityscapes-16x24"}
    assert {k[1] for k in keys} == {"fwd", "bwd", "bwd/dq", "bwd/dkdv"}
    # the online semantic backward (global 17x16) sweeps its two kernels one at a time
    assert {k[1] for k in keys if k[0] == "semantic/quick/global"} == {"fwd", "bwd/dq", "bwd/dkdv"}
    assert {k[1] for k in keys if k[0].startswith("loss")} == {"fwd"}  # one launch: loss + gradient
    for r in rows:
        assert r["error"] is None, r
        assert r["rel_err"] <= 1e-5 and r["time_ms"] > 0, r
    window_ms = {r["config"]["BLOCK_M"] for r in rows if r["case"].startswith("window")}
    assert window_ms - {64}  # the sweep really ran other tilings than the default (64)
    loss_tiles = {(r["config"]["TILE_Y"], r["config"]["TILE_X"]) for r in rows if r["case"].startswith("loss")}
    assert len(loss_tiles) == 2  # quick: the first and the last candidate


def test_report_names_the_best_per_case_and_direction(result):
    res, md = result
    assert len(res["best"]) == 8
    for b in res["best"]:
        assert b["best_ms"] <= b["default_ms"] and b["speedup"] >= 1.0
        assert b["case"] in md
    assert res["environment"]["triton_interpret"] is True
