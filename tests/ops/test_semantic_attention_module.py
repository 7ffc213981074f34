"""The SeMask class-injection module: fused backends see q and k padded to aligned rows."""
import importlib
import types

import pytest
import torch

sem_op = importlib.import_module("semask.ops.semantic_attention")


def test_class_padding_hand_computed():
    assert [sem_op.class_padding(k) for k in (150, 19, 171, 160, 16, 1)] == [10, 13, 5, 0, 0, 15]


def test_linear_padded_appends_zero_features():
    layer = torch.nn.Linear(7, 5)
    x = torch.randn(2, 3, 7)
    out = sem_op.linear_padded(layer, x, 3)
    assert out.shape == (2, 3, 8)
    # a GEMM of another output width may round differently (BLAS kernels): a few ulp
    torch.testing.assert_close(out[..., :5], layer(x), rtol=1e-6, atol=1e-6)
    assert (out[..., 5:] == 0).all()
    layer.bias = None
    assert (sem_op.linear_padded(layer, x, 3)[..., 5:] == 0).all()


def test_only_the_triton_backends_pad(monkeypatch):
    """triton pads, and auto on CUDA tensors (where it runs Triton); auto on the CPU (the
    reference), torch and cuda do not, nor pad_classes=False."""
    on_cuda, on_cpu = types.SimpleNamespace(is_cuda=True), torch.zeros(1)
    pads = {(b, y is on_cuda): sem_op.SemanticAttention(8, 150, 7, backend=b).class_pad(y)
            for b in ("torch", "auto", "triton", "cuda") for y in (on_cuda, on_cpu)}
    assert pads == {("torch", True): 0, ("torch", False): 0, ("auto", True): 10,
                    ("auto", False): 0, ("triton", True): 10, ("triton", False): 10,
                    ("cuda", True): 0, ("cuda", False): 0}
    monkeypatch.setattr(sem_op.SemanticAttention, "pad_classes", False)
    assert sem_op.SemanticAttention(8, 150, 7, backend="triton").class_pad(on_cpu) == 0
    monkeypatch.setattr(sem_op.SemanticAttention, "pad_classes", True)
    # Triton does not load: auto runs the CUDA extension on CUDA tensors, unpadded
    monkeypatch.setattr(sem_op._backend, "get_provider", lambda name: None)
    assert sem_op.SemanticAttention(8, 150, 7, backend="auto").class_pad(on_cuda) == 0


@pytest.mark.parametrize("K,window", [(19, 7), (150, 12), (150, 0)])
def test_fused_module_pads_classes_and_equals_the_reference(monkeypatch, K, window):
    """The Triton module (interpreter) against the reference module with the same weights:
    the op receives q and k of K + class_padding(K) classes, the module returns the same
    output, a prior of K classes, and the same gradients of every parameter and the input."""
    torch.manual_seed(K + window)
    ref = sem_op.SemanticAttention(24, K, window, proj_drop=0.0, backend="torch")
    fused = sem_op.SemanticAttention(24, K, window, proj_drop=0.0, backend="triton")
    fused.load_state_dict(ref.state_dict())
    for m in (ref, fused):
        torch.nn.init.constant_(m.gamma, 0.5)
    seen = []
    op = sem_op.semantic_attention
    monkeypatch.setattr(sem_op, "semantic_attention",
                        lambda q, k, *a: seen.append((q.shape[-1], k.shape[-1])) or op(q, k, *a))
    y = torch.randn(1, 13, 11, 24)
    results = []
    for m in (ref, fused):
        x = y.clone().requires_grad_()
        out, prior = m(x)
        (out * torch.linspace(-1, 1, 24)).sum().backward(retain_graph=True)
        (prior.sin()).sum().backward()
        results.append((out, prior, x.grad, {n: p.grad for n, p in m.named_parameters()}))
    padded = K + sem_op.class_padding(K)
    assert seen == [(K, K), (padded, padded)]
    (out_r, prior_r, dx_r, grads_r), (out_f, prior_f, dx_f, grads_f) = results
    assert prior_f.shape == prior_r.shape == (1, 13, 11, K)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior_f, prior_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx_f, dx_r, rtol=1e-4, atol=1e-5)
    for name, g in grads_r.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-4, atol=1e-5, msg=name)
