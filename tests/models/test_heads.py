"""The FPN head and the semantic decoder with ``fused`` (Triton upsampling, linear chains
folded) equal the plain ones (same weights)."""
import copy

import pytest
import torch

from semask.models.heads import FPNHead, semantic_decoder

# stride-4..32 maps: exact x2 chains (the folded paths) and odd ones (a chain misses by a
# pixel: the per-head fallback)
SIZES = {"chain": [(16, 24), (8, 12), (4, 6), (2, 3)], "odd": [(15, 11), (8, 6), (4, 3), (2, 2)]}


def features(sizes, channels, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=g).to(dtype) for c, (h, w) in zip(channels, sizes)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sizes", ["chain", "odd"])
def test_fpn_head_fused_equals_plain(sizes, dtype, tol):
    """float64: the Triton kernels decline, so this checks the folding alone; float32: the
    kernels (Triton's interpreter) and the folding. Forward and every gradient."""
    plain = FPNHead([4, 6, 8, 10], num_classes=5, channels=8).to(dtype).eval()
    fused = copy.deepcopy(plain)
    feats = features(SIZES[sizes], [4, 6, 8, 10], dtype)
    outs, grads = [], []
    for head, flag in ((plain, False), (fused, True)):
        leaves = [f.clone().requires_grad_() for f in feats]
        out = head(leaves, fused=flag)
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        out.backward(dout)
        outs.append(out.detach())
        grads.append([f.grad for f in leaves] + [p.grad for p in head.parameters()])
    scale = outs[0].abs().max()
    assert (outs[1] - outs[0]).abs().max() <= tol * scale
    for a, b in zip(grads[1], grads[0]):
        assert (a - b).abs().max() <= tol * b.abs().max()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sizes", ["chain", "odd"])
def test_semantic_decoder_fused_equals_plain(sizes, dtype, tol):
    priors = features(SIZES[sizes], [5] * 4, dtype)
    results = []
    for fused in (False, True):
        leaves = [p.clone().requires_grad_() for p in priors]
        out = semantic_decoder(leaves, fused)
        out.backward(torch.ones_like(out) + out.detach())
        results.append((out.detach(), [p.grad for p in leaves]))
    (out, grads), (out_f, grads_f) = results
    assert out_f.shape == out.shape == priors[0].shape
    assert (out_f - out).abs().max() <= tol * out.abs().max()
    for a, b in zip(grads_f, grads):
        assert (a - b).abs().max() <= tol * b.abs().max()


@pytest.mark.parametrize("sizes,head_calls,decoder_calls", [("chain", 4, 3), ("odd", 6, 6)])
def test_folding_upsamples_fewer_times(monkeypatch, sizes, head_calls, decoder_calls):
    """Exact chains: 4 instead of 6 x2 upsamplings in the head, 3 instead of 6 in the
    decoder; odd chains keep all of them."""
    from semask.models import heads
    calls = []
    real = heads.upsample2x

    def counted(x, fused=False):
        calls.append(tuple(x.shape))
        return real(x, fused)

    monkeypatch.setattr(heads, "upsample2x", counted)
    head = FPNHead([4, 6, 8, 10], num_classes=5, channels=8).double().eval()
    head(features(SIZES[sizes], [4, 6, 8, 10], torch.float64), fused=True)
    assert len(calls) == head_calls
    calls.clear()
    semantic_decoder(features(SIZES[sizes], [5] * 4, torch.float64), fused=True)
    assert len(calls) == decoder_calls


def test_fused_head_and_decoder_trace_in_one_graph():
    """torch.compile(fullgraph=True) through the folded paths (the upsampling there is
    PyTorch's: the Triton kernels run in eager mode only)."""
    head = FPNHead([4, 6, 8, 10], num_classes=5, channels=8).eval()
    feats = features(SIZES["chain"], [4, 6, 8, 10], torch.float32)
    priors = features(SIZES["chain"], [5] * 4, torch.float32)
    compiled = torch.compile(lambda f, p: (head(f, fused=True), semantic_decoder(p, True)),
                             fullgraph=True, backend="eager")
    out, total = compiled(feats, priors)
    torch.testing.assert_close(out, head(feats), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, semantic_decoder(priors), rtol=1e-5, atol=1e-6)


def test_fpn_head_drops_channels_of_the_sum_before_the_classifier():
    """Train mode: Dropout2d(0.1) on the summed 256-channel map, then the 1x1 classifier (as
    mmseg's cls_seg), against the same computation by hand with the same random draw; the
    classifier's bias set non-zero, so dropping its output channels instead would show."""
    torch.manual_seed(0)
    head = FPNHead([8, 16, 32, 64], num_classes=5, channels=16).train()
    with torch.no_grad():
        head.conv_seg.bias.uniform_(1.0, 2.0)
    feats = features(SIZES["chain"], [8, 16, 32, 64], torch.float64)
    head = head.double()
    summed = head.scale_heads[0](feats[0])
    for scale_head, feat in zip(head.scale_heads[1:], feats[1:]):
        summed = summed + torch.nn.functional.interpolate(scale_head(feat), summed.shape[2:],
                                                          mode="bilinear", align_corners=False)
    torch.manual_seed(1)
    want = head.conv_seg(torch.nn.functional.dropout2d(summed, 0.1, training=True))
    # scale heads again (their BatchNorm statistics moved once more: the batch statistics,
    # which train mode uses, are the same)
    torch.manual_seed(1)
    got = head(feats)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
