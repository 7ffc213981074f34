"""--compile: the training forward under torch.compile trains like the eager one."""
import pytest
import torch
from torch._dynamo.utils import counters

from semask.train.plot import read_metrics
from semask.train.trainer import train


def _losses(out_dir):
    return [r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]


def test_compiled_forward_trains_like_eager(tmp_path, tiny_config):
    """aot_eager (no code generation, fast on a CPU) traces the model through dynamo and
    AOTAutograd; without drop path both runs compute the same losses step by step."""
    kw = dict(iters=3, drop_path_rate=0.0)
    eager = train(tiny_config(tmp_path / "eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    compiled = train(tiny_config(tmp_path / "compiled", compile="aot_eager", **kw))
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled the forward
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(a) == 3 and a[-1] != a[0]
    assert b == pytest.approx(a, rel=1e-4)
    assert compiled["mIoU"] == pytest.approx(eager["mIoU"], abs=1e-3)


def test_unknown_compile_backend_is_refused_before_anything_is_written(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="unknown torch.compile backend 'nope'"):
        train(tiny_config(tmp_path / "run", compile="nope"))
    assert not (tmp_path / "run").exists()


def test_a_training_model_with_drop_path_compiles_once():
    """Drop path's keep probabilities were cached in a dict at the first call: dynamo guarded
    on the dict not holding them and compiled the whole model a second time at the second
    call (86 s of 263 s for SeMask-T on the CPU, torch 2.11)."""
    from semask import SeMaskSwin
    torch._dynamo.reset()
    counters.clear()
    model = SeMaskSwin("micro", num_classes=4, head_channels=8, drop_path_rate=0.3).train()
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = torch.compile(lambda x, y: model.loss(model(x), y)["loss"], backend=count)
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    step(images, target).backward()
    first = len(graphs)
    for _ in range(2):
        step(images, target).backward()
    assert first >= 1 and len(graphs) == first
