"""The chunked upsample + cross-entropy loss against the one-piece loss and by hand."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.models.loss import fused_loss_reasons, ohem_cross_entropy, upsampled_cross_entropy

IGNORE = 255


def make(B=3, K=5, h=7, w=9, H=27, W=35, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, h, w, generator=g, dtype=torch.float64).to(dtype)
    target = torch.randint(0, K, (B, H, W), generator=g)
    target[:, :3] = IGNORE  # some ignored pixels
    return logits.requires_grad_(), target


def by_hand(logits, target, avg_non_ignore):
    """-log softmax at the label, from logsumexp and gather, on the bilinear upsample."""
    up = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=False).double()
    valid = target != IGNORE
    label = torch.where(valid, target, 0).unsqueeze(1)
    nll = (up.logsumexp(1) - up.gather(1, label).squeeze(1)) * valid
    return nll.sum() / (valid.sum() if avg_non_ignore else target.numel())


@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 8])
def test_matches_hand_computed_loss_and_gradient(chunk, avg_non_ignore):
    logits, target = make()
    got = upsampled_cross_entropy(logits, target, IGNORE, avg_non_ignore, chunk)
    (grad,) = torch.autograd.grad(got, logits)
    want = by_hand(logits, target, avg_non_ignore)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_chunked_gradcheck():
    logits, target = make(B=2, K=3, h=3, w=4, H=7, W=9)
    assert torch.autograd.gradcheck(
        lambda x: upsampled_cross_entropy(x, target, IGNORE, False, 1), (logits,))


def test_bf16_chunked_within_one_piece_error():
    """bf16 logits: the chunked loss's value and gradient are as close to the float64 truth
    as the one-piece loss's (accuracy rule: error <= 2 x the one-piece error + eps)."""
    logits, target = make(dtype=torch.bfloat16)
    exact = logits.detach().double().requires_grad_()
    (g_truth,) = torch.autograd.grad(by_hand(exact, target, False), exact)
    one = upsampled_cross_entropy(logits, target)
    (g_one,) = torch.autograd.grad(one, logits)
    chunked = upsampled_cross_entropy(logits, target, chunk=1)
    (g_chunked,) = torch.autograd.grad(chunked, logits)
    assert g_chunked.dtype == torch.bfloat16
    torch.testing.assert_close(chunked, one, rtol=1e-6, atol=0)
    err_one = (g_one.double() - g_truth).abs().max().item()
    err_chunked = (g_chunked.double() - g_truth).abs().max().item()
    assert err_chunked <= 2 * err_one + 2 ** -8 * g_truth.abs().max().item(), (err_chunked, err_one)


def retained_elements(fn) -> int:
    """Elements of the tensors autograd saved while ``fn`` ran that are still alive after
    it (what the graph keeps for the backward)."""
    refs = []

    def pack(t):
        refs.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    gc.collect()
    alive = {id(t): t.numel() for t in (r() for r in refs) if t is not None}
    del out
    return sum(alive.values())


def test_chunked_loss_keeps_only_a_low_resolution_gradient():
    logits, target = make(B=4, K=6)
    full = 4 * 6 * 27 * 35  # one upsampled [B, K, H, W] map
    one = retained_elements(lambda: upsampled_cross_entropy(logits, target))
    chunked = retained_elements(lambda: upsampled_cross_entropy(logits, target, chunk=1))
    assert one >= full  # cross-entropy keeps the full-size log-softmax
    assert chunked == logits.numel()  # the gradient of the logits, nothing else


def test_bad_arguments_raise():
    logits, target = make()
    with pytest.raises(ValueError, match="chunk must be a positive"):
        upsampled_cross_entropy(logits, target, chunk=0)
    with pytest.raises(ValueError, match="target must be"):
        upsampled_cross_entropy(logits, target[0])
    with pytest.raises(ValueError, match="loss_chunk must be"):
        semask.SeMaskSwin("micro", num_classes=5, loss_chunk=-2)


def test_model_loss_chunk_default_follows_fused_and_keeps_values():
    torch.manual_seed(0)
    ref = semask.SeMaskSwin("micro", num_classes=5, drop_path_rate=0.0).double()
    assert ref.loss_chunk is None
    fused = semask.SeMaskSwin("micro", num_classes=5, fused="triton")
    assert fused.loss_chunk == semask.models.semask.DEFAULT_LOSS_CHUNK
    images = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 40, 48))
    losses, grads = [], []
    for chunk in (None, 1):
        ref.loss_chunk = chunk
        ref.zero_grad()
        torch.manual_seed(1)  # the same dropout draws in both passes
        loss = ref.loss(ref(images), target)
        loss["loss"].backward()
        losses.append(loss)
        grads.append([p.grad.clone() for p in ref.parameters() if p.grad is not None])
    for key in ("loss", "loss_main", "loss_semantic"):
        torch.testing.assert_close(losses[1][key], losses[0][key], rtol=1e-12, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)


def test_chunked_loss_without_gradient():
    logits, target = make()
    want = upsampled_cross_entropy(logits, target)
    with torch.no_grad():
        got = upsampled_cross_entropy(logits, target, chunk=2)
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(upsampled_cross_entropy(logits.detach(), target, chunk=2),
                               want.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [dict(chunk=1), dict(fused=True)])
def test_chunked_and_fused_losses_differentiate_once(kwargs):
    """A gradient penalty needs second-order terms these losses do not have:
    differentiating their gradient raises (instead of silently dropping the terms);
    create_graph alone works."""
    logits, target = make(dtype=torch.float32 if "fused" in kwargs else torch.float64)
    if "fused" in kwargs:
        assert not fused_loss_reasons(logits, target)
    loss = upsampled_cross_entropy(logits, target, **kwargs)
    (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiates once"):
        grad.square().sum().backward()
    # the second derivative with respect to a tensor upstream of the logits
    scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(upsampled_cross_entropy(logits * scale, target, **kwargs), logits,
                                  create_graph=True)
    with pytest.raises(RuntimeError, match="differentiates once"):
        torch.autograd.grad(grad.square().sum(), scale)


@pytest.mark.parametrize("kwargs", [dict(), dict(chunk=2), dict(fused=True)])
def test_all_pixels_ignored_mean_gives_zero_gradients(kwargs):
    """avg_non_ignore over no counted pixel: loss 0 and a zero gradient, as mmseg's
    sum / (count + eps) (F.cross_entropy's mean would give NaN)."""
    logits, _ = make(dtype=torch.float32)
    target = torch.full((3, 27, 35), IGNORE)
    loss = upsampled_cross_entropy(logits, target, IGNORE, avg_non_ignore=True, **kwargs)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_int32_targets_on_every_path():
    logits, target = make(dtype=torch.float32)
    want = upsampled_cross_entropy(logits, target)
    for kwargs in (dict(), dict(chunk=2), dict(fused=True)):
        got = upsampled_cross_entropy(logits, target.int(), **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_chunked_loss_compiles_fullgraph():
    """Under torch.compile the loss runs in one piece (no autograd.grad in a traced forward)."""
    logits, target = make(dtype=torch.float32)
    compiled = torch.compile(lambda x, t: upsampled_cross_entropy(x, t, chunk=2),
                             fullgraph=True, backend="aot_eager")
    got = compiled(logits, target)
    (grad,) = torch.autograd.grad(got, logits)
    want = upsampled_cross_entropy(logits, target)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)


def test_model_fused_loss_default_and_values():
    """fused_loss follows a Triton request; the model's loss through the fused kernel
    (Triton interpreter on CPU, reference ops) equals the unfused one, with gradients."""
    assert semask.SeMaskSwin("micro", num_classes=5, fused="triton").fused_loss
    assert semask.SeMaskSwin("micro", num_classes=5, fused="auto").fused_loss
    assert not semask.SeMaskSwin("micro", num_classes=5, fused="cuda").fused_loss
    assert not semask.SeMaskSwin("micro", num_classes=5).fused_loss
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, drop_path_rate=0.0, fused_loss=True)
    images = torch.randn(2, 3, 40, 48)
    target = torch.randint(0, 5, (2, 40, 48))
    target[:, :4] = IGNORE
    out = model(images)
    assert not fused_loss_reasons(out.decode_logits, target)  # the kernel does run
    results = []
    for fused_loss in (True, False):
        model.fused_loss = fused_loss
        model.zero_grad()
        loss = model.loss(out, target)
        loss["loss"].backward(retain_graph=True)
        results.append((loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (fused, fused_grads), (plain, plain_grads) = results
    for key in ("loss", "loss_main", "loss_semantic"):
        torch.testing.assert_close(fused[key], plain[key], rtol=1e-6, atol=0)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)



@pytest.mark.parametrize("kwargs", [dict(chunk=2), dict(fused=True)])
def test_functorch_grad_through_the_chunked_and_fused_loss(kwargs):
    """torch.func.grad runs the one-piece loss (the autograd Functions have no
    setup_context, which functorch needs) and gives the hand-computed gradient."""
    logits, target = make(dtype=torch.float32)
    got = torch.func.grad(lambda x: upsampled_cross_entropy(x, target, IGNORE, **kwargs))(
        logits.detach())
    (want,) = torch.autograd.grad(by_hand(logits, target, False), logits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def ohem_by_hand(logits, target, min_kept):
    """mmseg OHEMPixelSampler(thresh=None): sort the non-ignored pixel losses, weight the
    min_kept * B largest 1, then the weighted mean over all pixels."""
    up = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=False)
    pixel = F.cross_entropy(up, target, ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    order = pixel.detach()[valid].sort(descending=True).indices
    weight_valid = torch.zeros(int(valid.sum()), dtype=pixel.dtype)
    weight_valid[order[:min_kept * target.shape[0]]] = 1
    weight = torch.zeros_like(pixel)
    weight[valid] = weight_valid
    return (pixel * weight).mean()


@pytest.mark.parametrize("min_kept", [1, 37, 10 ** 6])
def test_ohem_matches_mmseg_sampler_by_hand(min_kept):
    logits, target = make()
    got = ohem_cross_entropy(logits, target, IGNORE, min_kept)
    (grad,) = torch.autograd.grad(got, logits)
    want = ohem_by_hand(logits, target, min_kept)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)
    if min_kept == 10 ** 6:  # every pixel kept: the plain loss
        torch.testing.assert_close(got, by_hand(logits, target, False), rtol=1e-12, atol=0)


def test_ohem_on_the_main_loss_only():
    """The release samples hard pixels for loss_ce only; loss_cate counts every pixel."""
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=4, drop_path_rate=0.0, head_channels=16).eval()
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    out = model(images)
    plain = model.loss(out, target)
    model.ohem_min_kept = 100
    hard = model.loss(out, target)
    want = ohem_by_hand(out.decode_logits.double(), target, 100).float()
    torch.testing.assert_close(hard["loss_main"], want, rtol=1e-5, atol=0)
    torch.testing.assert_close(hard["loss_semantic"], plain["loss_semantic"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="ohem_min_kept"):
        semask.SeMaskSwin("micro", num_classes=4, ohem_min_kept=0)


def test_ohem_compiles_fullgraph():
    """Fixed shapes: no graph break (a boolean-mask selection would have one)."""
    logits, target = make(dtype=torch.float32)
    compiled = torch.compile(lambda x, t: ohem_cross_entropy(x, t, IGNORE, 37), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(logits, target), ohem_cross_entropy(logits, target, IGNORE, 37))
