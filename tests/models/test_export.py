"""ONNX export: the written graph, run by onnxruntime, against the PyTorch model in the test.

export_onnx checks its own graph too; these tests compare independently of that check, and
test the check by giving it a graph that computes something else.
"""
import re
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from semask import SeMaskSwin
from semask.data import IMAGENET_MEAN, IMAGENET_STD
from semask.models import export as export_module
from semask.models.export import OnnxExportError, export_onnx

SIZE = (64, 96)
pytestmark = pytest.mark.skipif(torch.torch_version.TorchVersion(torch.__version__) < export_module.MIN_TORCH,
                                reason="torch 2.6's ONNX exporter fails: export_onnx refuses it")


def micro(**kwargs):
    """A micro model whose weights and BatchNorm statistics are all away from their init
    (eval mode reads the statistics)."""
    model = SeMaskSwin("micro", num_classes=5, head_channels=8, **kwargs)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.copy_(0.5 + torch.rand_like(module.running_var))
    return model


def run(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": images.numpy()})
    return out


def test_logits_graph_equals_the_model_at_other_batch_sizes(tmp_path):
    model = micro().eval()
    report = export_onnx(model, tmp_path / "m.onnx", SIZE)
    assert report.checked_batches == (1, 3) and report.input_shape == ("batch", 3, *SIZE)
    for batch in (1, 2, 5):
        images = torch.randn(batch, 3, *SIZE)
        with torch.no_grad():
            want = model(images).logits
        got = torch.from_numpy(run(tmp_path / "m.onnx", images))
        assert got.shape == (batch, 5, *SIZE)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output]) == (["images"], ["logits"])
    props = {p.key: p.value for p in proto.metadata_props}
    assert [float(v) for v in props["semask.mean"].split(",")] == list(IMAGENET_MEAN)
    assert [float(v) for v in props["semask.std"].split(",")] == list(IMAGENET_STD)
    assert (props["semask.variant"], props["semask.num_classes"]) == ("micro", "5")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]   # no temporary file left


def test_labels_graph_of_a_fixed_batch_refuses_another(tmp_path):
    model = micro().eval()
    export_onnx(model, tmp_path / "m.onnx", SIZE, output="labels", batch=2)
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        logits = model(images).logits
    got = torch.from_numpy(run(tmp_path / "m.onnx", images))
    assert got.dtype == torch.int64 and got.shape == (2, *SIZE)
    top2 = logits.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-4
    assert clear.float().mean() > 0.9
    assert torch.equal(got[clear], logits.argmax(1)[clear])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(tmp_path / "m.onnx", torch.randn(1, 3, *SIZE))
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # a graph serves one image size
        run(tmp_path / "m.onnx", torch.randn(2, 3, 64, 64))


def test_a_fused_model_exports_its_reference_path_and_stays_as_it_was(tmp_path):
    """fused="triton" asks for the Triton kernels (on the CPU: their interpreter); the graph
    holds the reference ops with the same weights, and the model keeps its backends."""
    model = micro(fused="triton")
    model.train()
    backends = {name: m.backend for name, m in model.named_modules() if hasattr(m, "backend")}
    assert "triton" in backends.values()
    export_onnx(model, tmp_path / "m.onnx", SIZE, batch=1)
    assert model.training and model.backend_request == "triton"
    assert backends == {name: m.backend for name, m in model.named_modules() if hasattr(m, "backend")}
    reference = SeMaskSwin("micro", num_classes=5, head_channels=8).eval()
    reference.load_state_dict(model.state_dict())
    images = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        want = reference(images).logits
    torch.testing.assert_close(torch.from_numpy(run(tmp_path / "m.onnx", images)), want, rtol=1e-4, atol=1e-5)


def test_a_bfloat16_model_exports_float32_and_stays_as_it_was(tmp_path):
    model = micro().to(torch.bfloat16)
    export_onnx(model, tmp_path / "m.onnx", SIZE, batch=1)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = SeMaskSwin("micro", num_classes=5, head_channels=8).eval()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    images = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        want = reference(images).logits
    torch.testing.assert_close(torch.from_numpy(run(tmp_path / "m.onnx", images)), want, rtol=1e-4, atol=1e-5)


def test_a_graph_that_computes_something_else_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    class Shifted(export_module._Graph):  # what the file holds: logits + 2e-3 (allowed: ~3e-4)
        def forward(self, images):
            return super().forward(images) + 2e-3

    monkeypatch.setattr(export_module, "_Graph", Shifted)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"an earlier export")
    with pytest.raises(OnnxExportError, match="does not compute what the model does.*batch 1: max"):
        export_onnx(micro(), target, SIZE)
    assert target.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    # without the check the same graph is written
    assert export_onnx(micro(), target, SIZE, check=False).checked_batches == ()
    assert target.read_bytes() != b"an earlier export"


@pytest.mark.parametrize("output, change, match", [
    ("logits", lambda y: y[:1].expand_as(y), "batch 3: max"),  # every image gets the first one's logits
    ("labels", lambda y: (y + 1) % 5, r"batch 1: \d+ of \d+ labels differ"),
])
def test_other_logits_at_batch_3_and_other_labels_are_refused(tmp_path, monkeypatch, output, change, match):
    class Changed(export_module._Graph):
        def forward(self, images):
            return change(super().forward(images))

    monkeypatch.setattr(export_module, "_Graph", Changed)
    with pytest.raises(OnnxExportError, match=match):
        export_onnx(micro(), tmp_path / "m.onnx", SIZE, output=output)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("output, change", [("labels", lambda y: y.int()), ("logits", lambda y: y[None])])
def test_a_graph_of_another_dtype_or_shape_is_refused(tmp_path, monkeypatch, output, change):
    class Changed(export_module._Graph):  # the model's values as int32, or [1, B, K, H, W]
        def forward(self, images):
            return change(super().forward(images))

    monkeypatch.setattr(export_module, "_Graph", Changed)
    with pytest.raises(OnnxExportError, match=r"batch 1: torch\.\w+ \[.*\] out, the model's torch\.\w+ \["):
        export_onnx(micro(), tmp_path / "m.onnx", SIZE, output=output)
    assert not list(tmp_path.iterdir())


def test_an_opset_the_exporter_does_not_write_is_refused(tmp_path):
    """torch.onnx converts its opset 18+ graph to the one asked for; where it cannot (17, 99)
    it logs that and returns the graph in its own opset."""
    export_onnx(micro(), tmp_path / "m.onnx", SIZE, opset=18, check=False)
    assert [o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import if o.domain == ""] == [18]
    for opset in (17, 99):  # torch 2.14 writes its own opset, torch 2.8 fails to convert
        with pytest.raises(OnnxExportError, match=f"wrote ONNX opset \\d+, not the {opset} asked for|"
                           "could not export the model"):
            export_onnx(micro(), tmp_path / "m.onnx", SIZE, opset=opset, check=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_a_file_that_cannot_be_written_is_an_os_error(tmp_path, monkeypatch):
    def full(self, destination, *args, **kwargs):
        with open(destination, "wb") as file:
            file.write(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full)
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    with pytest.raises(OSError, match="No space left"):  # not blamed on torch.onnx
        export_onnx(micro(), tmp_path / "m.onnx", SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier export"


def test_exporter_failure_is_one_line_naming_versions(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("no translation for \x1b[96maten::foo\x1b[0m\n" + "page of details\n" * 50)

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(OnnxExportError, match=r"torch 2\.\d+.*onnxscript .*RuntimeError: no translation for "
                       r"aten::foo$") as info:
        export_onnx(micro(), tmp_path / "m.onnx", SIZE)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(size=(31, 64)), ValueError, "at least 32x32"),
    (dict(size=64), ValueError, r"\(height, width\)"),
    (dict(output="probabilities"), ValueError, "logits, labels"),
    (dict(batch=0), ValueError, "'dynamic' or a positive int"),
    (dict(batch="any"), ValueError, "'dynamic' or a positive int"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        export_onnx(micro(), tmp_path / "m.onnx", **{"size": SIZE, **kwargs})
    assert not list(tmp_path.iterdir())


def test_bad_paths_and_models_are_named(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export_onnx(micro(), tmp_path, SIZE)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        export_onnx(micro(), tmp_path / "no" / "m.onnx", SIZE)
    with pytest.raises(TypeError, match="_orig_mod"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx", SIZE)


@pytest.mark.parametrize("missing, check", [("onnxscript", False), ("onnxruntime", True)])
def test_missing_packages_are_named(tmp_path, monkeypatch, missing, check):
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    with pytest.raises(ImportError, match=rf"{missing}.*pip install 'semask\[onnx\]'"):
        export_onnx(micro(), tmp_path / "m.onnx", SIZE, check=check)


@pytest.mark.parametrize("version", ["2.6.0", "2.6.0+cu124"])
def test_torch_older_than_2_7_is_refused_up_front(tmp_path, monkeypatch, version):
    monkeypatch.setattr(torch, "__version__", version)
    with pytest.raises(OnnxExportError, match=f"needs torch >= 2.7, this is {re.escape(version)}"):
        export_onnx(micro(), tmp_path / "m.onnx", SIZE)
    assert not list(tmp_path.iterdir())
