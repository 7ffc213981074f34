"""benchmarks/count_launches.py: launches of a training step, counted on the CPU."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks import count_launches as CL  # noqa: E402


def _total(counts):
    return (sum(counts["forward"].values()) + sum(counts["backward"].values())
            + counts["triton_forward"] + counts["triton_backward"])


def test_fused_step_launches_fewer_kernels_than_the_reference():
    """Micro SeMask at 64x64 under bf16 autocast: the fused step runs its attention, norms,
    loss and upsampling on Triton launches, casts its weights in one go (no per-layer
    weight casts in the forward) and launches fewer kernels in all than the reference."""
    ref = CL.count_step("semask_swin_micro_fpn", "reference", 64, 2, torch.bfloat16, 19)
    fused = CL.count_step("semask_swin_micro_fpn", "triton", 64, 2, torch.bfloat16, 19)
    assert ref["triton_forward"] == ref["triton_backward"] == 0
    assert fused["triton_forward"] > 0 and fused["triton_backward"] > 0
    assert fused["forward"][("SeMaskSwin", "aten._foreach_copy_")] == 1
    assert fused["forward"][("Linear", "aten._to_copy")] == 0 < ref["forward"][("Linear", "aten._to_copy")]
    assert fused["forward"][("LayerNorm", "aten.native_layer_norm")] == 0
    assert _total(fused) < 0.7 * _total(ref)
    text = CL.report("triton", fused, rows=3)
    assert text.startswith(f"## triton: {_total(fused)} launches")
