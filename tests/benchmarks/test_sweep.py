"""benchmarks/sweep.py --quick in Triton's interpreter: every swept configuration of both
kernels (forward and backward, the online semantic dq and dk/dv kernels apart) gives the
default configuration's numbers in fp32, and the report names the best of each case and
direction."""
import json
import os
import sys

import pytest
import torch

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
    # global 17x16: the GEMM path's row kernels ("fwd", "bwd"), and the online kernels with
    # that path off, the backward's two kernels one at a time
    assert {k[1] for k in keys if k[0] == "semantic/quick/global"} == {"fwd", "bwd", "bwd/dq", "bwd/dkdv"}
    assert {r["config"].get("path") for r in rows if r["case"] == "semantic/quick/global"} == {"gemm", None}
    assert {k[1] for k in keys if k[0].startswith("loss")} == {"fwd"}  # one launch: loss + gradient
    for r in rows:
        assert r["error"] is None, r
        assert r["rel_err"] <= 1e-5 and r["time_ms"] > 0, r
    window_ms = {r["config"]["BLOCK_M"] for r in rows if r["case"].startswith("window")}
    assert window_ms - {64}  # the sweep really ran other tilings than the default (64)
    assert any(r["config"].get("num_stages") == 1 for r in rows if r["case"].startswith("window"))
    assert {r["direction"] for r in rows if r["config"].get("maxnreg") == 128} == {"fwd"}
    loss_tiles = {(r["config"]["TILE_Y"], r["config"]["TILE_X"]) for r in rows if r["case"].startswith("loss")}
    assert len(loss_tiles) == 2  # quick: the first and the last candidate, and a one-pass one
    assert {r["config"]["ONE_PASS"] for r in rows if r["case"].startswith("loss")} == {True, False}


def test_report_names_the_best_per_case_and_direction(result):
    res, md = result
    assert len(res["best"]) == 9
    for b in res["best"]:
        assert b["best_ms"] <= b["default_ms"] and b["speedup"] >= 1.0
        assert b["case"] in md
    assert res["environment"]["triton_interpret"] is True


def test_a_sweep_cut_short_keeps_the_rows_it_timed(tmp_path, monkeypatch):
    """The files are rewritten after rows (at most once a second; here after every row): a
    run stopped in its third candidate (as by a timeout) leaves the default row and the two
    candidates before it, and no temporary file."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the sweep runs the kernels on the CPU only in Triton's interpreter")
    monkeypatch.setattr(sweep, "WRITE_EVERY_S", 0.0)
    tried, real = [], sweep._try

    def stop_at_third(*args):
        tried.append(1)
        if len(tried) == 3:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(sweep, "_try", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(["--quick", "--device", "cpu", "--cases", "window/quick", "--out", str(tmp_path)])
    with open(tmp_path / "sweep.json") as f:
        rows = json.load(f)["rows"]
    assert [r["config"] == "default" for r in rows] == [True, False, False]
    assert all(r["time_ms"] > 0 and r["error"] is None for r in rows)
    assert "window/quick" in (tmp_path / "sweep.md").read_text()
    assert sorted(os.listdir(tmp_path)) == ["sweep.json", "sweep.md"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_window_config_applies_the_candidate_at_every_dtype(dtype):
    """A window candidate changes what the launchers read, for the swept direction only,
    whatever the dtype (fp32 and half precision have separate default tables), and the
    defaults come back afterwards."""
    import torch

    from semask.kernels import window_attention as WA

    dtype = getattr(torch, dtype)
    keys = [(7, "fwd"), (7, "bwd"), (12, "bwd")]
    before = {k: WA._config(*k, dtype) for k in keys}
    with sweep.window_config(7, "bwd", dict(BLOCK_M=16, num_warps=2, programs_per_sm=9)):
        during = {k: WA._config(*k, dtype) for k in keys}
        assert (during[7, "bwd"]["BLOCK_M"], during[7, "bwd"]["num_warps"]) == (16, 2)
        assert during[7, "fwd"] == before[7, "fwd"] and during[12, "bwd"] == before[12, "bwd"]
        assert WA._PROGRAMS_PER_SM[1] == 9
    assert {k: WA._config(*k, dtype) for k in keys} == before
    assert WA._PROGRAMS_PER_SM[1] != 9
    assert "num_stages" not in before[7, "fwd"]
    with sweep.window_config(7, "fwd", dict(BLOCK_M=64, num_warps=4, programs_per_sm=3,
                                            num_stages=2, maxnreg=128)):
        assert WA._config(7, "fwd", dtype)["num_stages"] == 2
        assert WA._config(7, "fwd", dtype)["maxnreg"] == 128
    assert WA._config(7, "fwd", dtype) == before[7, "fwd"]


def test_gemm_and_kernel_settings_apply_and_restore():
    """A GEMM-path candidate sets the row kernels' tile and warps; an attention-kernel
    candidate of a global case turns the GEMM path off; both restore the defaults."""
    import contextlib

    from semask.kernels import semantic_gemm as sg

    defaults = sg.TILE_ELEMENTS, sg.NUM_WARPS, sg.MAX_TOKENS
    with sweep.gemm_config(dict(path="gemm", TILE_ELEMENTS=1024, num_warps=16)):
        assert (sg.TILE_ELEMENTS, sg.NUM_WARPS) == (1024, 16)
    seen = []
    with sweep.on_kernels(lambda cfg: contextlib.nullcontext(seen.append(cfg)), dict(BLOCK_M=32)):
        assert not sg.supports(32 * 32, 0)
    assert seen == [dict(BLOCK_M=32)]
    assert (sg.TILE_ELEMENTS, sg.NUM_WARPS, sg.MAX_TOKENS) == defaults and sg.supports(32 * 32, 0)


def test_one_default_row_per_case_and_direction(result):
    res, _ = result
    keys = [(r["case"], r["direction"]) for r in res["rows"] if r["config"] == "default"]
    assert len(keys) == len(set(keys)) == len(res["best"])


def test_kernel_candidates_of_global_maps_take_the_kernels_forward(monkeypatch):
    """On a global case the attention kernels' backward candidates get the lse of the
    kernels' own forward (the GEMM path's differs: its scores are rounded), and the GEMM
    candidates the GEMM path's."""
    from semask.kernels import semantic_gemm as sg

    def path():
        return 1.0 if sg.MAX_TOKENS == 0 else 0.0  # 1: the attention kernels

    seen = []

    def runners(case, device, dtype):
        def forward():
            return torch.ones(1), torch.full((1,), path())

        def backward(out, lse):
            seen.append((lse.item(), path()))
            return (torch.ones(1),)
        return forward, backward

    monkeypatch.setattr(sweep, "_runners", runners)
    monkeypatch.setattr(sweep, "_time_ms", lambda fn, device, default=False: fn() and 1.0)
    case = next(c for c in sweep.sweep_cases(True, 1) if c.name == "semantic/quick/global")
    rows = list(sweep.sweep_case(case, "cpu", torch.float32, True, float("inf")))
    assert {p for _, p in seen} == {0.0, 1.0}
    assert all(lse == p for lse, p in seen)
    assert all(r["error"] is None for r in rows)


def test_directions_keep_only_the_named_kernels(monkeypatch):
    """--directions bwd: only the backward candidates of a case are tried (and its default
    timed), not the forward's; a direction that is none of fwd, bwd, bwd/dq, bwd/dkdv is
    refused."""
    monkeypatch.setattr(sweep, "_runners", lambda case, device, dtype: (
        lambda: (torch.ones(1), torch.zeros(1)), lambda out, lse: (torch.ones(1),)))
    monkeypatch.setattr(sweep, "_time_ms", lambda fn, device, default=False: fn() and 1.0)
    case = next(c for c in sweep.sweep_cases(True, 1) if c.name == "semantic/quick/win7")
    every = {r["direction"] for r in sweep.sweep_case(case, "cpu", torch.float32, True, float("inf"))}
    kept = list(sweep.sweep_case(case, "cpu", torch.float32, True, float("inf"), ["bwd"]))
    assert every == {"fwd", "bwd"} and {r["direction"] for r in kept} == {"bwd"}
    assert sum(r["config"] == "default" for r in kept) == 1 and len(kept) > 1
    for bad in ("bwd/xx", ",", "forward"):
        with pytest.raises(SystemExit):
            sweep.main(["--quick", "--device", "cpu", "--directions", bad])


@pytest.mark.parametrize("scratch", [False, True])
def test_window_12_sweeps_the_scratch_backward(monkeypatch, scratch):
    """Online windows (12 x 12) also sweep "bwd/gemm": its setting turns the scratch backward
    on for the candidate's duration (its default tiles first) and "bwd/dkdv" turns it off,
    each restoring the flag; global maps have no such direction."""
    import torch

    from semask.kernels import semantic_attention as SA

    monkeypatch.setattr(SA, "SCRATCH_BACKWARD", scratch)

    full = sweep.sweep_cases(False, 2)
    win12 = next(c for c in full if c.name == "semantic/semask_b-512/s0/win12")
    found = {d: (cands, setting) for d, cands, setting, _ in sweep._sweeps(win12, False)}
    assert set(found) == {"fwd", "bwd/dq", "bwd/dkdv", "bwd/gemm"}
    cands, setting = found["bwd/gemm"]
    p = win12.params
    assert cands[0] == SA._config(144, p["K"], p["C"], "gemm", torch.bfloat16)
    with setting(cands[1]):
        assert SA.SCRATCH_BACKWARD is True and SA._scratch(144, 12)
        assert SA._config(144, p["K"], p["C"], "gemm", None) == cands[1]
    assert SA.SCRATCH_BACKWARD is scratch
    cands, setting = found["bwd/dkdv"]
    with setting(cands[0]):
        assert SA.SCRATCH_BACKWARD is False
        assert SA._config(144, p["K"], p["C"], "dkdv", None) == cands[0]
    assert SA.SCRATCH_BACKWARD is scratch
    dq = found["bwd/dq"][0]
    assert any(c["BLOCK_N"] == 128 for c in dq)
    # dq's default tiles first, both ways, then every tile both ways (DQ_IN_GEMM)
    assert dq[0] == SA._config(144, p["K"], p["C"], "dq", torch.bfloat16)
    assert dq[1] == dict(dq[0], DQ_IN_GEMM=not dq[0]["DQ_IN_GEMM"])
    assert sum(c["DQ_IN_GEMM"] for c in dq) == len(dq) // 2
    with found["bwd/dq"][1](dq[0]):  # dq in the dq kernel: the scratch flag as it was
        assert SA.SCRATCH_BACKWARD is scratch
    with found["bwd/dq"][1](dq[1]):  # dq in the GEMM kernel: the scratch backward on
        assert SA.SCRATCH_BACKWARD is True
    assert SA.SCRATCH_BACKWARD is scratch
    glob = next(c for c in full if c.name == "semantic/semask_b-512/s2/global")
    assert "bwd/gemm" not in {d for d, *_ in sweep._sweeps(glob, False)}
