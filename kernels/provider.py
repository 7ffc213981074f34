"""The Triton provider of the fused ops (see :mod:`semask.ops.backend`).

Answers the shared launcher signatures by calling the kernels in
:mod:`semask.kernels.window_attention` and :mod:`semask.kernels.semantic_attention`, and
says whether :mod:`semask.kernels.upsample_cross_entropy` (the fused loss, called by
:mod:`semask.models.loss`), :mod:`semask.kernels.bilinear_upsample` (called by
:mod:`semask.ops.upsample`) and :mod:`semask.kernels.layer_norm` (called by
:mod:`semask.ops.layer_norm`) can run (ops "upsample_cross_entropy", "bilinear_upsample",
"layer_norm").
On CPU tensors it runs only under ``TRITON_INTERPRET=1`` (Triton's interpreter).
"""
from __future__ import annotations

import importlib
import os


class TritonProvider:
    name = "triton"

    def reasons(self, op: str, tensors, params: dict) -> list[str]:
        """Why the Triton kernels cannot run ``op`` on these inputs (empty: they can)."""
        try:
            import triton  # noqa: F401
        except Exception as exc:
            return [f"triton is not importable ({exc})"]
        device = tensors[0].device
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return ["inputs are on the CPU (set TRITON_INTERPRET=1 to run the Triton "
                    "kernels in the interpreter)"]
        if device.type not in ("cpu", "cuda"):
            return [f"device {device.type} is not supported"]
        return self._module(op).reasons(tensors, params)

    @staticmethod
    def _module(op: str):
        return importlib.import_module(f"semask.kernels.{op}")

    def window_attention_fwd(self, qkv, table, num_heads, window, shift, scale, height, width):
        return self._module("window_attention").forward(qkv, table, num_heads, window, shift,
                                                        scale, height, width)

    def window_attention_bwd(self, dout, qkv, table, out, lse, num_heads, window, shift, scale):
        return self._module("window_attention").backward(
            dout, qkv, table, out, lse, num_heads, window, shift, scale)

    def semantic_attention_fwd(self, q, k, v, window):
        return self._module("semantic_attention").forward(q, k, v, window)

    def semantic_attention_bwd(self, dout, q, k, v, out, lse, window):
        return self._module("semantic_attention").backward(dout, q, k, v, out, lse, window)


PROVIDER = TritonProvider()
