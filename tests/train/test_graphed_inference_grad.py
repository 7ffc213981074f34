"""Proposed addition to tests/train/test_cuda_graphs.py."""
import torch
from torch import nn


def test_graphed_inference_runs_grad_mode_eagerly_even_for_a_captured_size(monkeypatch):
    """Grad mode needs the autograd graph: a size already captured runs eagerly under
    grad mode (a replay's output has no grad_fn)."""
    from semask.train import cuda_graphs as cg

    def capture(forward, x, warmup=2):
        static_in = x.clone()
        static_out = forward(static_in)
        # a replay has no autograd graph: its output never requires grad
        return (lambda: static_out.copy_(forward(static_in).detach())), static_in, static_out

    monkeypatch.setattr(cg, "_capture", capture)
    monkeypatch.setattr(cg, "_graphable", lambda x: True)
    model = nn.Conv2d(3, 2, 1).eval()
    runner = cg.GraphedInference(model, capture_on=1)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        runner(x)
    assert runner.captures == 1
    out = runner(x)
    assert out.requires_grad
    out.sum().backward()
    assert model.weight.grad is not None
