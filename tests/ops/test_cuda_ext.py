"""The CUDA extension (csrc/): build, input checks, provider reasons, kernel numerics.

Without a GPU (CI):
* the extension is compiled with nvcc for sm_90 through the same just-in-time path as the
  cuda backend (module-scoped fixture; the build is cached across runs), and every
  launcher must reject CPU tensors with an error naming the argument. Without nvcc these
  tests skip with the reason, or fail when ``SEMASK_REQUIRE_CUDA_BUILD=1`` (set it where
  nvcc is expected, as in CI);
* the kernels' device code runs on the CPU in csrc/cpu_emulator (one fiber per CUDA
  thread, AddressSanitizer and UBSan on) against the float64 reference: indexing,
  barriers, shuffles and bounds for windows 7 and 12, shifts, batches, heads, K and
  global attention.
With a GPU (marker ``gpu``): forward and gradients against the fp32 reference with the
accuracy rule max|cuda - ref32| <= 2 max|torch same dtype - ref32| + atol over the shape
sweep of the Triton tests, fp32/fp16/bf16.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import semask
from semask.ops import build_cuda
from semask.ops.cuda_provider import PROVIDER
from semask.ops.reference import (pad_to_multiple, semantic_attention_lse_reference,
                                  semantic_attention_reference, window_attention_lse_reference,
                                  window_attention_reference)

pytestmark = pytest.mark.usefixtures("no_tf32")  # the fp32 reference without TF32 (conftest)

CSRC = Path(__file__).resolve().parents[2] / "csrc"
REQUIRE_BUILD = os.environ.get("SEMASK_REQUIRE_CUDA_BUILD") == "1"


def _build_module():
    spec = importlib.util.spec_from_file_location("semask_build_under_test", CSRC / "semask_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _skip_or_fail(reason):
    if REQUIRE_BUILD:
        pytest.fail(f"SEMASK_REQUIRE_CUDA_BUILD=1 but {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------- build definition


def test_gencode_flags_follow_the_arch_list(monkeypatch):
    build = _build_module()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert build.arch_list() == ["8.0", "9.0+PTX"]
    assert build.gencode_flags(build.arch_list()) == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a 8.6+PTX")
    assert build.gencode_flags(build.arch_list()) == [
        "-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_86,code=compute_86"]
    assert "--use_fast_math" not in build.nvcc_flags()
    with pytest.raises(ValueError, match="Hopper"):
        build.gencode_flags(["Hopper"])


def test_jit_build_without_sources_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMASK_CSRC", str(tmp_path))
    with pytest.raises(build_cuda.ExtensionUnavailable, match="python -m semask.ops.build_cuda"):
        build_cuda.jit_build(["9.0"])


def test_first_use_build_warns_and_a_failed_build_is_not_retried(monkeypatch, tmp_path):
    calls = []

    def failing_build(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("Error building extension: nvcc fatal")

    monkeypatch.setattr(build_cuda, "_loaded", None)
    monkeypatch.setattr(build_cuda, "_failure", None)
    monkeypatch.setattr(build_cuda, "AOT_MODULE", "semask._no_such_module")
    monkeypatch.setenv("SEMASK_CUDA_BUILD_DIR", str(tmp_path))  # empty: nothing cached
    monkeypatch.setattr(build_cuda, "jit_build", failing_build)
    with pytest.warns(UserWarning, match="building the CUDA extension"):
        with pytest.raises(build_cuda.ExtensionUnavailable, match="nvcc fatal.*semask.ops.build_cuda"):
            build_cuda.load_extension()
    with pytest.raises(build_cuda.ExtensionUnavailable, match="nvcc fatal"):
        build_cuda.load_extension()
    assert len(calls) == 1


@pytest.mark.parametrize("torch_waits_for_the_file", [True, False])
def test_a_lock_file_torch_would_wait_for_is_named(monkeypatch, tmp_path, torch_waits_for_the_file):
    """torch before 2.14 waits while build_dir/lock exists (FileBaton); 2.14 holds an OS lock."""
    from torch.utils import cpp_extension
    if torch_waits_for_the_file:
        monkeypatch.setattr(cpp_extension, "FileBaton", object, raising=False)
    else:
        monkeypatch.delattr(cpp_extension, "FileBaton", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_cuda._warn_if_locked(str(tmp_path))        # no lock file
        (tmp_path / "lock").touch()
        build_cuda._warn_if_locked(str(tmp_path))
    assert [str(w.message) for w in caught] == (
        [f"semask: {tmp_path / 'lock'} exists: another process is building the CUDA extension, or an "
         "interrupted build left it behind; torch waits until the file is gone, so delete it if no build is "
         "running"] if torch_waits_for_the_file else [])


def test_toolkit_must_match_torchs_cuda_major(monkeypatch, tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "nvcc 13.0" in build_cuda.toolkit_mismatch(str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert build_cuda.toolkit_mismatch(str(tmp_path)) is None
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only" in build_cuda.toolkit_mismatch(str(tmp_path))


def test_build_cuda_help_runs_without_compiling():
    result = subprocess.run([sys.executable, "-m", "semask.ops.build_cuda", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "TORCH_CUDA_ARCH_LIST" in result.stdout


# ---------------------------------------------------------------- provider reasons


def _fake(shape, device="cuda", dtype=torch.float16):
    return SimpleNamespace(shape=shape, device=torch.device(device), dtype=dtype)


def test_reasons_on_cpu_tensors_say_why_without_building(monkeypatch):
    def no_build():
        raise AssertionError("reasons() must not build for inputs it cannot run")

    monkeypatch.setattr("semask.ops.cuda_provider.load_extension", no_build)
    qkv, table = torch.randn(1, 7, 7, 96), torch.randn(169, 3)
    why = PROVIDER.reasons("window_attention", [qkv, table], dict(num_heads=3, window=7, shift=3))
    assert why == ["inputs are on cpu; the cuda backend needs CUDA tensors"]
    q, v = torch.randn(1, 7, 7, 19, dtype=torch.float64), torch.randn(1, 7, 7, 8, dtype=torch.float64)
    why = PROVIDER.reasons("semantic_attention", [q, q, v], dict(window=0))
    assert any("CUDA tensors" in w for w in why) and any("float64" in w for w in why)


def test_reasons_name_unsupported_shapes(monkeypatch):
    monkeypatch.setattr("semask.ops.cuda_provider.load_extension", lambda: None)
    why = PROVIDER.reasons("window_attention", [_fake((1, 13, 13, 3 * 128)), _fake((625, 1))],
                           dict(num_heads=1, window=13, shift=0))
    assert any("window 13" in w for w in why) and any("head dim 128" in w for w in why)
    why = PROVIDER.reasons("semantic_attention", [_fake((1, 8, 8, 300))] * 2 + [_fake((1, 8, 8, 4))],
                           dict(window=0))
    assert why == ["K=300 classes > 256 is not supported"]
    monkeypatch.setattr("semask.ops.cuda_provider.load_extension",
                        lambda: SimpleNamespace(window_attention_shared_memory=lambda w, d: 0))
    _fake_gpu(monkeypatch, (9, 0), 232448)
    assert PROVIDER.reasons("window_attention", [_fake((1, 7, 7, 96)), _fake((169, 3))],
                            dict(num_heads=3, window=7, shift=0)) == []


def _fake_gpu(monkeypatch, capability, optin, name="fake GPU"):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(name=name, shared_memory_per_block_optin=optin))


def test_reasons_name_a_gpu_without_enough_shared_memory(monkeypatch):
    """The extension's own byte counts against the device's opt-in limit: window 12 with
    head dim 64 (169 KiB in the backward) is refused on an sm_86 (99 KiB), accepted on an
    sm_90 (227 KiB); reported by reasons() instead of failing at launch."""
    ext = SimpleNamespace(window_attention_shared_memory=lambda w, d: 173000 if d == 64 else 99272,
                          semantic_attention_shared_memory=lambda k: 73472)
    monkeypatch.setattr("semask.ops.cuda_provider.load_extension", lambda: ext)
    args = ([_fake((1, 12, 12, 3 * 128)), _fake((529, 2))], dict(num_heads=2, window=12, shift=0))
    _fake_gpu(monkeypatch, (8, 6), 101376, "RTX 3090")
    assert PROVIDER.reasons("window_attention", *args) == [
        "needs 173000 bytes of shared memory per block, RTX 3090 allows 101376"]
    assert PROVIDER.reasons("semantic_attention", [_fake((1, 8, 8, 150))] * 2 + [_fake((1, 8, 8, 4))],
                            dict(window=0)) == []
    _fake_gpu(monkeypatch, (9, 0), 232448)
    assert PROVIDER.reasons("window_attention", *args) == []


def test_reasons_name_a_gpu_the_build_has_no_code_for(monkeypatch):
    build = _build_module()
    ext = SimpleNamespace(window_attention_shared_memory=lambda w, d: 0,
                          semask_archs=tuple(map(build.parse_arch, ["8.0", "9.0+PTX"])))
    monkeypatch.setattr("semask.ops.cuda_provider.load_extension", lambda: ext)
    args = ([_fake((1, 7, 7, 96)), _fake((169, 3))], dict(num_heads=3, window=7, shift=0))
    for capability, runs in (((8, 0), True), ((8, 6), True), ((9, 0), True), ((12, 0), True),
                             ((7, 5), False)):
        _fake_gpu(monkeypatch, capability, 232448)
        why = PROVIDER.reasons("window_attention", *args)
        assert (why == []) == runs, (capability, why)
    ext.semask_archs = (build.parse_arch("9.0a"),)   # arch-specific code runs on 9.0 only
    _fake_gpu(monkeypatch, (10, 0), 232448)
    assert "not for this GPU's sm_100" in PROVIDER.reasons("window_attention", *args)[0]


def test_reasons_when_the_extension_cannot_build(monkeypatch):
    def unavailable():
        raise build_cuda.ExtensionUnavailable(build_cuda.unavailable_message("nvcc is missing"))

    monkeypatch.setattr("semask.ops.cuda_provider.load_extension", unavailable)
    why = PROVIDER.reasons("semantic_attention", [_fake((1, 7, 7, 19))] * 2 + [_fake((1, 7, 7, 8))],
                           dict(window=7))
    assert len(why) == 1 and "nvcc is missing" in why[0]
    assert "`python -m semask.ops.build_cuda`" in why[0]
    assert "SEMASK_BUILD_CUDA=1 pip install --no-build-isolation -e ." in why[0]


# ---------------------------------------------------------------- nvcc build (CPU CI)


@pytest.fixture(scope="module")
def extension():
    """The extension compiled for sm_90 by the JIT path of the cuda backend (cached).

    A missing or mismatched toolkit skips (fails under SEMASK_REQUIRE_CUDA_BUILD=1);
    a compiler error fails.
    """
    saved = os.environ.get("CUDA_HOME")
    try:
        return build_cuda.jit_build(["9.0"])
    except build_cuda.ExtensionUnavailable as exc:
        _skip_or_fail(str(exc))
    finally:
        if saved is None:
            os.environ.pop("CUDA_HOME", None)
        else:
            os.environ["CUDA_HOME"] = saved


def _cpu_calls():
    qkv, table = torch.randn(1, 7, 7, 96), torch.randn(169, 3)
    out, lse = torch.randn(1, 7, 7, 32), torch.randn(1, 1, 3, 49)
    q, v = torch.randn(1, 7, 7, 19), torch.randn(1, 7, 7, 8)
    slse = torch.randn(1, 1, 49)
    return [
        ("window_attention_fwd", (qkv, table, 3, 7, 3, 0.2, 7, 7), "qkv"),
        ("window_attention_bwd", (out, qkv, table, out, lse, 3, 7, 3, 0.2), "dout"),
        ("semantic_attention_fwd", (q, q, v, 7), "q"),
        ("semantic_attention_bwd", (v, q, q, v, v, slse, 7), "dout"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name, args, argument", _cpu_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_compiled_launchers_reject_cpu_tensors(extension, monkeypatch, name, args, argument):
    with pytest.raises(RuntimeError, match=f"{name}: {argument} must be a CUDA tensor, got one on cpu"):
        getattr(extension, name)(*args)
    monkeypatch.setattr(build_cuda, "_loaded", extension)  # the provider uses this build
    with pytest.raises(RuntimeError, match=f"{argument} must be a CUDA tensor"):
        getattr(PROVIDER, name)(*args)


@pytest.mark.slow
def test_compiled_module_exposes_the_four_launchers(extension):
    names = {"window_attention_fwd", "window_attention_bwd", "semantic_attention_fwd",
             "semantic_attention_bwd"}
    assert names <= set(dir(extension))
    assert "qkv" in extension.window_attention_fwd.__doc__


@pytest.mark.slow
def test_compiled_module_reports_its_shared_memory(extension):
    """The byte counts reasons() compares with the device: window 12 needs 97 KiB (head dim
    32) and 169 KiB (64) in the backward, as csrc/window_attention.cu's header states; the
    semantic kernels' largest tile set grows with K."""
    assert round(extension.window_attention_shared_memory(12, 32) / 1024) == 97
    assert round(extension.window_attention_shared_memory(12, 64) / 1024) == 169
    assert extension.window_attention_shared_memory(7, 32) < extension.window_attention_shared_memory(12, 32)
    sizes = [extension.semantic_attention_shared_memory(k) for k in (19, 150, 256)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] <= 101376  # K <= 256 fits an sm_86


# ---------------------------------------------------------------- device code on the CPU


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """csrc/cpu_emulator/emulate.cpp compiled with g++ and AddressSanitizer/UBSan."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is needed to run the kernels' device code on the CPU")
    exe = tmp_path_factory.mktemp("emu") / "semask_emu"
    cmd = [cxx, "-std=c++20", "-O1", "-g", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-DSEMASK_CPU_EMULATION", f"-I{CSRC}",
           str(CSRC / "cpu_emulator" / "emulate.cpp"), "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


def _emulate(exe, tmp_path, args, inputs, outputs):
    for name, t in inputs.items():
        t.detach().float().contiguous().numpy().tofile(tmp_path / name)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}  # LSan needs ptrace; not checked here
    result = subprocess.run([str(exe), args[0], str(tmp_path), *map(str, args[1:])],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return {name: torch.from_numpy(np.fromfile(tmp_path / name, dtype=np.float32)).view(shape)
            for name, shape in outputs.items()}


def _assert_fp32_rule(got, ref64, torch32):
    """max|kernel - ref64| <= 2 max|torch fp32 - ref64| + 2e-6 max|ref64| (per output)."""
    for name, ref in ref64.items():
        err = (got[name].double() - ref).abs().max().item()
        bound = 2 * (torch32[name].double() - ref).abs().max().item() + 2e-6 * max(1.0, ref.abs().max().item())
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"


def _window_grads(qkv, table, dout, heads, window, shift, scale):
    """Reference out (cropped to dout's map), lse and gradients."""
    qkv, table = qkv.detach().requires_grad_(), table.detach().requires_grad_()
    H, W = dout.shape[1:3]
    out = window_attention_reference(qkv, table, heads, window, shift, scale)[:, :H, :W]
    dqkv, dtable = torch.autograd.grad(out, (qkv, table), dout.to(out.dtype))
    lse = window_attention_lse_reference(qkv.detach(), table.detach(), heads, window, shift, scale)
    return dict(out=out, lse=lse, dqkv=dqkv, dtable=dtable)


@pytest.mark.slow
@pytest.mark.parametrize("B, Hp, Wp, H, W, heads, D, window, shift", [
    (1, 7, 14, 7, 14, 2, 8, 7, 0), (2, 14, 14, 10, 13, 3, 32, 7, 3),  # out cropped
    (1, 12, 24, 12, 24, 2, 16, 12, 6), (1, 24, 12, 20, 9, 1, 64, 12, 5)])
def test_window_kernels_on_cpu_emulator(emulator, tmp_path, B, Hp, Wp, H, W, heads, D, window,
                                        shift):
    C, scale = heads * D, D ** -0.5
    qkv = torch.randn(B, Hp, Wp, 3 * C, dtype=torch.float64)
    table = torch.randn((2 * window - 1) ** 2, heads, dtype=torch.float64)
    dout = torch.randn(B, H, W, C, dtype=torch.float64)
    ref = _window_grads(qkv, table, dout, heads, window, shift, scale)
    ref["lse"] = ref["lse"].double()
    ref32 = _window_grads(qkv.float(), table.float(), dout, heads, window, shift, scale)
    got = _emulate(emulator, tmp_path, ["window", B, Hp, Wp, H, W, C, heads, window, shift, scale],
                   dict(qkv=qkv, table=table, dout=dout), {n: t.shape for n, t in ref.items()})
    _assert_fp32_rule(got, ref, ref32)


def _semantic_grads(q, k, v, dout, window):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = semantic_attention_reference(q, k, v, window)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout.to(out.dtype))
    lse = semantic_attention_lse_reference(q.detach(), k.detach(), window)
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv)


@pytest.mark.slow
@pytest.mark.parametrize("B, Hp, Wp, K, C, window", [
    (1, 14, 7, 19, 40, 7),       # two windows of 49 (a partial key/query tile)
    (1, 12, 12, 150, 20, 12),    # K = 150 (ADE20K), one window of 144
    (1, 12, 12, 256, 20, 12),    # K = 256: logits ~ +-60 (one fma chain per dot failed here)
    (2, 6, 11, 19, 136, 0)])     # global, 66 tokens, two channel chunks, batch 2
def test_semantic_kernels_on_cpu_emulator(emulator, tmp_path, B, Hp, Wp, K, C, window):
    q, k = torch.randn(2, B, Hp, Wp, K, dtype=torch.float64)
    v, dout = torch.randn(2, B, Hp, Wp, C, dtype=torch.float64)
    ref = _semantic_grads(q, k, v, dout, window)
    ref32 = _semantic_grads(q.float(), k.float(), v.float(), dout, window)
    got = _emulate(emulator, tmp_path, ["semantic", B, Hp, Wp, K, C, window],
                   dict(q=q, k=k, v=v, dout=dout), {n: t.shape for n, t in ref.items()})
    _assert_fp32_rule(got, ref, ref32)


# ---------------------------------------------------------------- GPU




DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 5e-5, torch.float16: 1e-3, torch.bfloat16: 4e-3}  # x max(1, max|ref32|)


def _check_rule(name, got, ref32, same_dtype, dtype):
    err = (got.float() - ref32.float()).abs().max().item()
    torch_err = (same_dtype.float() - ref32.float()).abs().max().item()
    bound = 2 * torch_err + ATOL[dtype] * max(1.0, ref32.abs().max().item())
    assert err <= bound, f"{name}: |cuda - ref32| = {err:.3g} > {bound:.3g} (torch {dtype}: {torch_err:.3g})"


def _window_case(B, H, W, heads, D, window, shift, dtype, table_dtype=None):
    """qkv of a zero-padded normed map (padded tokens carry the qkv bias), table, dout of the
    unpadded map [B, H, W, C]."""
    C = heads * D
    linear = torch.nn.Linear(C, 3 * C, device="cuda")
    with torch.no_grad():
        qkv = linear(pad_to_multiple(torch.randn(B, H, W, C, device="cuda"), window)).to(dtype)
    table = (torch.randn((2 * window - 1) ** 2, heads, device="cuda")).to(table_dtype or dtype)
    dout = torch.randn(B, H, W, C, device="cuda").to(dtype)
    return qkv, table, dout


def _window_run(fn, qkv, table, dout):
    qkv, table = qkv.detach().requires_grad_(), table.detach().requires_grad_()
    out = fn(qkv, table)
    return [out, *torch.autograd.grad(out, (qkv, table), dout.to(out.dtype))]


WINDOW_SWEEP = [  # B, H, W, heads, D, window, shift
    (1, 7, 7, 1, 32, 7, 0), (2, 14, 14, 3, 32, 7, 3), (1, 10, 13, 2, 32, 7, 3),
    (2, 28, 21, 6, 32, 7, 0), (1, 12, 12, 4, 32, 12, 0), (2, 30, 20, 4, 32, 12, 6),
    (1, 13, 25, 8, 32, 12, 6), (1, 7, 7, 48, 32, 7, 0), (1, 12, 12, 48, 32, 12, 6),
    (2, 9, 16, 2, 16, 7, 3), (1, 20, 15, 2, 64, 12, 6)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, H, W, heads, D, window, shift", WINDOW_SWEEP)
def test_window_attention_cuda_matches_reference(dtype, B, H, W, heads, D, window, shift):
    qkv, table, dout = _window_case(B, H, W, heads, D, window, shift, dtype)
    scale = D ** -0.5
    cuda = _window_run(lambda x, t: semask.ops.window_attention(
        x, t, heads, window, shift, scale, backend="cuda", size=(H, W)), qkv, table, dout)
    ref32 = _window_run(lambda x, t: window_attention_reference(
        x, t, heads, window, shift, scale)[:, :H, :W], qkv.float(), table.float(), dout)
    same = _window_run(lambda x, t: window_attention_reference(
        x, t, heads, window, shift, scale)[:, :H, :W], qkv, table, dout)
    for name, got, ref, ours in zip(("out", "dqkv", "dtable"), cuda, ref32, same):
        assert got.dtype == ours.dtype
        _check_rule(name, got, ref, ours, dtype)
    _, lse = PROVIDER.window_attention_fwd(qkv, table, heads, window, shift, scale, H, W)
    ref_lse = window_attention_lse_reference(qkv.float(), table.float(), heads, window, shift, scale)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_window_attention_cuda_fp32_table_with_half_qkv(dtype):
    heads, window, shift, D = 3, 7, 3, 32
    qkv, table, dout = _window_case(2, 10, 13, heads, D, window, shift, dtype, torch.float32)
    scale = D ** -0.5
    out, dqkv, dtable = _window_run(lambda x, t: semask.ops.window_attention(
        x, t, heads, window, shift, scale, backend="cuda", size=(10, 13)), qkv, table, dout)
    assert (out.dtype, dqkv.dtype, dtable.dtype) == (dtype, dtype, torch.float32)
    ref32 = _window_run(lambda x, t: window_attention_reference(
        x, t, heads, window, shift, scale)[:, :10, :13], qkv.float(), table, dout)
    same = _window_run(lambda x, t: window_attention_reference(
        x, t, heads, window, shift, scale)[:, :10, :13], qkv, table.to(dtype), dout)
    for name, got, ref, ours in zip(("out", "dqkv", "dtable"), (out, dqkv, dtable), ref32, same):
        _check_rule(name, got, ref, ours, dtype)


def _semantic_run(fn, q, k, v, dout):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), dout.to(out.dtype))]


SEMANTIC_SWEEP = [  # B, H, W, K, C, window
    (1, 7, 7, 19, 96, 7), (2, 10, 13, 150, 96, 7), (1, 24, 12, 150, 128, 12),
    (2, 13, 9, 19, 200, 12), (1, 13, 9, 150, 96, 0), (2, 16, 16, 19, 192, 0),
    (1, 32, 32, 150, 384, 0), (1, 64, 64, 150, 96, 0)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, H, W, K, C, window", SEMANTIC_SWEEP)
def test_semantic_attention_cuda_matches_reference(dtype, B, H, W, K, C, window):
    x = torch.randn(B, H, W, C, device="cuda")
    xp = pad_to_multiple(x, window) if window else x
    mlp_q, mlp_k = torch.nn.Linear(C, K, device="cuda"), torch.nn.Linear(C, K, device="cuda")
    with torch.no_grad():
        q, k = mlp_q(xp).to(dtype), mlp_k(xp).to(dtype)
    v = torch.randn_like(xp).to(dtype)
    dout = torch.randn_like(xp).to(dtype)
    cuda = _semantic_run(lambda *a: semask.ops.semantic_attention(*a, window, backend="cuda"),
                         q, k, v, dout)
    ref32 = _semantic_run(lambda *a: semantic_attention_reference(*a, window),
                          q.float(), k.float(), v.float(), dout)
    same = _semantic_run(lambda *a: semantic_attention_reference(*a, window), q, k, v, dout)
    for name, got, ref, ours in zip(("out", "dq", "dk", "dv"), cuda, ref32, same):
        assert got.dtype == dtype
        _check_rule(name, got, ref, ours, dtype)
    _, lse = PROVIDER.semantic_attention_fwd(q, k, v, window)
    ref_lse = semantic_attention_lse_reference(q.float(), k.float(), window)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_launcher_checks_name_the_argument_on_gpu():
    qkv = torch.randn(1, 7, 7, 3 * 96, device="cuda")
    with pytest.raises(RuntimeError, match=r"table must have shape \[169, 3\], got \[100, 3\]"):
        PROVIDER.window_attention_fwd(qkv, torch.randn(100, 3, device="cuda"), 3, 7, 0, 0.2, 7, 7)
    with pytest.raises(RuntimeError, match=r"num_heads=5 must divide C=96 \(qkv \[1, 7, 7, 288\]\)"):
        PROVIDER.window_attention_fwd(qkv, torch.randn(169, 5, device="cuda"), 5, 7, 0, 0.2, 7, 7)
    with pytest.raises(RuntimeError, match="table must be a CUDA tensor, got one on cpu"):
        PROVIDER.window_attention_fwd(qkv, torch.randn(169, 3), 3, 7, 0, 0.2, 7, 7)
    q = torch.randn(1, 7, 7, 19, device="cuda")
    with pytest.raises(RuntimeError, match="v must be contiguous"):
        PROVIDER.semantic_attention_fwd(q, q, torch.randn(1, 7, 7, 16, device="cuda")[..., ::2], 7)
    with pytest.raises(RuntimeError, match="k must be"):
        PROVIDER.semantic_attention_fwd(q, q.half(), torch.randn(1, 7, 7, 8, device="cuda"), 7)
