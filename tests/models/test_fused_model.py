"""A whole SeMaskSwin on the fused kernels equals the reference model (same weights)."""
import copy

import pytest
import torch

import semask
from semask.ops import upsample


def twin_models(monkeypatch, backend, variant="micro", num_classes=19, **kw):
    monkeypatch.setenv("SEMASK_BACKEND", backend)
    kw.setdefault("head_channels", 16)
    ref = semask.SeMaskSwin(variant, num_classes=num_classes, fused=False, **kw)
    fused = semask.SeMaskSwin(variant, num_classes=num_classes, fused=True, **kw)
    fused.load_state_dict(ref.state_dict())
    for m in (ref, fused):
        m.eval()  # no dropout / drop path / batch statistics: both see the same function
        for layer in m.backbone.layers:
            if layer.semantic_layer is not None:
                torch.nn.init.constant_(layer.semantic_layer.class_injection[0].gamma, 0.5)
    return ref, fused


def forward_backward(model, images, target):
    model.zero_grad()
    out = model(images)
    losses = model.loss(out, target)
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, losses, grads


@pytest.mark.parametrize("semantic_windowed,size,fused_norm",
                         [((True, True, False, False), (45, 61), True),
                          ((True,) * 4, (45, 61), True),
                          ((True, True, False, False), (64, 96), True),
                          ((True, True, False, False), (45, 61), "graphs")])
def test_fused_triton_model_equals_reference_on_cpu(monkeypatch, semantic_windowed, size,
                                                    fused_norm):
    """Triton kernels in the interpreter: padded (45x61 -> odd stage maps), shifted blocks,
    windowed and global semantic layers, upsampling chains exact (64x96: folded in the
    head and the decoder) or not, the LayerNorms on Triton (fused_norm=True) or, as in a
    default model's eager step, PyTorch's with the padding after them ("graphs"); forward,
    loss and every parameter gradient."""
    ref, fused = twin_models(monkeypatch, "triton", semantic_windowed=semantic_windowed,
                             fused_norm=fused_norm)
    assert fused.fused_upsample and not ref.fused_upsample
    images, target = torch.randn(1, 3, *size), torch.randint(0, 19, (1, *size))
    out_r, loss_r, grad_r = forward_backward(ref, images, target)
    calls = []
    kernel = upsample._Upsample2x.apply
    monkeypatch.setattr(upsample._Upsample2x, "apply", lambda x: calls.append(x.shape) or kernel(x))
    out_f, loss_f, grad_f = forward_backward(fused, images, target)
    # the Triton upsampling ran: 4 in the head and 3 in the decoder where the chains fold
    assert len(calls) == (7 if size == (64, 96) else 12)
    torch.testing.assert_close(out_f.logits, out_r.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(out_f.semantic_logits, out_r.semantic_logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_f["loss"], loss_r["loss"], rtol=1e-5, atol=1e-6)
    assert grad_f.keys() == grad_r.keys()
    for name, g in grad_r.items():
        torch.testing.assert_close(grad_f[name], g, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_model_accuracy_rule_on_gpu(monkeypatch, no_tf32, backend, dtype):
    """|fused - gold| <= 2 |torch same-dtype - gold| + atol for a SeMask-T at 512, gold being
    the reference model in float64 (fp32: the fused fp32 model against the reference fp32
    model; bf16: both under bf16 autocast)."""
    ref, fused = twin_models(monkeypatch, backend, variant="tiny", num_classes=150, head_channels=256)
    ref, fused = ref.cuda(), fused.cuda()
    images = torch.randn(2, 3, 512, 512, device="cuda")
    with torch.no_grad():
        gold = copy.deepcopy(ref).double()(images.double()).logits
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            same = ref(images).logits.double()
            got = fused(images).logits.double()
    err, err_torch = (got - gold).abs().max().item(), (same - gold).abs().max().item()
    assert err <= 2 * err_torch + 1e-5 * gold.abs().max().item(), (err, err_torch)


@pytest.mark.gpu
def test_compiled_fused_model_fullgraph_on_gpu(monkeypatch):
    ref, fused = twin_models(monkeypatch, "triton", variant="tiny", num_classes=150, head_channels=256)
    ref, fused = ref.cuda(), fused.cuda()
    compiled = torch.compile(fused, fullgraph=True)
    images = torch.randn(1, 3, 224, 224, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(compiled(images).logits, ref(images).logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_fused_model_fullgraph_on_cpu(monkeypatch, dynamic):
    """torch.compile(fullgraph=True) traces through backend choice and the custom ops'
    fake implementations, with static and dynamic sizes (aot_eager runs the Triton
    kernels in the interpreter)."""
    torch._dynamo.reset()
    ref, fused = twin_models(monkeypatch, "triton", semantic_windowed=(True, True, False, False))
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    images = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images).logits, ref(images).logits, rtol=1e-4, atol=1e-5)


def test_compiled_fused_model_trains_like_the_reference_on_cpu(monkeypatch):
    """torch.compile(fullgraph=True) of the fused model through forward, loss and backward
    (what benchmarks' triton-compile provider times; aot_eager runs the Triton kernels in
    the interpreter): loss and every parameter gradient equal the eager reference's."""
    torch._dynamo.reset()
    ref, fused = twin_models(monkeypatch, "triton", semantic_windowed=(True, True, False, False))
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    images, target = torch.randn(2, 3, 45, 61), torch.randint(0, 19, (2, 45, 61))
    _, loss_r, grad_r = forward_backward(ref, images, target)
    fused.zero_grad()
    loss_f = fused.loss(compiled(images), target)
    loss_f["loss"].backward()
    torch.testing.assert_close(loss_f["loss"], loss_r["loss"], rtol=1e-5, atol=1e-6)
    grad_f = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    assert grad_f.keys() == grad_r.keys()
    for name, g in grad_r.items():
        torch.testing.assert_close(grad_f[name], g, rtol=1e-3, atol=1e-5, msg=name)


def test_weights_cast_in_one_go_under_autocast_change_nothing(monkeypatch):
    """Under (CPU, bf16) autocast a fused model casts its Linear and Conv2d weights with one
    multi-tensor copy per direction instead of one cast each: logits, loss and every
    parameter gradient are bitwise those of autocast's own per-layer casts."""
    from semask.models import autocast_weights
    _, fused = twin_models(monkeypatch, "triton", semantic_windowed=(True, True, False, False))
    images, target = torch.randn(1, 3, 45, 61), torch.randint(0, 19, (1, 45, 61))
    calls = []
    cast = autocast_weights._CastAll.apply
    monkeypatch.setattr(autocast_weights._CastAll, "apply",
                        lambda *a: calls.append(len(a) - 1) or cast(*a))
    results = []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(type(fused), "_autocast_weights", lambda self, images: {})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(forward_backward(fused, images, target))
    n_layers = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in fused.modules())
    assert len(calls) == 1 and n_layers < calls[0] <= 2 * n_layers  # weights and biases
    (out_a, loss_a, grad_a), (out_b, loss_b, grad_b) = results
    assert out_a.logits.dtype == out_b.logits.dtype
    assert torch.equal(out_a.logits, out_b.logits) and torch.equal(loss_a["loss"], loss_b["loss"])
    assert grad_a.keys() == grad_b.keys()
    for name, g in grad_b.items():
        assert grad_a[name].dtype == g.dtype and torch.equal(grad_a[name], g), name
    monkeypatch.undo()  # the real _autocast_weights again, the spy gone
    monkeypatch.setattr(autocast_weights._CastAll, "apply",
                        lambda *a: calls.append(len(a) - 1) or cast(*a))
    with torch.no_grad():  # no autocast, or gradient checkpointing: nothing cast
        fused(images)
        fused.backbone.set_grad_checkpointing((0,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused(images)
    assert len(calls) == 1


def test_weights_cast_in_one_go_respect_frozen_replaced_and_low_precision_layers(monkeypatch):
    """Frozen layers record no graph (the features of a frozen backbone need no gradient);
    a layer replaced after a forward is the one used and trained; a model already in bf16
    has nothing to cast and runs."""
    _, fused = twin_models(monkeypatch, "triton", semantic_windowed=(True, True, False, False))
    images = torch.randn(1, 3, 45, 61)
    fused.backbone.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(images)
    assert not any(t.requires_grad for t in out.semantic_logits) and out.logits.requires_grad
    old = fused.decode_head.conv_seg
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused(images)  # one forward before the replacement
        fused.decode_head.conv_seg = torch.nn.Conv2d(old.in_channels, old.out_channels, 1)
        fused(images).logits.float().sum().backward()
    assert fused.decode_head.conv_seg.weight.grad is not None and old.weight.grad is None
    fused.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert fused(images).logits.dtype == torch.bfloat16


def test_fused_norm_switch_sets_every_backbone_layernorm():
    """fused_norm: "graphs" by default where the Triton kernels are asked for (in CUDA graphs
    only), off for the reference; switching it later sets every backbone LayerNorm."""
    from semask.ops.layer_norm import LayerNorm

    def choices(m):
        return {(n.backend, n.graphs_only) for n in m.backbone.modules() if isinstance(n, LayerNorm)}

    model = semask.SeMaskSwin("micro", num_classes=5, fused="triton", head_channels=16)
    assert model.fused_norm == "graphs" and choices(model) == {("triton", True)}
    model.fused_norm = True
    assert choices(model) == {("triton", False)}
    model.fused_norm = False
    assert choices(model) == {("torch", False)}
    assert sum(isinstance(n, LayerNorm) for n in model.backbone.modules()) > 10
    with pytest.raises(ValueError, match="fused_norm must be True, False or 'graphs'"):
        model.fused_norm = "eager"
    assert not semask.SeMaskSwin("micro", num_classes=5, fused=False, head_channels=16).fused_norm
    off = semask.SeMaskSwin("micro", num_classes=5, fused="triton", fused_norm=False, head_channels=16)
    assert {backend for backend, _ in choices(off)} == {"torch"}
