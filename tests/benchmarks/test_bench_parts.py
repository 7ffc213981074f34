"""Parts of the benchmark harness: FLOP formulas of the fused custom ops, the SDPA
provider's numerics, the bytes model against PERF_MODEL.md, and the fused-provider path
of the runner (driven by a stand-in provider that computes with the reference ops)."""
import argparse
import concurrent.futures
import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # the `benchmarks` package lives at the repository root

import semask  # noqa: E402
import semask.ops.flops  # noqa: E402,F401
from benchmarks import cases as C  # noqa: E402
from benchmarks import providers as P  # noqa: E402
from benchmarks import run as R  # noqa: E402
from semask.ops import backend  # noqa: E402
from semask.ops.reference import (semantic_attention_lse_reference, semantic_attention_reference,  # noqa: E402
                                  window_attention_lse_reference, window_attention_reference)


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("B,H,W,C,heads,window,shift", [(1, 14, 14, 96, 3, 7, 3), (2, 24, 12, 64, 2, 12, 0)])
def test_window_flop_formula_equals_reference_matmuls(B, H, W, C, heads, window, shift):
    """Fused op on meta tensors (fake impl + formula) vs the reference's counted matmuls."""
    scale = (C // heads) ** -0.5
    qkv = torch.randn(B, H, W, 3 * C, requires_grad=True)
    table = torch.randn((2 * window - 1) ** 2, heads, requires_grad=True)
    mq, mt = (torch.empty(t.shape, device="meta", requires_grad=True) for t in (qkv, table))
    ref_f = _flops(lambda: window_attention_reference(qkv, table, heads, window, shift, scale))
    ref_fb = _flops(lambda: window_attention_reference(qkv, table, heads, window, shift, scale).sum().backward())
    op = torch.ops.semask.window_attention_fwd
    fused_f = _flops(lambda: op(mq, mt, heads, window, shift, scale, H, W, "triton"))
    fused_fb = _flops(lambda: op(mq, mt, heads, window, shift, scale, H, W, "triton")[0].sum().backward())
    assert fused_f == ref_f == 4 * B * H * W * window ** 2 * C
    assert fused_fb == ref_fb == 3 * ref_f


@pytest.mark.parametrize("window", [7, 0])
def test_semantic_flop_formula_equals_reference_matmuls(window):
    q, k = (torch.randn(2, 14, 14, 19, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 14, 14, 40, requires_grad=True)
    meta = [torch.empty(t.shape, device="meta", requires_grad=True) for t in (q, k, v)]
    ref_fb = _flops(lambda: semantic_attention_reference(q, k, v, window).sum().backward())
    fused_fb = _flops(lambda: torch.ops.semask.semantic_attention_fwd(*meta, window, "cuda")[0].sum().backward())
    n = window * window if window else 14 * 14
    assert fused_fb == ref_fb == 3 * 2 * 2 * 14 * 14 * n * (19 + 40)


@pytest.mark.parametrize("window,shift,H", [(7, 3, 14), (7, 0, 21), (12, 6, 24)])
def test_sdpa_window_matches_reference(window, shift, H):
    heads, C = 3, 96
    qkv = torch.randn(2, H, H, 3 * C, dtype=torch.float64, requires_grad=True)
    table = (torch.randn((2 * window - 1) ** 2, heads, dtype=torch.float64) * 0.5).requires_grad_()
    args = (heads, window, shift, (C // heads) ** -0.5)
    ref = window_attention_reference(qkv, table, *args)
    out = P.sdpa_window_attention(qkv, table, *args)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    dout = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (qkv, table), dout)
    g_out = torch.autograd.grad(out, (qkv, table), dout)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("window", [7, 0])
def test_sdpa_semantic_matches_reference(window):
    q, k = (torch.randn(1, 14, 21, 19, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 14, 21, 32, dtype=torch.float64)
    torch.testing.assert_close(P.sdpa_semantic_attention(q, k, v, window),
                               semantic_attention_reference(q, k, v, window), rtol=1e-10, atol=1e-10)


def test_sdpa_model_patch_is_exact_and_restored():
    mod = P._win_mod
    original = mod.window_attention_reference
    model = semask.SeMaskSwin("micro", num_classes=19, drop_path_rate=0.0).double().eval()
    x = torch.randn(1, 3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x).logits
        with P.sdpa_in_reference_model():
            assert mod.window_attention_reference is P.sdpa_window_attention
            out = model(x).logits
    assert mod.window_attention_reference is original
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_bytes_model_reproduces_perf_model():
    """Numbers as printed in shared/PERF_MODEL.md (MB, GFLOP, H100 floor in us; H200 floors
    at its 4.3 TB/s)."""
    published = {"swin_t-224": (11.4, 0.28, 3.8), "swin_t-512": (70.2, 1.72, 23.4),
                 "swin_b-224": (57.5, 4.14, 19.2), "swin_b-512": (161.9, 11.66, 54.0),
                 "semask_t-512": (27.2, 1.83, 9.1), "semask_b-512": (33.9, 2.44, 11.3)}
    rows = {r["name"]: r for r in C.perf_model_rows("bf16")}
    for name, (mb, gflop, floor) in published.items():
        assert round(rows[name]["bytes"] / 1e6, 1) == mb, name
        assert rows[name]["flops"] / 1e9 == pytest.approx(gflop, abs=0.006), name
        assert round(rows[name]["floor_us"]["H100"], 1) == floor, name
    for name, floor in (("swin_t-224", 2.7), ("swin_t-512", 16.3), ("swin_b-512", 37.7)):
        assert round(rows[name]["floor_us"]["H200"], 1) == floor, name
    stage0 = rows["swin_t-512"]["stages"][0]
    assert (stage0["side"], stage0["padded"], round(stage0["bytes"] / 1e6, 2)) == (128, 133, 27.17)


def test_norm_case_bytes_by_hand():
    """Swin-T stage 1 at 512, batch 16: x [16, 64, 64, 192] bf16; forward reads x and writes
    y (4 bytes per element); fwd_bwd adds x, dy, dx (6 bytes) and the fp32 mean and rstd,
    written by the forward and read by the backward (16 bytes per token)."""
    fwd, both = (C.norm_case("swin_t", 512, 1, mode, 16) for mode in C.MODES)
    n = 16 * 64 * 64 * 192
    assert (fwd.params["C"], C.bytes_moved(fwd, "bf16")) == (192, 4 * n)
    assert C.bytes_moved(both, "bf16") == 10 * n + 16 * 16 * 64 * 64


def test_floor_is_the_larger_of_memory_and_compute():
    """Global semantic attention of SeMask-B stage 2 (about 512 flop/B) is compute-bound at
    an H200's 4.3 TB/s and a measured ~700 TFLOP/s; window attention stays memory-bound."""
    semantic = C.semantic_case("semask_b", 512, 2, "fwd", 16, windowed=False)
    window = C.window_case("swin_t", 512, 0, True, "fwd", 16)
    records = []
    for case in (semantic, window):
        records.append(dict(R.new_record(case, "triton", "bf16"), time_ms=1.0,
                            flops=C.attention_flops(case)))
    R.finalize(records, 4.3e12, 700e12)
    sem, win = records
    assert sem["flops"] / sem["bytes"] > 400
    assert sem["floor_bound"] == "compute"
    assert sem["floor_frac"] == pytest.approx(sem["flops"] / 700e12 / 1e-3)
    assert win["floor_bound"] == "memory"
    assert win["floor_frac"] == pytest.approx(win["bytes"] / 4.3e12 / 1e-3)
    assert C.floor_time_s(None, None, 1e12, 1e12) == (None, None)
    assert C.floor_time_s(10, 10 ** 6, 1.0, None) == (10.0, "memory")  # no matmul rate


@pytest.mark.parametrize("name,gbps,source", [
    ("NVIDIA H100 80GB HBM3", 3000.0, "PERF_MODEL.md"), ("NVIDIA H200", 4300.0, "PERF_MODEL.md"),
    ("NVIDIA H100 PCIe", 1800.0, "measured"), ("NVIDIA H100 NVL", 1800.0, "measured"),
    ("NVIDIA GH200 480GB", 1800.0, "measured"), ("NVIDIA H200 NVL", 1800.0, "measured")])
def test_floor_bandwidth_by_exact_device_name(name, gbps, source):
    bps, said = C.floor_bandwidth(name, 1800.0)
    assert bps == pytest.approx(gbps * 1e9) and said.startswith(source)


def test_floor_bandwidth_unknown_and_unmeasured():
    assert C.floor_bandwidth("CPU: AMD EPYC (2 cores)", None)[0] is None


def test_compile_baseline_compiles_forward_and_loss_as_one_function(monkeypatch):
    """compile's training step: one compiled callable taking images and labels, whose
    graph holds the cross-entropy; same loss as the eager model. A model with the fused
    loss kernel (eager only) gets its forward compiled instead."""
    compiled, graphs = [], []
    real_compile = torch.compile

    def recording_compile(fn, **kwargs):
        compiled.append(fn)
        return real_compile(fn, backend=lambda gm, inputs: graphs.append(gm) or gm.forward)

    monkeypatch.setattr(torch, "compile", recording_compile)
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_micro_fpn", num_classes=5, fused=False,
                                drop_path_rate=0.0).train()
    images, target = torch.randn(1, 3, 64, 64), torch.randint(0, 5, (1, 64, 64))
    try:
        loss_of = P.compiled_training_loss(model)
        assert len(compiled) == 1 and not isinstance(compiled[0], torch.nn.Module)
        torch.manual_seed(1)  # the same dropout masks (the semantic layers' proj_drop) in both
        loss = loss_of(images, target)
        torch.manual_seed(1)
        torch.testing.assert_close(loss, P.training_loss(model)(images, target), rtol=1e-4, atol=1e-4)
        assert any("cross_entropy" in str(gm.graph) or "nll_loss" in str(gm.graph) for gm in graphs)
        model.fused_loss = True
        P.compiled_training_loss(model)
        assert compiled[-1] is model
    finally:
        torch._dynamo.reset()


class _ReferenceAsFused:
    """Stand-in fused provider (answers the launcher signatures with the reference ops):
    exercises the runner's fused path through the custom ops without a GPU kernel."""

    def reasons(self, op, tensors, params):
        return []

    def window_attention_fwd(self, qkv, table, num_heads, window, shift, scale, height, width):
        args = (num_heads, window, shift, scale)
        out = window_attention_reference(qkv, table, *args)[:, :height, :width].contiguous()
        return out, window_attention_lse_reference(qkv, table, *args)

    def window_attention_bwd(self, dout, qkv, table, out, lse, num_heads, window, shift, scale):
        H, W = dout.shape[1:3]
        return _vjp(lambda q, t: window_attention_reference(q, t, num_heads, window, shift,
                                                            scale)[:, :H, :W], (qkv, table), dout)

    def semantic_attention_fwd(self, q, k, v, window):
        return semantic_attention_reference(q, k, v, window), semantic_attention_lse_reference(q, k, window)

    def semantic_attention_bwd(self, dout, q, k, v, out, lse, window):
        return _vjp(lambda *t: semantic_attention_reference(*t, window), (q, k, v), dout)


def _vjp(fn, inputs, dout):
    """Autograd of ``fn`` from inside a custom op's kernel, where autograd is switched off
    for the calling thread: run it in a fresh thread (dispatch state is thread-local)."""
    def work():
        leaves = [t.detach().requires_grad_() for t in inputs]
        return torch.autograd.grad(fn(*leaves), leaves, dout)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return tuple(pool.submit(work).result())


def _args(loss_chunk="auto", fused_loss=True, fused_upsample=True):
    return argparse.Namespace(device="cpu", dtype="fp32", target_time=0.01, loss_chunk=loss_chunk,
                              fused_loss=fused_loss, fused_upsample=fused_upsample,
                              fused_norm=None, cuda_graphs=False)


@pytest.fixture
def one_thread():
    """Timing loops on a shared 2-core machine: one thread avoids spin-wait stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_runner_fused_path_counts_reference_flops(monkeypatch, one_thread, mode):
    monkeypatch.setitem(backend._providers, "cuda", _ReferenceAsFused())
    cases = [C.window_case("swin_t", 224, 3, True, mode, 1), C.semantic_case("semask_t", 224, 1, mode, 1),
             C.model_case("semask_swin_micro_fpn", 64, mode, 1, num_classes=19)]
    for case in cases:
        recs = {}
        for provider in ("reference", "cuda"):
            rec = R.new_record(case, provider, "fp32")
            R.measure_one(case, provider, _args(), rec)
            assert rec["skipped_reason"] is None and rec["time_ms"] > 0, rec
            recs[provider] = rec
        assert recs["cuda"]["flops"] == recs["reference"]["flops"] > 0, case.name
        assert recs["cuda"]["flops_source"] == "run"
        if case.kind != "model":
            assert recs["reference"]["flops"] == C.attention_flops(case)
            assert recs["cuda"]["max_rel_err"] < 1e-5


def test_loss_chunk_option_reaches_the_models(monkeypatch, one_thread):
    """--loss-chunk: auto keeps each model's default (none for the reference, 4 fused);
    an int or none applies to every provider; the record's note names the chunking."""
    assert R.parse_args(["--loss-chunk", "none"]).loss_chunk is None
    assert R.parse_args(["--loss-chunk", "2"]).loss_chunk == 2
    assert R.parse_args([]).loss_chunk == "auto"
    assert R.parse_args([]).fused_loss and not R.parse_args(["--no-fused-loss"]).fused_loss
    assert R.parse_args([]).fused_upsample
    assert not R.parse_args(["--no-fused-upsample"]).fused_upsample
    assert R.parse_args([]).fused_norm is None and R.parse_args(["--no-fused-norm"]).fused_norm is False
    assert R.parse_args(["--eager-fused-norm"]).fused_norm is True
    with pytest.raises(SystemExit):
        R.parse_args(["--eager-fused-norm", "--no-fused-norm"])
    with pytest.raises(SystemExit):
        R.parse_args(["--loss-chunk", "0"])
    monkeypatch.setitem(backend._providers, "cuda", _ReferenceAsFused())
    case = C.model_case("semask_swin_micro_fpn", 64, "fwd_bwd", 2, num_classes=19)
    notes = {}
    for provider, chunk in (("reference", "auto"), ("cuda", "auto"), ("cuda", None), ("reference", 1)):
        rec = R.new_record(case, provider, "fp32")
        R.measure_one(case, provider, _args(chunk), rec)
        assert rec["skipped_reason"] is None, rec
        notes[provider, chunk] = rec["note"]
    assert "chunked loss" not in notes["reference", "auto"]
    assert f"loss_chunk={semask.models.semask.DEFAULT_LOSS_CHUNK}" in notes["cuda", "auto"]
    assert "chunked loss" not in notes["cuda", None]
    assert "loss_chunk=1" in notes["reference", 1]


def test_triton_on_cpu_is_an_interpreter_run(monkeypatch, one_thread):
    """Under TRITON_INTERPRET=1 op cases run once and are labelled; models are skipped."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(backend._providers, "triton", _ReferenceAsFused())
    op = C.window_case("swin_t", 224, 3, False, "fwd_bwd", 1)
    rec = R.new_record(op, "triton", "fp32")
    R.measure_one(op, "triton", _args(), rec)
    assert rec["time_ms"] > 0 and "interpreter" in rec["note"]
    assert rec["flops"] == C.attention_flops(op)
    model = C.model_case("semask_swin_micro_fpn", 64, "fwd", 1, num_classes=19)
    rec = R.new_record(model, "triton", "fp32")
    R.measure_one(model, "triton", _args(), rec)
    assert rec["time_ms"] is None and "interpreter" in rec["skipped_reason"]


@pytest.mark.parametrize("interpreted", [True, False])
def test_triton_semantic_case_runs_on_padded_classes(monkeypatch, one_thread, interpreted):
    """The Triton provider gets q, k of 160 classes (150 + zeros, as the fused model pads
    them), says so in the note, and counts the FLOPs of 150; the padding note alone does not
    make a run an interpreter run (one rep, no FLOP count), whose note it joins."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    seen = []

    class Spy(_ReferenceAsFused):
        def semantic_attention_fwd(self, q, k, v, window):
            seen.append(q.shape[-1])
            return super().semantic_attention_fwd(q, k, v, window)

    monkeypatch.setitem(backend._providers, "triton", Spy())
    if not interpreted:  # as on a GPU
        monkeypatch.setattr(P, "interpreter_note", lambda provider, device: "")
    case = C.semantic_case("semask_t", 224, 1, "fwd_bwd", 1)
    prepared = P.prepare(case, "triton", "cpu", "fp32")
    assert ("padded to 160" in prepared.note) and (("interpreter" in prepared.note) == interpreted)
    assert (prepared.max_reps == 1) == interpreted and (prepared.count is None) == interpreted
    prepared.step()
    assert seen == [160]  # the timed step
    rec = R.new_record(case, "triton", "fp32")
    R.measure_one(case, "triton", _args(), rec)
    assert rec["flops"] == C.attention_flops(case) and rec["max_rel_err"] < 1e-5


def test_unavailable_provider_is_skipped_with_reason(monkeypatch):
    class Broken(_ReferenceAsFused):
        def reasons(self, op, tensors, params):
            raise ModuleNotFoundError("No module named 'semask.kernels.window_attention'")

    monkeypatch.setitem(backend._providers, "cuda", Broken())
    case = C.window_case("swin_t", 224, 3, False, "fwd", 1)
    rec = R.new_record(case, "cuda", "fp32")
    R.measure_one(case, "cuda", _args(), rec)
    assert rec["time_ms"] is None and "semask.kernels.window_attention" in rec["skipped_reason"]
    assert rec["flops"] == C.attention_flops(case) and rec["flops_source"] == "meta"


def test_gpu_report_from_synthetic_records(tmp_path):
    """The GPU-only parts of the report (goals, per-image table, plots) on made-up records
    with known ratios: triton 5x faster than the reference, sdpa 2x, all at 80% of the
    floor for window fwd."""
    from benchmarks import report

    records = []
    for case in C.full_cases(16, None):
        base = 10.0
        for prov, t in (("reference", base), ("sdpa", base / 2), ("compile", base / 3), ("triton", base / 5)):
            r = R.new_record(case, prov, "bf16")
            if prov == "triton" and case.kind == "window" and case.mode == "fwd":
                t = r["bytes"] / 3e12 / 0.8 * 1e3  # 80% of the floor; the others follow below
            r.update(time_ms=t, peak_mem_mb=100.0 if prov != "triton" else 50.0, flops=10 ** 9)
            records.append(r)
        refs = {r["provider"]: r for r in records[-4:]}
        if case.kind == "window" and case.mode == "fwd":
            refs["reference"]["time_ms"] = refs["triton"]["time_ms"] * 5
            refs["sdpa"]["time_ms"] = refs["triton"]["time_ms"] * 2
            refs["compile"]["time_ms"] = refs["triton"]["time_ms"] * 1.6
        records.append(dict(R.new_record(case, "cuda", "bf16"), skipped_reason="not built"))
        if case.kind == "model":  # the compiled fused model: 4/3 of compile's speed
            records.append(dict(R.new_record(case, "triton-compile", "bf16"), time_ms=base / 4,
                                peak_mem_mb=50.0, flops=10 ** 9))
        if case.kind != "model":  # graph times: the reference's = its stream time, triton's half
            refs["reference"]["graph_ms"] = refs["reference"]["time_ms"]
            refs["triton"]["graph_ms"] = refs["triton"]["time_ms"] / 2
    R.finalize(records, 3e12)
    results = dict(environment=dict(device="NVIDIA H100 80GB HBM3", device_type="cuda", torch="2.11",
                                    triton="3.6", python="3.12", commit="abc", date="today",
                                    capability="9.0", sm_count=132, memory_gb=79.1, cuda="13.0"),
                   measured=dict(copy_gbps=3000.0, matmul_tflops=790.0, matmul="8192^3 bf16"),
                   peak_bandwidth=dict(gbps=3000.0, source="PERF_MODEL.md"),
                   settings=dict(dtype="bf16"), records=records, perf_model=C.perf_model_rows())
    goals = {(g["goal"], g["provider"]): g for g in report.goal_values(records)}
    g = goals[("window attention fwd >= 4x eager", "triton")]
    assert g["n"] == 16 and g["worst"] == pytest.approx(5.0) and g["met"]  # 2 archs x 4 stages x w/sw
    assert goals[("window attention fwd >= 1.5x SDPA", "triton")]["worst"] == pytest.approx(2.0)
    assert goals[("window attention fwd >= 60% of the HBM floor", "triton")]["worst"] == pytest.approx(0.8)
    assert goals[("SeMask-T FPN peak training memory <= 0.6x eager", "triton")]["worst"] == pytest.approx(0.5)
    assert goals[("window attention fwd >= 4x eager", "cuda")]["n"] == 0
    assert goals[("SeMask-T FPN training step >= 1.15x torch.compile", "triton-compile")]["worst"] \
        == pytest.approx(4 / 3)
    assert not any(p == "triton-compile" and "window" in goal for goal, p in goals)
    graph = {(g["goal"], g["provider"]): g for g in report.goal_values(records, "graph_ms")}
    assert graph[("window attention fwd >= 4x eager", "triton")]["worst"] == pytest.approx(10.0)
    assert graph[("window attention fwd >= 60% of the HBM floor", "triton")]["worst"] == pytest.approx(1.6)
    assert graph[("window attention fwd >= 1.5x SDPA", "triton")]["n"] == 0  # sdpa has no graph time
    assert not any("SeMask-T" in goal for goal, _ in graph)
    semantic = next(r for r in records if r["kind"] == "semantic" and r["provider"] == "triton")
    assert semantic["graph_speedup"] == pytest.approx(10.0)
    per_image = {(r["network"], r["provider"]): r for r in report.per_image_rows(results)}
    row = per_image[("swin_t-512", "triton")]
    assert row["floor_us"] == pytest.approx(23.4, abs=0.05)
    assert row["floor_us"] / row["us_per_image"] == pytest.approx(0.8)
    row = {(r["network"], r["provider"]): r for r in report.per_image_rows(results, "graph_ms")}[
        ("swin_t-512", "triton")]
    assert row["floor_us"] / row["us_per_image"] == pytest.approx(1.6)
    report.write_report(results, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "Speed goals of issue 4" in md and "not measured" in md and "CPU numbers" not in md
    assert "under CUDA graph replay" in md and "The op goals again from the GPU times" in md
    assert "GPU time under CUDA graph replay:" in report.summary_table(results)
    assert (tmp_path / "speedup.png").stat().st_size > 10_000


def test_merge_prefers_measured_records(tmp_path):
    import json

    from benchmarks import report

    case = C.window_case("swin_t", 224, 3, False, "fwd", 1)
    env = dict(device="CPU: test", device_type="cpu", torch="x", triton="x", python="x", commit="c", date="d")

    def run(recs):
        return dict(environment=env, measured={}, peak_bandwidth=dict(gbps=10.0), records=recs)

    ref = dict(R.new_record(case, "reference", "fp32"), time_ms=2.0, flops=1)
    skipped = dict(R.new_record(case, "compile", "fp32"), skipped_reason="compile time budget exhausted")
    measured = dict(R.new_record(case, "compile", "fp32"), time_ms=0.5, flops=1)
    for name, recs in (("a.json", [ref, skipped]), ("b.json", [measured, dict(skipped)])):
        (tmp_path / name).write_text(json.dumps(run(recs)))
    report.main(["--merge", str(tmp_path / "m"), str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    by_provider = {r["provider"]: r for r in merged["records"]}
    assert len(merged["records"]) == 2
    assert by_provider["compile"]["time_ms"] == 0.5 and by_provider["compile"]["speedup"] == pytest.approx(4.0)


def test_triton_compile_provider_runs_model_cases_only():
    """triton-compile is torch.compile of the fused model: op cases are skipped with the
    reason, model cases on a CPU too (whole-model compilation takes minutes there)."""
    op = C.window_case("swin_t", 224, 3, False, "fwd", 1)
    with pytest.raises(P.Skip, match="compiles whole models"):
        P.prepare(op, "triton-compile", "cpu", "fp32")
    model = next(c for c in C.quick_cases(1) if c.kind == "model")
    with pytest.raises(P.Skip, match="minutes on a CPU"):
        P.prepare(model, "triton-compile", "cpu", "fp32")


def test_cuda_graph_steps_only_on_a_gpu():
    """--cuda-graphs parses and selects the model cases only (training steps and forwards);
    off a GPU a model case asking for it is skipped with the reason (the graphed step and
    forward themselves are tested on a GPU in tests/train)."""
    args = R.parse_args(["--cuda-graphs", "--device", "cpu"])
    assert args.cuda_graphs and not R.parse_args([]).cuda_graphs
    selected = R.select_cases(args)
    assert selected and {(c.kind, c.mode) for c in selected} == {("model", "fwd_bwd"),
                                                                ("model", "fwd")}
    assert len(selected) == sum(c.kind == "model" for c in C.full_cases(16, None))
    for mode in ("fwd", "fwd_bwd"):
        case = next(c for c in C.full_cases(2, None) if c.kind == "model" and c.mode == mode)
        with pytest.raises(P.Skip, match="on a GPU"):
            P.prepare(case, "reference", "cpu", "fp32", cuda_graphs=True)


def test_modes_option_keeps_the_named_modes():
    """--modes fwd_bwd keeps the training steps (and the op cases' fwd_bwd) only; a mode
    that does not exist is refused."""
    args = R.parse_args(["--modes", "fwd_bwd", "--cases", "model/semask_swin_tiny", "--device", "cpu"])
    selected = R.select_cases(args)
    assert [c.mode for c in selected] == ["fwd_bwd"]
    both = R.select_cases(R.parse_args(["--cases", "model/semask_swin_tiny", "--device", "cpu"]))
    assert sorted(c.mode for c in both) == ["fwd", "fwd_bwd"]
    with pytest.raises(SystemExit):
        R.parse_args(["--modes", "bwd"])
