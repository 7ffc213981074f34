"""semask-export: a checkpoint with its stored config to an ONNX file that segments as the model."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from semask.models import export, save_checkpoint
from semask.train.cli import export_main
from semask.train.config import load_config
from semask.train.trainer import build_model

pytestmark = pytest.mark.skipif(torch.torch_version.TorchVersion(torch.__version__) < export.MIN_TORCH,
                                reason="torch 2.6's ONNX exporter fails: export_onnx refuses it")


@pytest.fixture(name="checkpoint")
def checkpoint_fixture(tmp_path):
    """A micro model's weights file with its config (crop 64x96), and the model."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8, crop_size=[64, 96])
    model = build_model(cfg, cfg.num_classes)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, {"config": cfg.to_json(), "iteration": "6"})
    return path, model.eval(), cfg


def test_export_of_labels_at_the_crop_size(checkpoint, tmp_path, capsys):
    path, model, cfg = checkpoint
    out = tmp_path / "seg.onnx"
    export_main([str(path), str(out), "--output", "labels", "--batch", "1"])
    printed = capsys.readouterr().out
    assert "images [1x3x64x96] -> labels" in printed and "onnxruntime agrees with PyTorch at batch 1" in printed
    proto = onnx.load(str(out))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]  # the config's crop_size, without --size
    assert [o.name for o in proto.graph.output] == ["labels"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["semask.config"]) == cfg.to_dict() and props["semask.checkpoint"] == str(path)
    images = torch.randn(1, 3, 64, 96)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (labels,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        logits = model(images).logits
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[clear], logits.argmax(1).numpy()[clear])


def test_size_opset_and_no_check(checkpoint, tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    export_main([str(checkpoint[0]), str(out), "--size", "33,45", "--batch", "2", "--opset", "18", "--no-check"])
    assert "images [2x3x33x45] -> logits, ONNX opset 18; not checked against PyTorch" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 33, 45]
    assert [o.version for o in proto.opset_import if o.domain == ""] == [18]


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be dynamic or a positive int, got '0'"),
    (["--size", "64,x"], "--size: expected h,w"),
    (["--size", "64,64,3"], "--size: expected h,w"),
    (["--output", "probs"], "invalid choice"),
])
def test_usage_errors(checkpoint, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        export_main([str(checkpoint[0]), str(tmp_path / "x.onnx"), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("where, message", [
    (lambda t, c: [str(t / "none.safetensors"), str(t / "x.onnx")], "checkpoint not found"),
    (lambda t, c: [str(c), str(t / "x.onnx"), "--size", "16"], "--size: images are at least 32x32"),
    (lambda t, c: [str(c), str(t)], "is a folder: give the .onnx file to write"),
    (lambda t, c: [str(c), str(t / "no" / "x.onnx")], "folder not found"),
])
def test_paths_and_sizes_are_usage_errors(tmp_path, checkpoint, capsys, where, message):
    with pytest.raises(SystemExit) as info:
        export_main(where(tmp_path, checkpoint[0]))
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_an_opset_the_exporter_cannot_write_is_one_error_line(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^semask-export: error: torch\.onnx (wrote ONNX opset \d+, not the 17 "
                       r"asked for .*nothing written|could not export the model .*: \w+Error: [^\x1b]*$)"):
        export_main([str(checkpoint[0]), str(tmp_path / "x.onnx"), "--opset", "17", "--no-check"])
    assert not (tmp_path / "x.onnx").exists()
