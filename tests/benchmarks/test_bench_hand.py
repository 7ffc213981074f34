"""Benchmark arithmetic against hand computations from shared/PERF_MODEL.md, the docstring
of benchmarks/cases.py (bytes model) and the Swin paper (Liu et al. 2021: heads per stage,
shift = window // 2). Every expected number is worked out here, not taken from the code."""
import json
import os
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from benchmarks import cases as C  # noqa: E402
from benchmarks import measure as M  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import run as R  # noqa: E402


def test_window_bytes_fwd_bwd_by_hand():
    """Swin-T stage 0 at 512, batch 2, bf16: 128 -> padded 133, C 96, 3 heads.
    fwd reads q, k, v and writes out (4C); it also writes the fp32 lse (heads * 4 B);
    bwd reads q, k, v, out, dout (5C) and the lse, writes dq, dk, dv (3C)."""
    T = 2 * 133 * 133
    fwd = C.window_case("swin_t", 512, 0, True, "fwd", 2)
    both = C.window_case("swin_t", 512, 0, True, "fwd_bwd", 2)
    assert C.bytes_moved(fwd, "bf16") == T * 4 * 96 * 2
    lse = T * 3 * 4
    assert C.bytes_moved(both, "bf16") == T * 4 * 96 * 2 + lse + T * 8 * 96 * 2 + lse
    assert C.bytes_moved(fwd, "fp32") == T * 4 * 96 * 4
    assert C.bytes_moved(fwd, "fp16") == T * 4 * 96 * 2


def test_semantic_bytes_fwd_bwd_by_hand():
    """SeMask-T stage 1 at 512, windowed (7): 64 -> 70, K 150, C 192, batch 2, bf16;
    global: no padding (64). q, k have K channels, v and out C."""
    T = 2 * 70 * 70
    fwd = C.semantic_case("semask_t", 512, 1, "fwd", 2, windowed=True)
    both = C.semantic_case("semask_t", 512, 1, "fwd_bwd", 2, windowed=True)
    assert (fwd.params["Hp"], fwd.params["K"], fwd.params["C"]) == (70, 150, 192)
    assert C.bytes_moved(fwd, "bf16") == T * (150 + 150 + 192 + 192) * 2
    bwd = T * (3 * 150 + 3 * 192) * 2 + T * 4 + T * (150 + 192) * 2  # read q,k,v,out,dout,lse; write dq,dk,dv
    assert C.bytes_moved(both, "bf16") == T * (2 * 150 + 2 * 192) * 2 + T * 4 + bwd
    glob = C.semantic_case("semask_t", 512, 1, "fwd", 2, windowed=False)
    assert glob.params["Hp"] == 64 and C.bytes_moved(glob, "bf16") == 2 * 64 * 64 * 684 * 2


def test_loss_and_upsample_bytes_by_hand():
    """ADE20K 512x512: logits [B, 150, 128, 128], int64 labels (8 B) [B, 512, 512];
    Cityscapes 512x1024: 19 classes, logits 128x256. Upsample x2 of the FPN's 256-channel
    stage-1 map (64x64): read x (1) + write y (4x) = 5 maps; fwd_bwd twice that."""
    for mode, grads in (("fwd", 1), ("fwd_bwd", 2)):
        c = C.loss_case("ade20k", mode, 2)
        assert C.bytes_moved(c, "bf16") == grads * 2 * 150 * 128 * 128 * 2 + 2 * 512 * 512 * 8
    city = C.loss_case("cityscapes", "fwd", 1)
    assert (city.params["K"], city.params["h"], city.params["w"]) == (19, 128, 256)
    assert C.bytes_moved(city, "fp32") == 19 * 128 * 256 * 4 + 512 * 1024 * 8
    up = C.upsample_case("fpn", 512, 1, "fwd", 2)
    x = 2 * 256 * 64 * 64 * 2
    assert C.bytes_moved(up, "bf16") == 5 * x
    assert C.bytes_moved(C.upsample_case("fpn", 512, 1, "fwd_bwd", 2), "bf16") == 10 * x


def test_attention_flops_by_hand():
    """Per window of N = w*w tokens: QK^T and AV are 2 N N C flops each (2 per multiply-add)
    -> 4 T N C in all; semantic: 2 T N (K + C). The reference's backward does twice the
    forward's matmuls (dV, dP, dQ, dK), so fwd_bwd = 3x fwd."""
    T = 2 * 133 * 133
    fwd = C.window_case("swin_t", 512, 0, True, "fwd", 2)
    assert C.attention_flops(fwd) == 4 * T * 49 * 96
    assert C.attention_flops(C.window_case("swin_t", 512, 0, True, "fwd_bwd", 2)) == 3 * 4 * T * 49 * 96
    sem = C.semantic_case("semask_t", 512, 1, "fwd_bwd", 2, windowed=True)
    assert C.attention_flops(sem) == 3 * 2 * (2 * 70 * 70) * 49 * (150 + 192)
    glob = C.semantic_case("semask_t", 512, 3, "fwd", 1, windowed=False)  # 16x16, global: N = 256
    assert C.attention_flops(glob) == 2 * 256 * 256 * (150 + 768)


def test_case_shapes_follow_the_swin_paper():
    """Swin-T: C 96, heads (3, 6, 12, 24), window 7; Swin-B here: C 128, heads (4, 8, 16, 32),
    window 12 (PERF_MODEL.md pads 56 to 60); shift = window // 2; maps 512/4 halved."""
    for arch, C0, heads, w in (("swin_t", 96, (3, 6, 12, 24), 7), ("swin_b", 128, (4, 8, 16, 32), 12)):
        for stage in range(4):
            c = C.window_case(arch, 512, stage, True, "fwd", 1)
            side = 128 // 2 ** stage
            assert (c.params["H"], c.params["C"], c.params["heads"], c.params["window"], c.params["shift"]) \
                == (side, C0 * 2 ** stage, heads[stage], w, w // 2), (arch, stage)
            assert c.params["Hp"] == -(-side // w) * w
            assert C.window_case(arch, 512, stage, False, "fwd", 1).params["shift"] == 0
    n = C.norm_case("swin_t", 512, 2, "fwd", 1)
    assert (n.params["Hp"], n.params["C"]) == (32, 384)
    assert C.upsample_case("decoder", 512, 2, "fwd", 1).params["C"] == 150


def test_finalize_derived_figures_by_hand():
    """Batch 16 in 1 ms: 16000 img/s; 3e9 B in 1 ms: 3000 GB/s (1e9, not GiB); 2e9 FLOP in
    1 ms: 2 TFLOP/s; reference 4 ms -> speed-up 4; graph 3 ms vs 0.5 ms -> 6."""
    case = C.window_case("swin_t", 512, 3, True, "fwd", 16)
    ref = dict(R.new_record(case, "reference", "bf16"), time_ms=4.0, graph_ms=3.0, bytes=3e9, flops=2e9)
    tri = dict(R.new_record(case, "triton", "bf16"), time_ms=1.0, graph_ms=0.5, bytes=3e9, flops=2e9)
    R.finalize([ref, tri], 6e12, None)
    assert tri["throughput"] == pytest.approx(16000.0)
    assert tri["gbps"] == pytest.approx(3000.0)
    assert tri["tflops"] == pytest.approx(2.0)
    assert tri["speedup"] == pytest.approx(4.0) and ref["speedup"] == pytest.approx(1.0)
    assert tri["graph_speedup"] == pytest.approx(6.0)
    assert tri["floor_frac"] == pytest.approx(0.5)  # 3e9 B / 6e12 B/s = 0.5 ms of 1 ms
    assert R.measured_matmul_rate(dict(measured=dict(matmul_tflops=700.0))) == pytest.approx(7e14)


def test_goal_geomean_and_worst_by_hand():
    """16 window fwd cases at bf16, batch 16: triton 2x faster than eager on half, 8x on the
    other half -> geo-mean sqrt(2 * 8) = 4, worst 2 (not met: >= 4x)."""
    records = []
    cases = [c for c in C.full_cases(16, None) if c.kind == "window" and c.mode == "fwd"
             and c.params["img"] == 512]
    assert len(cases) == 16
    for i, case in enumerate(cases):
        records.append(dict(R.new_record(case, "reference", "bf16"), time_ms=8.0))
        records.append(dict(R.new_record(case, "triton", "bf16"), time_ms=4.0 if i % 2 else 1.0))
    g = {(x["goal"], x["provider"]): x for x in report.goal_values(records)}[
        ("window attention fwd >= 4x eager", "triton")]
    assert (g["n"], g["geomean"], g["worst"], g["met"]) == (16, pytest.approx(4.0), pytest.approx(2.0), False)


def test_merge_later_measured_record_wins(tmp_path):
    """report.merge: for two measured records of one case, the later file wins."""
    case = C.window_case("swin_t", 224, 3, False, "fwd", 1)
    env = dict(device="CPU: test", device_type="cpu", torch="x", triton="x", python="x", commit="c", date="d")
    for name, t in (("a.json", 1.0), ("b.json", 0.5)):
        rec = dict(R.new_record(case, "compile", "fp32"), time_ms=t)
        (tmp_path / name).write_text(json.dumps(dict(environment=env, records=[rec])))
    merged = report.merge([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert [r["time_ms"] for r in merged["records"]] == [0.5]


def _fake_clock(monkeypatch, module, durations):
    """module.time.perf_counter reads a clock that each call of the returned fn advances by the
    next of ``durations`` (s)."""
    clock = {"t": 0.0}
    steps = iter(durations)
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))

    def fn():
        clock["t"] += next(steps)
    return fn


def test_cpu_time_is_the_median(monkeypatch):
    """CPU timing: median of the timed calls (1, 1, 1, 1, 100 ms -> 1 ms; the mean is 20.8)."""
    fn = _fake_clock(monkeypatch, M, [0.0, 0.001, 0.001, 0.001, 0.001, 0.1])  # warm-up, then 5 timed calls
    assert M.time_ms(fn, "cpu", target_s=0.0, max_reps=5, min_reps=5) == pytest.approx(1.0)


def test_measure_device_rates_by_hand(monkeypatch):
    """Every timing 2 ms: the CPU copy of 2**27 B reads and writes 2 * 2**27 B -> 134.2 GB/s;
    a 1024^3 matmul is 2 * 1024**3 FLOP -> 1.074 TFLOP/s."""
    monkeypatch.setattr(M, "time_ms", lambda *a, **k: 2.0)
    got = M.measure_device("cpu")
    assert got["copy_gbps"] == pytest.approx(2 * 2 ** 27 / 2e-3 / 1e9)
    assert got["matmul_tflops"] == pytest.approx(2 * 1024 ** 3 / 2e-3 / 1e12)


def test_profile_step_times_are_medians_then_a_mean_in_ms(monkeypatch):
    """step_times: wall and host are medians of the timed steps (1, 5, 2 ms -> 2 ms; the
    mean would be 2.67), back-to-back the mean of the next three (3, 3, 6 ms -> 4 ms)."""
    from benchmarks import profile_step as P
    step = _fake_clock(monkeypatch, P, [0.001, 0.005, 0.002, 0.003, 0.003, 0.006])
    wall, host, chained = P.step_times(step, 3, cuda=False)
    assert (wall, host, chained) == pytest.approx((2.0, 2.0, 4.0))


def test_host_time_is_microseconds_per_timed_call(monkeypatch):
    """host_us: max(5, calls // 10) = 5 untimed warm-up calls, then 20 calls of 2 ms each
    (the warm-ups take 1 s each and must not count): 2000 us per call."""
    from benchmarks import host_time as H
    fn = _fake_clock(monkeypatch, H, [1.0] * 5 + [0.002] * 20)
    assert H.host_us(fn, 20, lambda: None) == pytest.approx(2000.0)


def test_cpu_peak_memory_is_in_mib():
    """A 64 MiB and a 128 MiB tensor (ones: every page touched) grow the resident set by
    about 64 and 128 MiB (growth over the RSS before the call)."""
    import torch
    growth = [M.peak_memory_mb(lambda: torch.ones(n << 20, dtype=torch.uint8), "cpu")[1] for n in (64, 128)]
    resettable = os.access("/proc/self/clear_refs", os.W_OK)   # else the peak is the process's lifetime peak
    assert growth[0] >= 56 and growth[1] >= 120
    if resettable:
        assert growth[0] <= 72 and growth[1] <= 136
