"""The reference ops against independent, official-style constructions."""
import pytest
import torch
import torch.nn.functional as F

from semask.ops import reference as ref


def official_shift_mask(Hp, Wp, w, s):
    """The official Swin construction: label the 3x3 slice regions, compare per window."""
    img_mask = torch.zeros(1, Hp, Wp, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img_mask[:, hs, ws, :] = cnt
            cnt += 1
    mw = ref.window_partition(img_mask, w).squeeze(-1)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@pytest.mark.parametrize("Hp,Wp,w", [(14, 21, 7), (7, 7, 7), (24, 36, 12), (12, 12, 12)])
def test_shift_mask_matches_official_construction(Hp, Wp, w):
    s = w // 2
    assert torch.equal(ref.shift_attn_mask(Hp, Wp, w, s), official_shift_mask(Hp, Wp, w, s))


def test_relative_position_index_by_hand():
    # w = 2: tokens (0,0) (0,1) (1,0) (1,1); index = (dh + 1) * 3 + (dw + 1)
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(ref.relative_position_index(2), expected)


def test_index_under_graph_capture_reads_the_cached_copy(monkeypatch):
    """While a CUDA graph is captured the index cached before is read (no rebuild: the
    benchmarks' graphed reference timed 18 index ops per call); with none cached it is
    built and not cached (it would live in the graph's pool). Capture is simulated."""
    built = []
    monkeypatch.setattr(ref, "_build_relative_position_index",
                        lambda window, device: built.append(window) or torch.zeros(1))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(ref, "_INDEX_CACHE", {})
    cuda = torch.device("cuda")
    ref._relative_position_index_on(5, cuda)
    assert built == [5] and ref._INDEX_CACHE == {}
    cached = torch.ones(1)
    ref._INDEX_CACHE[(5, cuda)] = cached
    assert ref._relative_position_index_on(5, cuda) is cached and built == [5]


def test_window_partition_roundtrip():
    x = torch.randn(2, 14, 21, 5)
    parts = ref.window_partition(x, 7)
    assert parts.shape == (2 * 2 * 3, 49, 5)
    assert torch.equal(parts[1], x[0, 0:7, 7:14].reshape(49, 5))
    assert torch.equal(ref.window_reverse(parts, 7, 14, 21), x)


def loop_window_attention(qkv, table, heads, w, s, scale):
    """Window by window, head by head, in float64 with the official mask construction."""
    B, Hp, Wp, C3 = qkv.shape
    C = C3 // 3
    D = C // heads
    x = torch.roll(qkv, (-s, -s), (1, 2)) if s else qkv
    mask = official_shift_mask(Hp, Wp, w, s) if s else None
    out = torch.zeros(B, Hp, Wp, C, dtype=qkv.dtype)
    coords = [(i, j) for i in range(w) for j in range(w)]
    bias = torch.empty(heads, w * w, w * w, dtype=qkv.dtype)
    for a, (ia, ja) in enumerate(coords):
        for b, (ib, jb) in enumerate(coords):
            bias[:, a, b] = table[(ia - ib + w - 1) * (2 * w - 1) + (ja - jb + w - 1)]
    nw = 0
    for b in range(B):
        nw = 0
        for wi in range(Hp // w):
            for wj in range(Wp // w):
                tok = x[b, wi * w:(wi + 1) * w, wj * w:(wj + 1) * w].reshape(w * w, C3)
                for h in range(heads):
                    q = tok[:, h * D:(h + 1) * D] * scale
                    k = tok[:, C + h * D:C + (h + 1) * D]
                    v = tok[:, 2 * C + h * D:2 * C + (h + 1) * D]
                    att = q @ k.T + bias[h]
                    if mask is not None:
                        att = att + mask[nw]
                    o = att.softmax(-1) @ v
                    out[b, wi * w:(wi + 1) * w, wj * w:(wj + 1) * w, h * D:(h + 1) * D] = o.view(w, w, D)
                nw += 1
    return torch.roll(out, (s, s), (1, 2)) if s else out


@pytest.mark.parametrize("w,s,Hp,Wp,heads", [(7, 0, 7, 14, 2), (7, 3, 14, 14, 3), (12, 6, 12, 24, 1), (3, 1, 6, 9, 2)])
def test_window_attention_reference_matches_loop(w, s, Hp, Wp, heads):
    C = 4 * heads
    qkv = torch.randn(2, Hp, Wp, 3 * C, dtype=torch.float64)
    table = torch.randn((2 * w - 1) ** 2, heads, dtype=torch.float64)
    got = ref.window_attention_reference(qkv, table, heads, w, s, 0.5)
    torch.testing.assert_close(got, loop_window_attention(qkv, table, heads, w, s, 0.5))
    lse = ref.window_attention_lse_reference(qkv, table, heads, w, s, 0.5)
    assert lse.shape == (2, (Hp // w) * (Wp // w), heads, w * w) and lse.dtype == torch.float32


@pytest.mark.parametrize("window", [0, 3])
def test_semantic_attention_reference_matches_loop(window):
    B, Hp, Wp, K, C = 2, 6, 9, 5, 4
    q, k = torch.randn(2, B, Hp, Wp, K, dtype=torch.float64)
    v = torch.randn(B, Hp, Wp, C, dtype=torch.float64)
    out = ref.semantic_attention_reference(q, k, v, window)
    expected = torch.empty_like(out)
    w_h, w_w = (window, window) if window else (Hp, Wp)
    for b in range(B):
        for i in range(0, Hp, w_h):
            for j in range(0, Wp, w_w):
                qs, ks, vs = (t[b, i:i + w_h, j:j + w_w].reshape(w_h * w_w, -1) for t in (q, k, v))
                a = torch.exp(qs @ ks.T)  # no 1/sqrt(d) scaling (SeMask)
                expected[b, i:i + w_h, j:j + w_w] = ((a / a.sum(1, keepdim=True)) @ vs).view(w_h, w_w, C)
    torch.testing.assert_close(out, expected)
    lse = ref.semantic_attention_lse_reference(q, k, window)
    nW = (Hp // window) * (Wp // window) if window else 1
    assert lse.shape == (B, nW, Hp * Wp // nW)


def test_pad_to_multiple_pads_right_bottom_with_zeros():
    x = torch.randn(1, 5, 8, 2)
    y = ref.pad_to_multiple(x, 7)
    assert y.shape == (1, 7, 14, 2)
    assert torch.equal(y[:, :5, :8], x) and y[:, 5:].abs().sum() == 0 and y[:, :, 8:].abs().sum() == 0
    assert ref.pad_to_multiple(F.pad(x, (0, 0, 0, 6, 0, 2)), 7).shape == (1, 7, 14, 2)


def test_bias_index_cache_survives_fake_tensors_and_inference_mode(monkeypatch):
    """The index cached per device in eager mode: a first call under FakeTensorMode must not
    cache a fake tensor, and one under inference mode no inference tensor (either would
    break later training calls)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(ref, "_INDEX_CACHE", {})
    with FakeTensorMode() as mode:
        ref.relative_position_bias(mode.from_tensor(torch.randn(169, 3)), 7)
    with torch.inference_mode():
        ref.relative_position_bias(torch.randn(169, 3), 7)
    table = torch.randn(169, 3, requires_grad=True)
    bias = ref.relative_position_bias(table, 7)
    bias.sum().backward()  # saving an inference-mode index for backward would raise
    # every table row used as often as its offset occurs between two tokens of a 7x7 window
    counts = torch.tensor([(7 - abs(dh)) * (7 - abs(dw)) for dh in range(-6, 7) for dw in range(-6, 7)],
                          dtype=torch.float32)
    torch.testing.assert_close(table.grad, counts[:, None].expand(169, 3))


def test_reference_layer_norm_honours_eps_and_pads_by_hand():
    """The torch path of semask.ops.layer_norm (and the LayerNorm module) against the
    definition in float64, with an eps large enough to matter, and its zero padding."""
    from semask.ops.layer_norm import LayerNorm, layer_norm

    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 4, dtype=torch.float64) * 0.3
    weight, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance
    want = (x - mean) / torch.sqrt(var + 0.25) * weight + bias
    torch.testing.assert_close(layer_norm(x, weight, bias, 0.25), want)
    padded = layer_norm(x, weight, bias, 0.25, pad_multiple=4)
    assert padded.shape == (2, 8, 8, 4) and padded[:, 5:].abs().sum() == 0 and padded[:, :, 6:].abs().sum() == 0
    torch.testing.assert_close(padded[:, :5, :6], want)
    module = LayerNorm(4, eps=0.25).double()
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    torch.testing.assert_close(module(x), want)
