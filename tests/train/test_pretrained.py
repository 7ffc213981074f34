"""Real-dataset training warns without a pretrained backbone and loads an ImageNet Swin one."""
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file

import semask
from semask.train.trainer import train


def test_warns_loudly_without_pretrained_backbone(tmp_path, tiny_config, ade_fixture):
    cfg = tiny_config(tmp_path / "run", dataset="ade20k", data_root=str(ade_fixture), num_classes=150, iters=1)
    with pytest.warns(UserWarning, match="(?s)WITHOUT an ImageNet-pretrained backbone.*30 mIoU"):
        res = train(cfg)
    assert len(res["IoU"]) == 150


def test_imagenet_backbone_is_loaded(tmp_path, tiny_config, ade_fixture, capsys):
    donor = semask.SeMaskSwin("micro", num_classes=150, semantic=False, head_channels=8)
    backbone = {k[len("backbone."):]: v for k, v in donor.state_dict().items()
                if k.startswith("backbone.") and not k.startswith("backbone.norm")}
    backbone["head.weight"] = torch.zeros(1000, 256)           # classifier of the ImageNet model: dropped
    torch.save({"model": backbone}, tmp_path / "swin_imagenet.pth")
    cfg = tiny_config(tmp_path / "run", dataset="ade20k", data_root=str(ade_fixture), num_classes=150, iters=1,
                      lr=0.0, warmup_iters=0, pretrained=str(tmp_path / "swin_imagenet.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)          # no "from scratch" warning now
        train(cfg)
    assert "swin_imagenet" in capsys.readouterr().out
    saved = load_file(tmp_path / "run" / "model.safetensors")
    w = "backbone.layers.0.blocks.0.attn.qkv.weight"
    assert torch.equal(saved[w], donor.state_dict()[w])     # lr 0: the saved model holds the ImageNet weights


def test_pretrained_of_another_class_count_names_the_flag_and_the_shapes(tmp_path):
    """--pretrained with another class count: the refusal names --skip-mismatched (the
    option the config spells) and lists each tensor's two shapes, as load_checkpoint does."""
    from semask.train.config import load_config
    from semask.train.trainer import build_model, load_pretrained
    path = tmp_path / "ade.safetensors"
    semask.save_checkpoint(semask.SeMaskSwin("micro", num_classes=150, head_channels=8), path)
    cfg = load_config(None, variant="micro", head_channels=8, num_classes=19, pretrained=str(path))
    with pytest.raises(semask.CheckpointMismatch) as caught:
        load_pretrained(build_model(cfg, 19), cfg)
    msg = str(caught.value)
    assert msg.startswith(f"--pretrained {path}: checkpoint was trained for another number of classes; "
                          "--skip-mismatched true keeps these tensors freshly initialised:\n  ")
    assert re.search(r"\n  \S+: checkpoint \(150, \d+.*\) vs model \(19, \d+", msg), msg
