"""Fused backwards that sum with float atomics raise under
torch.use_deterministic_algorithms(True) (warn with warn_only=True), as PyTorch's own such
ops; their forwards and the atomic-free backwards run."""
import pytest
import torch

from semask.models.loss import upsampled_cross_entropy
from semask.ops.window_attention import window_attention


@pytest.fixture
def deterministic():
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield lambda warn_only=False: torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def _window_inputs():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 7, 7, 3 * 32, generator=g, requires_grad=True)
    table = torch.randn(13 * 13, 2, generator=g, requires_grad=True)
    return qkv, table


def test_window_attention_backward_raises_or_warns(deterministic):
    qkv, table = _window_inputs()
    deterministic()
    out = window_attention(qkv, table, 2, 7, 3, 32 ** -0.5, backend="triton")  # the forward has no atomics
    with pytest.raises(RuntimeError, match="bias-table gradient.*use_deterministic_algorithms"):
        out.sum().backward()
    deterministic(warn_only=True)
    with pytest.warns(UserWarning, match="float atomics"):
        window_attention(qkv, table, 2, 7, 3, 32 ** -0.5, backend="triton").sum().backward()
    assert qkv.grad is not None and table.grad is not None


def test_reference_and_the_fused_loss_without_gradient_run(deterministic):
    qkv, table = _window_inputs()
    deterministic()
    window_attention(qkv, table, 2, 7, 3, 32 ** -0.5, backend="torch").sum().backward()
    logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    target = torch.randint(0, 5, (2, 16, 16))
    with torch.no_grad():
        upsampled_cross_entropy(logits, target, fused=True)
    with pytest.raises(RuntimeError, match="cross-entropy loss gradient"):
        upsampled_cross_entropy(logits, target, fused=True)
