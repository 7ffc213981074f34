"""SeMaskSwin's API at its edges: argument checks, predict, checkpointing switch, FLOP count."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import semask
from semask.ops.backend import requested_backend


def micro(**kw):
    return semask.SeMaskSwin("micro", num_classes=kw.pop("num_classes", 5), head_channels=8, **kw)


@pytest.mark.parametrize("kw,match", [(dict(num_classes=1), "num_classes must be at least 2"),
                                      (dict(window_size=0), "window_size must be a positive int"),
                                      (dict(window_size=2.5), "window_size must be a positive int"),
                                      (dict(drop_path_rate=-0.5), r"drop_path_rate must be in \[0, 1\)"),
                                      (dict(semantic_windowed="TTFF"), "semantic_windowed must be bools"),
                                      (dict(semantic_windowed=(1, 1, 0, 0)), "semantic_windowed must be bools")])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        micro(**kw)


def test_empty_batch_and_float_targets_are_refused():
    model = micro().eval()
    with pytest.raises(ValueError, match="B >= 1"):
        model(torch.zeros(0, 3, 64, 64))
    out = model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="integer class indices"):
        model.loss(out, torch.zeros(1, 64, 64))


def test_integer_and_numpy_images_are_refused_naming_the_input():
    model = micro().eval()
    with pytest.raises(TypeError, match="float tensor .* got torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float tensor .* got ndarray"):
        model(np.zeros((1, 3, 64, 64), np.float32))


def test_predict_runs_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = micro(drop_path_rate=0.3).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.randn(2, 3, 64, 64)
    first, second = model.predict(x), model.predict(x)
    assert torch.equal(first, second) and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert torch.equal(first, model.eval()(x).logits.argmax(1))


def test_grad_checkpointing_takes_bools_or_stages():
    backbone = micro().backbone
    backbone.set_grad_checkpointing(True)
    assert [layer.grad_checkpointing for layer in backbone.layers] == [True] * 4
    backbone.set_grad_checkpointing((1, 3))
    assert [layer.grad_checkpointing for layer in backbone.layers] == [False, True, False, True]
    backbone.set_grad_checkpointing(False)
    assert not any(layer.grad_checkpointing for layer in backbone.layers)


def test_checkpoint_saved_under_another_suffix_loads(tmp_path):
    src, dst = micro(), micro()
    path = semask.save_checkpoint(src, tmp_path / "weights.pth")
    assert semask.load_checkpoint(dst, path).source == "safetensors"
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_fused_argument_and_environment(monkeypatch):
    monkeypatch.delenv("SEMASK_BACKEND", raising=False)
    assert [requested_backend(f) for f in (False, 0, True, 1, "Triton ")] == ["torch", "torch", "auto", "auto",
                                                                              "triton"]
    monkeypatch.setenv("SEMASK_BACKEND", " ")
    assert requested_backend(True) == "auto"
    monkeypatch.setenv("SEMASK_BACKEND", "cuda")
    assert requested_backend(True) == "cuda" and requested_backend("torch") == "torch"


def test_fused_ops_are_counted_by_flop_counter_in_a_fresh_process():
    """FlopCounterMode sees the fused custom ops through semask.ops.flops, which importing
    semask registers: with the classes unpadded (as the demo counts) the fused model counts
    the reference's FLOPs; padded (5 -> 16 classes) more."""
    code = ("import torch, semask\n"
            "from torch.utils.flop_counter import FlopCounterMode\n"
            "from semask.ops.semantic_attention import classes_unpadded\n"
            "x = torch.randn(1, 3, 64, 64)\n"
            "totals = []\n"
            "for fused, unpadded in ((False, False), ('triton', True), ('triton', False)):\n"
            "    torch.manual_seed(0)\n"
            "    m = semask.SeMaskSwin('micro', num_classes=5, head_channels=8, fused=fused).eval()\n"
            "    with torch.no_grad(), FlopCounterMode(display=False) as c:\n"
            "        if unpadded:\n"
            "            with classes_unpadded():\n"
            "                m(x)\n"
            "        else:\n"
            "            m(x)\n"
            "    totals.append(c.get_total_flops())\n"
            "print(*totals)\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    reference, fused, padded = map(int, run.stdout.split())
    assert fused == reference > 0 and padded > reference
