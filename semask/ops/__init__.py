"""Public functional ops, their fused custom ops and the backend choice."""
from .backend import BackendUnavailable, not_supported_reasons, requested_backend
from .semantic_attention import SemanticAttention, semantic_attention
from .window_attention import WindowAttention, window_attention
from . import flops  # noqa: F401  (registers the FlopCounterMode formulas of the fused ops)

__all__ = [
    "BackendUnavailable", "SemanticAttention", "WindowAttention", "not_supported_reasons",
    "requested_backend", "semantic_attention", "window_attention",
]
