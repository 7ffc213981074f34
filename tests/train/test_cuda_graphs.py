"""--cuda-graphs: the training forward, losses and backward replayed as CUDA graphs.

CPU: the settings that cannot capture are refused before anything is written. GPU (marker
``gpu``): replays give the eager step's losses and gradients on new inputs, and a short run
trains like the eager one.
"""
import pytest
import torch

import semask
from semask.train.cuda_graphs import graph_support_errors, graphed_loss_step
from semask.train.plot import read_metrics
from semask.train.trainer import train


def test_unsupported_settings_are_named():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graph_support_errors(cuda, False, False, False, 1) == []
    assert len(graph_support_errors(cuda, True, True, True, 2)) == 4
    why = " ".join(graph_support_errors(cpu, False, False, False, 1))
    assert "CUDA device" in why


def test_refused_on_cpu_before_anything_is_written(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="--cuda-graphs: CUDA graphs need a CUDA device"):
        train(tiny_config(tmp_path / "run", cuda_graphs=True, device="cpu"))
    assert not (tmp_path / "run").exists()


def _deterministic_model(fused):
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, drop_path_rate=0.0,
                              fused=fused).cuda().train()
    for m in model.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_replays_equal_eager_steps(fused):
    """Same weights, no dropout: each replay on new images gives the eager step's losses and
    parameter gradients (bf16 autocast without its cache); BatchNorm statistics are those
    from before the capture."""
    graph_model, eager_model = _deterministic_model(fused), _deterministic_model(fused)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)

    g = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(2, 3, 64, 64, device="cuda", generator=g),
                torch.randint(0, 5, (2, 64, 64), device="cuda", generator=g)) for _ in range(3)]
    buffers = {n: b.clone() for n, b in graph_model.named_buffers()}
    step = graphed_loss_step(graph_model, *batches[0], autocast)
    for n, b in graph_model.named_buffers():
        torch.testing.assert_close(b, buffers[n], rtol=0, atol=0, msg=n)
    for images, labels in batches[1:] + batches[:1]:
        for m in (graph_model, eager_model):
            m.zero_grad(set_to_none=True)
        got = step(images, labels)
        got["loss"].backward()
        with autocast():
            want = eager_model.loss(eager_model(images), labels)
        want["loss"].backward()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-4, msg=key)
        for (n, p), q in zip(graph_model.named_parameters(), eager_model.parameters()):
            if q.grad is not None:
                scale = q.grad.abs().max().item() + 1e-12
                assert (p.grad - q.grad).abs().max().item() <= 2e-2 * scale, n


@pytest.mark.gpu
def test_gpu_training_run_with_cuda_graphs(tmp_path, tiny_config):
    """Three steps with graphs give the eager run's losses (no drop path; the head's dropout
    draws differ, since capture and its warm-up draw too)."""
    kw = dict(iters=3, drop_path_rate=0.0, device="cuda", amp="bf16")
    train(tiny_config(tmp_path / "eager", **kw))
    train(tiny_config(tmp_path / "graphs", cuda_graphs=True, **kw))
    a, b = ([r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl") if "loss" in r]
            for d in ("eager", "graphs"))
    assert len(b) == 3 and b == pytest.approx(a, rel=5e-2)  # dropout draws differ (warm-up)
