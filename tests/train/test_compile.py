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
