"""Proposed addition to tests/ops/test_backend_choice.py."""
import torch

from semask.ops import backend


def test_half_precision_inputs_may_take_the_fused_kernels(monkeypatch):
    """float16 and bfloat16 are supported dtypes: an explicit request is granted
    (no BackendUnavailable)."""
    monkeypatch.setattr(backend, "_choices", {})
    params = dict(num_heads=1, window=7, shift=0)
    for dtype in (torch.float16, torch.bfloat16):
        qkv, table = torch.randn(1, 7, 7, 96, dtype=dtype), torch.randn(169, 1, dtype=dtype)
        assert backend.common_reasons([qkv, table]) == []
        assert backend.choose("triton", "window_attention", [qkv, table], params) == "triton"
