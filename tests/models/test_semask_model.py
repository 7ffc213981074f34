"""SeMask-Swin model: sizes, semantic layer formula, padding, loss."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.models import swin as swin_mod
from semask.ops import reference as ref

ln_mod = importlib.import_module("semask.ops.layer_norm")

PAPER_PARAMS = {"tiny": 34.7e6, "small": 56.0e6, "base": 96.5e6, "large": 210.8e6}
BASELINE_PARAMS = {"tiny": 32.65e6, "small": 53.97e6, "base": 93.12e6, "large": 203.65e6}
CHANNELS = {"tiny": 96, "small": 96, "base": 128, "large": 192}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", list(PAPER_PARAMS))
def test_parameter_counts_match_published(variant):
    with torch.device("meta"):
        sem = semask.SeMaskSwin(variant, num_classes=150)
        base = semask.SeMaskSwin(variant, num_classes=150, semantic=False)
    assert abs(count(sem) - PAPER_PARAMS[variant]) / PAPER_PARAMS[variant] < 0.01
    assert abs(count(base) - BASELINE_PARAMS[variant]) / BASELINE_PARAMS[variant] < 0.01
    # SeMask adds 2C + 2(KC + K) + 2(C^2 + C) + 1 per stage (spec)
    K = 150
    added = sum(2 * c + 2 * (K * c + K) + 2 * (c * c + c) + 1
                for c in (CHANNELS[variant] * 2 ** i for i in range(4)))
    assert count(sem) - count(base) == added


def test_registry_and_default_semantic_rule():
    assert "semask_swin_tiny_fpn" in semask.list_models() and "swin_large_fpn" in semask.list_models()
    with torch.device("meta"):
        t = semask.create_model("semask_swin_tiny_fpn", num_classes=150)
        c = semask.create_model("semask_swin_tiny_fpn", num_classes=19)
        b = semask.create_model("semask_swin_base_fpn", num_classes=150)
        plain = semask.create_model("swin_tiny_fpn", num_classes=150)
    assert t.semantic_windowed == (True, True, False, False)
    assert c.semantic_windowed == (True,) * 4 and b.semantic_windowed == (True,) * 4
    assert t.backbone.layers[2].semantic_layer.class_injection[0].window == 0
    assert b.window == 12 and plain.backbone.layers[0].semantic_layer is None
    with pytest.raises(ValueError, match="unknown model"):
        semask.create_model("semask_swin_huge_fpn")
    # what the name fixes cannot be overridden (a "semask" model without semantic layers)
    with pytest.raises(ValueError, match="semask_swin_tiny_fpn is built with semantic=True, not semantic=False"):
        semask.create_model("semask_swin_tiny_fpn", semantic=False)
    with pytest.raises(ValueError, match="built with variant='tiny', not variant='base'"):
        semask.create_model("swin_tiny_fpn", variant="base")
    with pytest.raises(ValueError, match="variant"):
        semask.SeMaskSwin("huge")
    with pytest.raises(ValueError, match="head"):
        semask.SeMaskSwin("tiny", head="uper")


@pytest.mark.parametrize("window", [0, 3])
def test_semantic_layer_matches_hand_computation(window):
    torch.manual_seed(1)
    dim, K, H, W = 8, 5, 5, 7
    layer = semask.models.semantic_layer.SemanticLayer(dim, K, window).double().eval()
    with torch.no_grad():
        layer.class_injection[0].gamma.fill_(0.7)
        layer.norm1.weight.uniform_(0.5, 1.5)
        layer.norm1.bias.normal_()
    x = torch.randn(2, H, W, dim, dtype=torch.float64)
    out, prior = layer(x)

    ci = layer.class_injection[0]
    y = F.layer_norm(x, (dim,), layer.norm1.weight, layer.norm1.bias, 1e-5)
    hp, wp = (math.ceil(H / window) * window, math.ceil(W / window) * window) if window else (H, W)
    ypad = torch.zeros(2, hp, wp, dim, dtype=torch.float64)
    ypad[:, :H, :W] = y  # padded tokens are zeros -> their q, k, v are the biases
    lin = lambda m, t: t @ m.weight.T + m.bias  # noqa: E731
    av = torch.zeros(2, hp, wp, dim, dtype=torch.float64)
    wh, ww = (window, window) if window else (hp, wp)
    for b in range(2):
        for i in range(0, hp, wh):
            for j in range(0, wp, ww):
                t = ypad[b, i:i + wh, j:j + ww].reshape(-1, dim)
                a = torch.softmax(lin(ci.mlp_cls_q, t) @ lin(ci.mlp_cls_k, t).T, dim=-1)  # no scaling
                av[b, i:i + wh, j:j + ww] = (a @ lin(ci.mlp_v, t)).view(wh, ww, dim)
    z = lin(ci.mlp_res, av[:, :H, :W])
    torch.testing.assert_close(out, 0.7 * z + y)  # residual on LN(x), scalar gamma
    torch.testing.assert_close(prior, lin(ci.mlp_cls_q, y))


def official_block_attention(attn, x):
    """Official-style (S)W-MSA written independently: pad, roll, partition, mask, reverse."""
    B, H, W, C = x.shape
    w, s, heads = attn.window, attn.shift, attn.num_heads
    x = F.pad(x, (0, 0, 0, (w - W % w) % w, 0, (w - H % w) % w))
    Hp, Wp = x.shape[1:3]
    if s:
        x = torch.roll(x, (-s, -s), (1, 2))
    xw = ref.window_partition(x, w)
    N = w * w
    qkv = attn.qkv(xw).reshape(-1, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (C // heads) ** -0.5, qkv[1], qkv[2]  # head_dim ** -0.5 (Swin)
    a = q @ k.transpose(-2, -1)
    idx = attn.relative_position_index.view(-1)
    a = a + attn.relative_position_bias_table[idx].view(N, N, -1).permute(2, 0, 1)
    if s:
        img = torch.zeros(1, Hp, Wp, 1)
        cnt = 0
        for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
                img[:, hs, ws] = cnt
                cnt += 1
        mw = ref.window_partition(img, w).view(-1, N)
        mask = (mw[:, None] - mw[:, :, None]).ne(0).float() * -100.0
        nW = mask.shape[0]
        a = (a.view(B, nW, heads, N, N) + mask[None, :, None]).view(-1, heads, N, N)
    o = attn.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(-1, N, C))
    o = ref.window_reverse(o, w, Hp, Wp)
    if s:
        o = torch.roll(o, (s, s), (1, 2))
    return o[:, :H, :W]


@pytest.mark.parametrize("H,W,w", [(13, 9, 7), (14, 14, 7), (5, 17, 12), (7, 7, 7)])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_module_matches_official_style(H, W, w, shifted):
    attn = semask.ops.WindowAttention(32, 2, w, w // 2 if shifted else 0).double()
    with torch.no_grad():
        attn.qkv.bias.normal_()  # padded tokens carry q, k, v = this bias
    x = torch.randn(2, H, W, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), official_block_attention(attn, x))


def test_224_needs_no_padding_and_forced_padding_path_is_identical(monkeypatch):
    """Blocks pad in their norm1 (semask.ops.layer_norm), before the qkv projection."""
    model = semask.SeMaskSwin("tiny", num_classes=19).eval()
    x = torch.randn(1, 3, 224, 224)
    sizes = []
    orig_pad = ln_mod.pad_to_multiple

    def recording_pad(t, window):
        out = orig_pad(t, window)
        sizes.append((tuple(t.shape[1:3]), tuple(out.shape[1:3])))
        return out

    monkeypatch.setattr(ln_mod, "pad_to_multiple", recording_pad)
    with torch.no_grad():
        plain = model(x)
    assert len(sizes) == 12 and all(a == b for a, b in sizes)  # every block map is a multiple of 7

    def forced_pad(t, window):  # always take the F.pad + crop route
        return F.pad(t, (0, 0, 0, (-t.shape[2]) % window, 0, (-t.shape[1]) % window))

    monkeypatch.setattr(ln_mod, "pad_to_multiple", forced_pad)
    with torch.no_grad():
        forced = model(x)
    assert torch.equal(plain.logits, forced.logits)


@pytest.mark.parametrize("size,variant", [((97, 131), "tiny"), ((224, 224), "tiny"), ((512, 512), "micro"),
                                          ((32, 45), "base")])
def test_any_input_size(size, variant):
    model = semask.SeMaskSwin(variant, num_classes=19, head_channels=32).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.logits.shape == (1, 19, *size) and torch.isfinite(out.logits).all()
    strides = [4, 8, 16, 32]
    for prior, stride in zip(out.semantic_logits, strides):
        assert prior.shape == (1, 19, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    feats = model.backbone(torch.randn(1, 3, *size)).features
    assert [f.shape[1] for f in feats] == model.backbone.channels


def test_plain_swin_has_no_semantic_logits():
    model = semask.SeMaskSwin("micro", num_classes=7, semantic=False, head_channels=16)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.semantic_logits is None
    losses = model.loss(out, torch.randint(0, 7, (2, 64, 64)))
    assert losses["loss_semantic"] == 0 and torch.equal(losses["loss"], losses["loss_main"])


def hand_cross_entropy(logits, target):
    """Mean over all pixels, ignored (255) pixels contributing 0 (mmseg's default)."""
    logp = logits.double().log_softmax(1)
    valid = target != 255
    picked = logp.gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
    return -(picked * valid).sum() / target.numel()


def test_loss_matches_hand_computation():
    model = semask.SeMaskSwin("micro", num_classes=6, head_channels=16)
    x = torch.randn(2, 3, 70, 90)
    target = torch.randint(0, 6, (2, 70, 90))
    target[:, :10] = 255
    out = model(x)
    losses = model.loss(out, target)
    sem = out.semantic_logits[0]
    for i, p in enumerate(out.semantic_logits[1:], start=1):
        for _ in range(i):
            p = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)
        sem = sem + F.interpolate(p, size=sem.shape[2:], mode="bilinear", align_corners=False)
    sem = F.interpolate(sem, size=(70, 90), mode="bilinear", align_corners=False)
    main = hand_cross_entropy(out.logits, target)
    semantic = hand_cross_entropy(sem, target)
    torch.testing.assert_close(losses["loss_main"].double(), main, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_semantic"].double(), semantic, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss"].double(), main + 0.4 * semantic, rtol=1e-5, atol=1e-6)
    losses["loss"].backward()
    assert model.backbone.layers[0].semantic_layer.class_injection[0].mlp_cls_q.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    model = semask.SeMaskSwin("micro", num_classes=4, head_channels=16).eval()
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))
    out = model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="target"):
        model.loss(out, torch.zeros(1, 1, 32, 32, dtype=torch.long))


def test_drop_path_is_linear_over_blocks():
    model = semask.SeMaskSwin("tiny", num_classes=4, drop_path_rate=0.3)
    rates = [blk.drop_path.p for layer in model.backbone.layers for blk in layer.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 12))


def test_drop_path_keeps_or_drops_whole_samples_and_rescales():
    """x + branch * keep / (1 - p) per sample, by hand, and its gradients; x + branch in eval."""
    torch.manual_seed(0)
    drop = swin_mod.DropPath(0.5).train()
    x = torch.randn(64, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    branch = torch.randn(64, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    y = drop(x, branch)
    kept = (y - x).flatten(1).abs().sum(1) > 0  # a dropped sample's branch adds exactly 0
    assert 0 < kept.sum() < 64
    want = x + branch * kept.view(-1, 1, 1, 1) * 2.0
    torch.testing.assert_close(y, want, rtol=0, atol=1e-15)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    torch.testing.assert_close(branch.grad, kept.view(-1, 1, 1, 1).double().expand_as(branch) * 2.0)
    # bf16 branch on a fp32 residual stream (autocast): the sum is taken in fp32
    y = drop(x.detach().float(), branch.detach().bfloat16())
    assert y.dtype == torch.float32
    torch.testing.assert_close(drop.eval()(x, branch), x + branch)
    every = swin_mod.DropPath(1.0).train()  # drops every sample: x, and no gradient to branch
    x.grad = branch.grad = None
    y = every(x, branch)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(branch.grad, torch.zeros_like(branch))


def test_drop_path_keeps_drawn_in_one_go():
    """Rows of the one-go draw keep with probability 1 - p (0, 0.5, 1: by hand, 4000
    samples, 0.5 within 5 standard deviations), in the asked dtype."""
    torch.manual_seed(0)
    keeps = swin_mod.DropPathKeeps().draw((0.0, 0.5, 1.0), 4000, torch.device("cpu"), torch.bfloat16)
    assert keeps.shape == (3, 4000) and keeps.dtype == torch.bfloat16
    assert set(keeps.unique().tolist()) == {0.0, 1.0}
    assert keeps[0].eq(1).all() and keeps[2].eq(0).all()
    assert abs(keeps[1].float().mean().item() - 0.5) < 5 * 0.5 / 4000 ** 0.5
    x, branch = torch.randn(2, 3, 4), torch.randn(2, 3, 4)  # a given mask, scaled by hand
    y = swin_mod.DropPath(0.75).train()(x, branch, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(y, x + branch * torch.tensor([4.0, 0.0]).view(2, 1, 1))


def test_backbone_hands_each_residual_its_keep_row(monkeypatch):
    """The backbone draws once per forward and each block's two residuals (attention, MLP)
    get consecutive rows, stage after stage; in eval nothing is drawn."""
    model = semask.SeMaskSwin("micro", num_classes=5, drop_path_rate=0.3)
    backbone = model.backbone
    n = 2 * sum(len(layer.blocks) for layer in backbone.layers)
    draws, seen = [], []
    marked = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 2)  # row r holds r

    def draw(rates, batch, device, dtype):
        draws.append(rates)
        return marked.to(dtype)

    def record(self, x, branch, keep=None):
        seen.append((self, None if keep is None else keep.tolist()))
        return x + branch

    monkeypatch.setattr(backbone.drop_path_keeps, "draw", draw)
    monkeypatch.setattr(swin_mod.DropPath, "forward", record)
    backbone.train()(torch.randn(2, 3, 64, 64))
    blocks = [blk for layer in backbone.layers for blk in layer.blocks]
    assert draws == [tuple(blk.drop_path.p for blk in blocks for _ in range(2))]
    assert [m for m, _ in seen] == [blk.drop_path for blk in blocks for _ in range(2)]
    assert [k for _, k in seen] == [[float(r)] * 2 for r in range(n)]
    seen.clear()
    backbone.eval()(torch.randn(2, 3, 64, 64))
    assert len(draws) == 1 and all(k is None for _, k in seen)


def test_drop_path_masks_keep_low_precision_streams_low():
    """Under autocast the masks are in the autocast dtype: a stage whose residual stream is
    bf16 (after a merge's Linear) stays bf16 in training, as in eval, while the first stage's
    fp32 stream (CUDA autocast's LayerNorm after the patch embedding; emulated here on the
    CPU) stays fp32."""
    model = semask.SeMaskSwin("micro", num_classes=5, drop_path_rate=0.3)
    embed = model.backbone.patch_embed.forward
    model.backbone.patch_embed.forward = lambda images: embed(images).float()
    dtypes = []
    for layer in model.backbone.layers:
        layer.blocks[-1].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    for train in (True, False):
        model.train(train)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(2, 3, 64, 64))
    n = len(model.backbone.layers)
    assert dtypes[:n] == dtypes[n:] == [torch.float32] + [torch.bfloat16] * (n - 1)


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.5])
def test_grad_checkpointing_gives_same_gradients(drop_path_rate):
    """Same gradients with stages recomputed, also with DropPath drawing masks."""
    torch.manual_seed(0)
    a = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, drop_path_rate=drop_path_rate)
    b = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, drop_path_rate=drop_path_rate)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Dropout, torch.nn.Dropout2d)):
                mod.p = 0.0
    b.backbone.set_grad_checkpointing((0, 1, 2, 3))
    x, t = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    for m in (a, b):
        torch.manual_seed(1)
        m.loss(m(x), t)["loss"].backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_patch_merging_order():
    pm = swin_mod.PatchMerging(1)
    x = torch.arange(16.).view(1, 4, 4, 1)
    with torch.no_grad():
        pm.norm.weight.fill_(1), pm.norm.bias.zero_()
    captured = {}
    pm.norm.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    pm(x)
    # concat order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]
    assert captured["x"][0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]


@pytest.mark.parametrize("H, W", [(4, 6), (5, 7)])
def test_patch_merging_equals_official_strided_concat(H, W):
    """The merged input of norm equals the official construction (zero-pad odd sizes, cat
    of x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) at every position and
    channel; gradients flow back to the same places."""
    pm = swin_mod.PatchMerging(3).double()
    x = torch.randn(2, H, W, 3, dtype=torch.float64, requires_grad=True)
    captured = {}
    pm.norm.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    pm(x)
    xp = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    want = torch.cat([xp[:, 0::2, 0::2], xp[:, 1::2, 0::2], xp[:, 0::2, 1::2], xp[:, 1::2, 1::2]], -1)
    assert torch.equal(captured["x"], want)
    g = torch.randn_like(want)
    got_grad, = torch.autograd.grad(captured["x"], x, g)
    want_grad, = torch.autograd.grad(want, x, g)
    assert torch.equal(got_grad, want_grad)


@pytest.mark.parametrize("variant,window", [("tiny", 7), ("base", 12)])
def test_blocks_and_semantic_layers_as_the_spec(variant, window):
    """SEMASK_SPEC: W-MSA and SW-MSA alternate, the odd blocks shifted by window // 2 (the
    fused-against-reference comparisons share any mistake here); every semantic layer starts
    with gamma = 0 and drops its mlp_res output with p = 0.1 in training."""
    model = semask.SeMaskSwin(variant, num_classes=150)
    depths = {"tiny": (2, 2, 6, 2), "base": (2, 2, 18, 2)}[variant]
    for layer, depth in zip(model.backbone.layers, depths):
        assert [blk.attn.shift for blk in layer.blocks] == [0, window // 2] * (depth // 2)
        assert all(blk.attn.window == window for blk in layer.blocks)
        injection = layer.semantic_layer.class_injection[0]
        assert torch.equal(injection.gamma, torch.zeros(1))
        assert isinstance(injection.proj_drop, torch.nn.Dropout) and injection.proj_drop.p == 0.1


def test_fresh_semantic_layer_passes_its_normed_input_on():
    """gamma = 0 at init: the stage output is LN(x) exactly (the residual is on LN(x),
    not on x), whatever the attention computes."""
    torch.manual_seed(0)
    layer = semask.SeMaskSwin("micro", num_classes=5).backbone.layers[0].semantic_layer.eval()
    x = torch.randn(1, 14, 14, layer.norm1.normalized_shape[0])
    out = layer(x)[0]
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(
        x, layer.norm1.normalized_shape, layer.norm1.weight, layer.norm1.bias, layer.norm1.eps))


def test_uint8_images_are_refused_with_the_normalisation_to_apply():
    """The message's recipe is runnable: the names it gives exist, and applying it gives a
    float input the model takes."""
    import semask.data
    model = semask.SeMaskSwin("micro", num_classes=4, head_channels=8).eval()
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"\(x - semask.data.IMAGENET_MEAN\) / semask.data.IMAGENET_STD"):
        model(image)
    mean, std = (torch.tensor(v)[:, None, None] for v in (semask.data.IMAGENET_MEAN, semask.data.IMAGENET_STD))
    assert model((image - mean) / std).decode_logits.shape == (1, 4, 8, 8)


def test_torch_export_returns_the_model_output():
    """torch.export of the model (SegOutput registered as a pytree): the exported program
    gives the eager model's output, at the traced size."""
    model = semask.SeMaskSwin("micro", num_classes=4, head_channels=8).eval()
    x = torch.randn(1, 3, 64, 96)
    out = torch.export.export(model, (x,)).module()(x)
    want = model(x)
    assert out.size == want.size == (64, 96)
    torch.testing.assert_close(out.decode_logits, want.decode_logits)
    assert all(torch.allclose(a, b) for a, b in zip(out.semantic_logits, want.semantic_logits))


def test_forward_features_and_grad_checkpointing_on_the_model():
    """forward_features: the backbone's 4 normed maps, at ceil(H / 4), then halved rounding
    up (odd maps are padded before each merge); set_grad_checkpointing reaches the stages."""
    model = semask.SeMaskSwin("micro", num_classes=4, head_channels=8).eval()
    x = torch.randn(2, 3, 33, 45)
    feats = model.forward_features(x)
    sizes, h, w = [], math.ceil(33 / 4), math.ceil(45 / 4)
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert [tuple(f.shape[2:]) for f in feats] == sizes
    assert [f.shape[1] for f in feats] == list(model.backbone.channels)
    for a, b in zip(feats, model.backbone(x).features):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match="images must be a float tensor"):
        model.forward_features(x.to(torch.uint8))
    model.set_grad_checkpointing((1, 3))
    assert [layer.grad_checkpointing for layer in model.backbone.layers] == [False, True, False, True]
    model.set_grad_checkpointing(False)
    assert not any(layer.grad_checkpointing for layer in model.backbone.layers)


def test_compiled_patch_embedding_recompiles_for_new_sizes():
    """torch.compile's default recompiles with dynamic sizes at a second input size; the
    patch embedding's padding then flows into the resize back to the image size (as in
    the model). Inductor's float pass of torch 2.14 failed on a Python modulo there."""
    torch._dynamo.reset()
    embed = swin_mod.PatchEmbed(8).eval()

    def embed_and_resize(x):
        y = embed(x).permute(0, 3, 1, 2)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    compiled = torch.compile(embed_and_resize)
    with torch.no_grad():
        for size in [(64, 96), (70, 50), (45, 33)]:
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(compiled(x), embed_and_resize(x), rtol=1e-5, atol=1e-5)


def test_create_model_takes_the_values_its_name_fixes():
    """Only overriding what the name fixes is refused: giving the same variant and
    semantic flag builds the named model."""
    with torch.device("meta"):
        model = semask.create_model("semask_swin_tiny_fpn", variant="tiny", semantic=True, num_classes=150)
        plain = semask.create_model("swin_tiny_fpn", variant="tiny", semantic=False, num_classes=150)
    assert model.backbone.layers[0].semantic_layer is not None and model.backbone.channels[0] == 96
    assert plain.backbone.layers[0].semantic_layer is None


def test_empty_batch_is_refused_by_forward_and_forward_features():
    model = semask.SeMaskSwin("micro", num_classes=4, head_channels=8).eval()
    for call in (model, model.forward_features):
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\] with B >= 1, got \(0, 3, 64, 64\)"):
            call(torch.randn(0, 3, 64, 64))
