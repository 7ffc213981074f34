"""benchmarks/profile_step.py: kernel grouping and a CPU run on the micro model."""
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from benchmarks import profile_step as P  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402


def test_group_of_known_kernel_names():
    assert P.group_of("_window_bwd_dq_kernel") == "window attention"
    assert P.group_of("_semantic_rows_fwd_kernel") == "semantic attention"
    assert P.group_of("_upsample_ce_kernel").startswith("softmax, upsample")
    assert P.group_of("_upsample2x_bwd_kernel").startswith("x2 upsampling")
    assert P.group_of("aten::upsample_bilinear2d_backward").startswith("softmax, upsample")
    assert P.group_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert P.group_of("aten::mm") == "matmul"
    assert P.group_of("aten::cudnn_convolution") == "convolution"
    assert P.group_of("vectorized_layer_norm_kernel") == "normalisation"
    assert P.group_of("multi_tensor_apply_kernel") == "optimizer"
    assert P.group_of("aten::copy_") == "copies and layout"
    assert P.group_of("vectorized_elementwise_kernel<GeluCUDAKernelImpl>") == "other elementwise"


def test_cpu_profile_of_the_micro_model(tmp_path):
    text = P.main(["--device", "cpu", "--model", "semask_swin_micro_fpn", "--img", "64",
                   "--batch", "2", "--num-classes", "5", "--fused", "reference",
                   "--warmup", "1", "--timed", "2", "--rows", "5", "--out", str(tmp_path)])
    assert (tmp_path / "profile.md").read_text() == text
    section = text.split("## reference: ")[1]
    total = float(section.split(" ms")[0])
    groups = [line.split(" | ") for line in section.splitlines()
              if line.startswith("| ") and line.endswith("% |")]
    shares = {g[0][2:]: float(g[1]) for g in groups}
    assert abs(sum(shares.values()) - total) < 0.01 * total + 0.05
    assert shares["convolution"] > 0 and shares["matmul"] > 0
    assert text.count("| `") == 5
    wall = float(section.split("Step wall time ")[1].split(" ms")[0])
    host = float(section.split("host time ")[1].split(" ms")[0])
    assert 0 < host <= wall  # on the CPU the step returns when its work is done


def test_step_times_wall_host_and_back_to_back():
    calls = []
    wall, host, chained = P.step_times(lambda: calls.append(time.sleep(0.01)), 3, cuda=False)
    assert len(calls) == 6 and 9 < host <= wall < 200 and 9 < chained < 200


def _event(key, device_type, own_device_us=0.0, own_cpu_us=0.0, count=1, **extra):
    return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=own_device_us,
                           self_cpu_time_total=own_cpu_us, count=count, **extra)


def test_kernel_rows_leave_out_user_annotations_and_cpu_ops_device_time():
    """A record_function range (the optimizer's) comes back as a device event spanning its
    kernels: counting it would count those kernels twice (6 ms of a 47 ms step on the H200
    profile of 64a1d89). A CPU op's own device time repeats its kernels' too."""
    events = [
        _event("_window_fwd_kernel", DeviceType.CUDA, 500.0, count=12),
        _event("multi_tensor_apply_kernel", DeviceType.CUDA, 1100.0, count=8),
        _event("Optimizer.step#AdamW.step", DeviceType.CUDA, 6000.0, is_user_annotation=True),
        _event("aten::mm", DeviceType.CPU, 9000.0, own_cpu_us=3000.0, count=139),
    ]
    rows, host = P.kernel_rows(events, cuda=True)
    assert rows == [("multi_tensor_apply_kernel", 1.1, 8), ("_window_fwd_kernel", 0.5, 12)]
    assert host == [("aten::mm", 3.0, 139)]
    rows, host = P.kernel_rows(events, cuda=False)  # on the CPU: ops by own CPU time
    assert rows == [("aten::mm", 3.0, 139)] and host == []


def test_report_host_section():
    """The GPU report's host part: own CPU time inside ops summed, top ops listed."""
    rows = [("_window_fwd_kernel", 2.0, 12), ("sm90_xmma_gemm", 6.0, 30)]
    host = dict(rows=[("aten::linear", 9.0, 67), ("cudaLaunchKernel", 4.5, 900)], step_ms=40.0)
    text = P.report("triton", rows, 8.0, 5, "GPU kernel", (20.0, 19.0, 23.5), host)
    assert "40.00 ms until it returned" in text and "13.50 ms of it inside the ops" in text
    assert "| `aten::linear` | 9.000 | 67 |" in text and "| `cudaLaunchKernel` | 4.500 | 900 |" in text
    assert "40% of the wall time" in text  # 8 ms of kernels in a 20 ms step
    assert "23.50 ms per step back to back" in text


def test_compile_suffix_runs_the_model_through_torch_compile(tmp_path, monkeypatch):
    """--fused X-compile profiles the X model called through torch.compile (stubbed here:
    inductor on a CPU takes minutes), the reference's forward and loss as one compiled
    function; unknown names are refused."""
    import pytest

    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return model

    monkeypatch.setattr(P.torch, "compile", fake_compile)
    text = P.main(["--device", "cpu", "--model", "semask_swin_micro_fpn", "--img", "64",
                   "--batch", "1", "--num-classes", "5", "--fused", "reference-compile",
                   "--warmup", "1", "--timed", "1", "--rows", "3", "--out", str(tmp_path)])
    assert len(compiled) == 1 and "## reference-compile: " in text
    assert not isinstance(compiled[0], P.torch.nn.Module)  # images, target -> loss
    with pytest.raises(SystemExit):
        P.parse_args(["--fused", "bogus-compile"])
