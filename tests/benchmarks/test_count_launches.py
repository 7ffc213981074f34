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
    """Micro SeMask at 64x64 under bf16 autocast: the fused step runs its attention, loss and
    upsampling on Triton launches, casts its weights in one go and launches fewer kernels
    in all than the reference. Its LayerNorms are PyTorch's in an eager step (whose outputs
    the Linears after them cast) and Triton's as captured in a graph (no norm or cast
    kernels in the forward: Triton launches instead)."""
    ref = CL.count_step("semask_swin_micro_fpn", "reference", 64, 2, torch.bfloat16, 19)
    eager = CL.count_step("semask_swin_micro_fpn", "triton", 64, 2, torch.bfloat16, 19)
    graph = CL.count_step("semask_swin_micro_fpn", "triton", 64, 2, torch.bfloat16, 19,
                          captured=True)
    assert ref["triton_forward"] == ref["triton_backward"] == 0
    for fused in (eager, graph):
        assert fused["triton_forward"] > 0 and fused["triton_backward"] > 0
        assert fused["forward"][("SeMaskSwin", "aten._foreach_copy_")] == 1
        assert _total(fused) < 0.75 * _total(ref)
    assert eager["forward"][("LayerNorm", "aten.native_layer_norm")] > 0
    assert graph["forward"][("LayerNorm", "aten.native_layer_norm")] == 0
    assert graph["forward"][("Linear", "aten._to_copy")] == 0 < ref["forward"][("Linear", "aten._to_copy")]
    assert graph["triton_forward"] > eager["triton_forward"]
    text = CL.report("triton", graph, rows=3)
    assert text.startswith(f"## triton: {_total(graph)} launches")
