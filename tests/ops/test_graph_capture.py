"""The fused ops inside CUDA graphs (``torch.cuda.graph``, as torch.compile's
reduce-overhead mode and ``benchmarks/measure.graph_time_ms`` use them): forward and
backward are captured once, the graph is replayed on new input values, and its outputs
must equal eager calls on those values. A host sync or a host-side value in an op would
fail the capture or freeze a stale value into the graph."""
import os
import sys
import time

import pytest
import torch

from semask.kernels.common import old_triton_on_hopper
from semask.models.loss import fused_loss_reasons, upsampled_cross_entropy
from semask.ops import backend as _backend
from semask.ops.semantic_attention import semantic_attention
from semask.ops.upsample import fused_upsample_reasons, upsample2x
from semask.ops.window_attention import window_attention

pytestmark = pytest.mark.gpu


# each case: (function of the inputs, inputs, reasons(inputs) why the backend would not
# run its kernel, or None where it has none: an explicit backend that cannot run falls
# back to the reference)
def _window(backend):
    def fn(qkv, table):
        return window_attention(qkv, table, 3, 7, 3, 32 ** -0.5, backend=backend)
    return fn, [torch.randn(2, 14, 21, 288), 0.02 * torch.randn(169, 3)], \
        lambda t: _backend.not_supported_reasons(backend, "window_attention", t,
                                                 dict(num_heads=3, window=7, shift=3))


def _semantic(backend, window, K, size):
    def fn(q, k, v):
        return semantic_attention(q, k, v, window, backend=backend)
    return fn, [0.5 * torch.randn(2, size, size, K), 0.5 * torch.randn(2, size, size, K),
                torch.randn(2, size, size, 96)], \
        lambda t: _backend.not_supported_reasons(backend, "semantic_attention", t, dict(window=window))


def _loss(backend):
    target = torch.randint(0, 19, (2, 128, 128), device="cuda")
    target[:, :8] = 255
    return (lambda logits: upsampled_cross_entropy(logits, target, 255, fused=True)), \
        [2 * torch.randn(2, 19, 32, 32)], \
        None if backend == "cuda" else (lambda t: fused_loss_reasons(t[0], target, 255))


def _upsample(backend):
    return (lambda x: upsample2x(x, fused=True)), [torch.randn(2, 64, 17, 23)], \
        None if backend == "cuda" else (lambda t: fused_upsample_reasons(t[0]))


CASES = {
    "window": _window,
    "semantic-window7": lambda b: _semantic(b, 7, 19, 14),
    "semantic-global": lambda b: _semantic(b, 0, 150, 32),
    "loss": _loss,
    "upsample": _upsample,
}


def _step(fn, leaves, dout):
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, dout))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_op_forward_backward_replays_in_a_captured_graph(backend, case):
    fn, inputs, reasons = CASES[case](backend)
    if reasons is None:
        pytest.skip("the loss and upsampling kernels are Triton only")
    static = [t.cuda().requires_grad_() for t in inputs]
    why = reasons(static)
    if why and (backend == "cuda" or old_triton_on_hopper(static[0])):
        pytest.skip("; ".join(why))  # the extension is not built; fp32 kernels Triton 3.2 cannot build
    assert not why, why
    with torch.no_grad():  # no graph of a default-stream forward may stay alive: its leaves'
        # AccumulateGrad nodes would keep the default stream, and the capture's backward
        # would then make the legacy stream wait on the capture (cudaErrorStreamCaptureImplicit)
        dout = torch.randn(fn(*static).shape).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, backend choice) off the capture
        for _ in range(2):
            _step(fn, static, dout)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _step(fn, static, dout)
    for _ in range(2):  # new values each replay: nothing of the capture's inputs may stick
        fresh = [torch.randn(t.shape).cuda() * t.detach().std() for t in static]  # CPU RNG
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        expected = _step(fn, [f.requires_grad_() for f in fresh], dout)
        for got, want in zip(captured, expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_graph_time_leaves_out_host_gaps():
    """A call that spends 3 ms on the host before a short copy: the stream timing counts
    the host's time, the graph timing only the copy's (a graph holds no host code)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from benchmarks.measure import graph_time_ms, time_ms

    x = torch.randn(1 << 22, device="cuda")
    y = torch.empty_like(x)

    def fn():
        time.sleep(0.003)
        y.copy_(x)

    copy_ms = time_ms(lambda: y.copy_(x), "cuda")
    assert time_ms(fn, "cuda") > 2.5
    graph = graph_time_ms(fn, estimate_ms=copy_ms)
    assert 0 < graph < 0.5 and graph < 4 * copy_ms + 0.01, (graph, copy_ms)
