"""Backend choice: fused=/SEMASK_BACKEND mapping, auto fallback, explicit errors."""
import re
import warnings

import numpy as np
import pytest
import torch

import semask
from semask.ops import backend
from semask.ops.reference import semantic_attention_reference, window_attention_reference


def test_requested_backend(monkeypatch):
    monkeypatch.delenv("SEMASK_BACKEND", raising=False)
    assert backend.requested_backend(False) == "torch"
    assert backend.requested_backend(True) == "auto"
    assert backend.requested_backend("Triton") == "triton"
    monkeypatch.setenv("SEMASK_BACKEND", "cuda")
    assert backend.requested_backend(True) == "cuda"
    assert backend.requested_backend(False) == "torch"
    monkeypatch.setenv("SEMASK_BACKEND", "magic")
    with pytest.raises(ValueError, match="magic"):
        backend.requested_backend(True)


def test_auto_on_cpu_uses_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(backend, "_warned", set())
    qkv, table = torch.randn(1, 7, 7, 3 * 32), torch.randn(169, 1)
    q, k, v = torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = semask.ops.window_attention(qkv, table, 1, 7, 3, 0.2, backend="auto")
            sem = semask.ops.semantic_attention(q, k, v, 7, backend="auto")
    assert len([w for w in caught if "PyTorch reference" in str(w.message)]) == 1
    torch.testing.assert_close(out, window_attention_reference(qkv, table, 1, 7, 3, 0.2))
    torch.testing.assert_close(sem, semantic_attention_reference(q, k, v, 7))


def test_auto_model_on_cpu_equals_reference_model(monkeypatch):
    monkeypatch.delenv("SEMASK_BACKEND", raising=False)
    ref = semask.SeMaskSwin("micro", num_classes=5, head_channels=16).eval()
    fused = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, fused=True).eval()
    fused.load_state_dict(ref.state_dict())
    assert sorted(ref.state_dict()) == sorted(fused.state_dict())
    x, target = torch.randn(1, 3, 64, 64), torch.randint(0, 5, (1, 64, 64))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out_r, out_f = ref(x), fused(x)
        assert torch.equal(out_r.logits, out_f.logits)
        # nor the Triton loss and upsampling kernels (interpreter) under auto on the CPU
        assert torch.equal(ref.loss(out_r, target)["loss"], fused.loss(out_f, target)["loss"])


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(backend.BackendUnavailable, match="TRITON_INTERPRET"):
        semask.ops.window_attention(torch.randn(1, 7, 7, 96), torch.randn(169, 1), 1, 7, 0, 0.2,
                                    backend="triton")


@pytest.mark.parametrize("name", ["Triton", True, "", None])
def test_unknown_backend_names_of_the_ops_are_named(name):
    """The functional ops take the lower-case names of backend.CHOICES (the model maps
    fused=True / "Triton" itself); anything else is refused with the choices."""
    qkv, table = torch.randn(1, 7, 7, 3 * 32), torch.randn(169, 1)
    q, k, v = torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 32)
    message = f"unknown backend {name!r}; choose one of auto, torch, triton, cuda"
    with pytest.raises(ValueError, match=re.escape(message)):
        semask.ops.window_attention(qkv, table, 1, 7, 3, 0.2, backend=name)
    with pytest.raises(ValueError, match=re.escape(message)):
        semask.ops.semantic_attention(q, k, v, 7, backend=name)


def test_explicit_cuda_on_cpu_raises():
    with pytest.raises(backend.BackendUnavailable, match="cuda"):
        semask.ops.semantic_attention(torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 5),
                                      torch.randn(1, 7, 7, 8), 7, backend="cuda")


def test_unsupported_dtype_falls_back_in_auto_and_raises_when_explicit(monkeypatch):
    monkeypatch.setattr(backend, "_warned", set())
    qkv, table = torch.randn(1, 7, 7, 96, dtype=torch.float64), torch.randn(169, 1, dtype=torch.float64)
    with pytest.warns(UserWarning, match="float64"):
        out = semask.ops.window_attention(qkv, table, 1, 7, 0, 0.2, backend="auto")
    torch.testing.assert_close(out, window_attention_reference(qkv, table, 1, 7, 0, 0.2))
    with pytest.raises(backend.BackendUnavailable, match="float64"):
        semask.ops.window_attention(qkv, table, 1, 7, 0, 0.2, backend="triton")


def test_bad_shapes_raise_clear_errors():
    table = torch.randn(169, 2)
    with pytest.raises(ValueError, match="multiple of window"):
        semask.ops.window_attention(torch.randn(1, 8, 7, 96), table, 2, 7, 0, 0.2, backend="auto")
    with pytest.raises(ValueError, match="table must be"):
        semask.ops.window_attention(torch.randn(1, 7, 7, 96), torch.randn(100, 2), 2, 7, 0, 0.2, backend="auto")
    with pytest.raises(ValueError, match="shift"):
        semask.ops.window_attention(torch.randn(1, 7, 7, 96), table, 2, 7, 7, 0.2, backend="auto")
    with pytest.raises(ValueError, match=r"size \(8, 7\) must lie within the padded map \(7, 7\)"):
        semask.ops.window_attention(torch.randn(1, 7, 7, 96), table, 2, 7, 0, 0.2, backend="auto",
                                    size=(8, 7))
    with pytest.raises(ValueError, match=r"q, k \[B, Hp, Wp, K\]"):
        semask.ops.semantic_attention(torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 4),
                                      torch.randn(1, 7, 7, 8), 7, backend="auto")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            semask.ops.window_attention(torch.randn(1, 7, 7, 96).cuda(), table, 2, 7, 0, 0.2, backend="auto")


def test_fused_choice_is_remembered_per_inputs(monkeypatch):
    """Eager calls ask the provider once per input description; another last dim, another
    TRITON_INTERPRET or another provider object asks again."""
    monkeypatch.setattr(backend, "_choices", {})
    provider = backend.get_provider("triton")
    asked = []
    real = type(provider).reasons
    monkeypatch.setattr(type(provider), "reasons",
                        lambda self, op, tensors, params: asked.append(op) or real(self, op, tensors, params))
    params = dict(num_heads=1, window=7, shift=0)
    qkv, table = torch.randn(2, 14, 7, 96), torch.randn(169, 1)
    for _ in range(3):
        assert backend.choose("triton", "window_attention", [qkv, table], params) == "triton"
    assert asked == ["window_attention"]
    backend.choose("triton", "window_attention", [torch.randn(1, 7, 7, 3 * 64), table], params)
    assert len(asked) == 2
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(backend.BackendUnavailable, match="TRITON_INTERPRET"):
        backend.choose("triton", "window_attention", [qkv, table], params)


def test_eager_fused_ops_differentiate_once(monkeypatch):
    """The eager path (a plain autograd Function): create_graph works where nothing
    differentiates through the fused backward, and differentiating its gradients raises
    (instead of dropping the second-order terms of a gradient penalty)."""
    qkv = torch.randn(1, 7, 7, 3 * 16, requires_grad=True)
    table = torch.randn(169, 1)
    q, k, v = (torch.randn(1, 7, 7, n, requires_grad=True) for n in (5, 5, 16))
    w = torch.tensor(2.0, requires_grad=True)
    for out, x in ((semask.ops.window_attention(qkv, table, 1, 7, 3, 0.25, backend="triton"), qkv),
                   (semask.ops.semantic_attention(q, k, v, 7, backend="triton"), v)):
        gx, gw = torch.autograd.grad(out.square().sum() * w, (x, w), create_graph=True)
        # gw = sum(out^2) reaches x through the op's forward only: its backward, once
        (pen,) = torch.autograd.grad(gw.square(), x, retain_graph=True)
        want = 2 * gw.detach() * gx.detach() / w.detach()
        assert (pen - want).abs().max() <= 1e-5 * want.abs().max()
        with pytest.raises(RuntimeError, match="differentiates once"):
            gx.square().sum().backward()


def test_gradient_penalty_wrt_an_upstream_weight_raises(monkeypatch):
    """torch.autograd.grad runs only the nodes on a path to what it is asked about: the
    second derivative with respect to a weight upstream of a fused op must still reach the
    node that raises (it had returned the first-order part alone: 305 instead of 723)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3 * 16)
    x = torch.randn(1, 7, 7, 8, requires_grad=True)
    ops = (lambda y: semask.ops.window_attention(y, torch.randn(169, 1) * 0.1, 1, 7, 3, 0.25, "triton"),
           lambda y: semask.ops.semantic_attention(y[..., :8].contiguous(), y[..., 8:16].contiguous(),
                                                   y[..., 16:].contiguous(), 7, "triton"))
    for op in ops:
        for differentiate in (lambda p: torch.autograd.grad(p, lin.weight),
                              lambda p: p.backward(inputs=[lin.weight])):
            (g,) = torch.autograd.grad(op(lin(x)).square().sum(), x, create_graph=True)
            with pytest.raises(RuntimeError, match="differentiates once"):
                differentiate(g.square().sum())


def test_eager_backward_under_flop_counting_goes_through_the_custom_op(monkeypatch):
    """A forward run eagerly and a backward under FlopCounterMode: the backward takes the
    custom op, so its FLOPs are counted (twice the forward's, semask/ops/flops.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from semask.ops.flops import window_attention_flops
    qkv = torch.randn(1, 7, 14, 3 * 16, requires_grad=True)
    y = semask.ops.window_attention(qkv, torch.randn(169, 1), 1, 7, 0, 0.25, backend="triton")
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert counter.get_total_flops() == 2 * window_attention_flops(qkv.shape, 7)


def test_cached_choice_tells_int_from_float_params(monkeypatch):
    monkeypatch.setattr(backend, "_choices", {})
    q, v = torch.randn(1, 7, 7, 5), torch.randn(1, 7, 7, 8)
    assert backend.choose("triton", "semantic_attention", [q, q, v], dict(window=7)) == "triton"
    with pytest.raises(backend.BackendUnavailable, match="window must be an int"):
        backend.choose("triton", "semantic_attention", [q, q, v], dict(window=7.0))


def test_eager_dispatch_defers_to_tracing_modes_and_subclasses():
    from torch.utils.flop_counter import FlopCounterMode

    class Sub(torch.Tensor):
        pass

    x = torch.zeros(2)
    assert backend.eager_dispatch([x, torch.nn.Parameter(x)])
    assert not backend.eager_dispatch([x.as_subclass(Sub)])
    with FlopCounterMode(display=False):
        assert not backend.eager_dispatch([x])
    assert not torch.vmap(lambda t: torch.tensor(backend.eager_dispatch([t])) + t)(x.view(2, 1)).all()


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_every_backend_checks_its_inputs(backend):
    """Inputs no backend can run raise the op's ValueError on every backend, each case
    breaking one rule of the docstrings. The reference path had returned a result with the
    batch doubled for a table of 2 heads at num_heads=1, and results for a shift outside
    [0, window) or a size outside the map; others it met with a bare view, matmul or
    reshape error."""
    qkv, table = torch.randn(1, 8, 8, 48), torch.randn(49, 1)
    wa = semask.ops.window_attention
    for args, kwargs, match in (
            ((qkv, table, 1, 4, 4), {}, "shift 4 must lie in"),
            ((qkv, torch.randn(49, 2), 1, 4, 2), {}, "table must be"),
            ((qkv, table, 0, 4, 2), {}, "num_heads must be at least 1"),
            ((qkv[:0], table, 1, 4, 2), {}, "empty batch"),
            ((qkv[:, :7], table, 1, 4, 2), {}, "not a multiple of window"),
            ((torch.randn(1, 8, 8, 49), table, 1, 4, 0), {}, r"qkv must be \[B, Hp, Wp, 3C\]"),
            ((torch.randn(1, 8, 8, 48), torch.randn(49, 3), 3, 4, 0), {}, "C divisible by num_heads=3"),
            ((qkv, torch.randn(1, 1), 1, 0, 0), {}, "not a multiple of window 0"),
            ((qkv[:, :, :6], table, 1, 4, 0), {}, r"padded map \(8, 6\) is not a multiple of window 4"),
            ((qkv, table, 1, 4, -1), {}, r"shift -1 must lie in \[0, window=4\)"),
            ((qkv, table, 1, 4, 2), dict(size=(0, 8)), r"size \(0, 8\) must lie within"),
            ((qkv, table, 1, 4, 2), dict(size=(8, 9)), r"size \(8, 9\) must lie within"),
            ((qkv.to("meta"), table, 1, 4, 2), {}, "all inputs must be on one device"),
            ((qkv[:, :0], table, 1, 4, 2), {}, r"empty map or channels, qkv \(1, 0, 8, 48\)"),
            ((qkv[..., :0], table, 1, 4, 2), {}, r"empty map or channels, qkv \(1, 8, 8, 0\)")):
        with pytest.raises(ValueError, match=match):
            wa(*args, 0.25, backend, **kwargs)
    q, v = torch.randn(1, 8, 8, 5), torch.randn(1, 8, 8, 16)
    sa = semask.ops.semantic_attention
    for args, match in (((q.half(), q, v, 4), "must share a dtype"),
                        ((q, q, v, -1), r"window must be at least 1 \(windowed\) or 0 \(global attention\), got -1"),
                        ((q[:, :7], q[:, :7], v[:, :7], 4), "not a multiple of window 4"),
                        ((q[:0], q[:0], v[:0], 0), "empty batch"),
                        ((q, q, v[:, :, :4], 4), r"q, k \[B, Hp, Wp, K\] and v \[B, Hp, Wp, C\]"),
                        ((q, q, v.half(), 4), "must share a dtype"),
                        ((q[:, :, :6], q[:, :, :6], v[:, :, :6], 4), r"map \(8, 6\) is not a multiple of window 4"),
                        ((q, q.to("meta"), v, 4), "all inputs must be on one device"),
                        ((q[..., :0], q[..., :0], v, 4), r"empty map, classes or channels, q \(1, 8, 8, 0\)"),
                        ((q, q, v[..., :0], 0), r"empty map, classes or channels"),
                        ((q[:, :0], q[:, :0], v[:, :0], 0), r"empty map, classes or channels")):
        with pytest.raises(ValueError, match=match):
            sa(*args, backend)


def test_semantic_windows_above_16_run_on_the_kernels():
    """Backend choice sees map sizes as MAP_DIM (a multiple of windows up to 16 only): a
    window of 17 on a 17 x 34 map was refused as 'not a multiple of window 17'."""
    q, k = torch.randn(2, 1, 17, 34, 3) * 0.5
    v = torch.randn(1, 17, 34, 8)
    got = semask.ops.semantic_attention(q, k, v, 17, backend="triton")
    want = semantic_attention_reference(q.double(), k.double(), v.double(), 17)
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-5


def test_registered_ops_take_non_contiguous_inputs():
    """torch.ops.semask.* called directly (or with a compiler's layout): inputs with other
    strides give the result of their values (a transposed qkv view was off by 2.3)."""
    heads, hd = 2, 16
    qkv, table = torch.randn(1, 7, 7, 3 * heads * hd), torch.randn(13 * 13, heads)
    view = qkv.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(view, qkv) and not view.is_contiguous()
    out, _ = torch.ops.semask.window_attention_fwd(view, table, heads, 7, 3, hd ** -0.5, 7, 7, "triton")
    want = window_attention_reference(qkv.double(), table.double(), heads, 7, 3, hd ** -0.5)
    assert (out.double() - want).abs().max().item() < 1e-5
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in torch.randn(3, 1, 7, 14, 16))
    out, _ = torch.ops.semask.semantic_attention_fwd(q, k, v, 7, "triton")
    want = semantic_attention_reference(q.double(), k.double(), v.double(), 7)
    assert (out.double() - want).abs().max().item() < 1e-5


def test_numpy_integer_arguments_and_floats_named():
    qkv, table = torch.randn(1, 7, 7, 96), torch.randn(13 * 13, 2)
    got = semask.ops.window_attention(qkv, table, np.int64(2), np.int64(7), np.int64(3), 0.25, "triton")
    want = semask.ops.window_attention(qkv, table, 2, 7, 3, 0.25, "torch")
    assert (got - want).abs().max().item() < 1e-5
    with pytest.raises(TypeError, match="window must be an int, got 7.0"):
        semask.ops.window_attention(qkv, table, 2, 7.0, 3, 0.25, "torch")
    q = torch.randn(1, 7, 7, 5)
    with pytest.raises(TypeError, match="window must be an int"):
        semask.ops.semantic_attention(q, q, q, True, "torch")


def test_reference_takes_a_table_of_another_dtype():
    """Half qkv with an fp32 table (as the fused kernels read it) on the reference path."""
    torch.manual_seed(0)
    qkv, table = torch.randn(1, 8, 8, 48), torch.randn(49, 1) * 0.1
    out = semask.ops.window_attention(qkv.bfloat16(), table, 1, 4, 2, 0.25, "torch")
    want = semask.ops.window_attention(qkv.bfloat16().float(), table, 1, 4, 2, 0.25, "torch")
    assert out.dtype == torch.bfloat16 and (out.float() - want).abs().max() < 0.05


def test_functorch_transforms_take_the_reference(monkeypatch):
    """torch.func.grad through a fused op (PyTorch cannot run the custom op's autograd under
    functorch) gives the reference's gradient; vmap too."""
    torch.manual_seed(0)
    qkv, table = torch.randn(1, 7, 7, 48), torch.randn(169, 1) * 0.1

    def f(x, backend):
        return semask.ops.window_attention(x, table, 1, 7, 3, 0.25, backend).square().sum()

    want = torch.func.grad(f)(qkv, "torch")
    torch.testing.assert_close(torch.func.grad(f)(qkv, "triton"), want)
    batched = torch.func.vmap(lambda x: f(x[None], "triton"))(qkv.expand(2, -1, -1, -1))
    torch.testing.assert_close(batched, f(qkv, "torch").expand(2))


def test_auto_prefers_triton_then_cuda_then_the_reference(monkeypatch):
    """auto takes the first fused provider that supports the inputs, in the documented
    order (Triton, then the CUDA extension), else the reference with one warning naming
    every provider's reasons; dtypes no provider supports are refused before asking any.
    CUDA inputs are described as the ops hand them over (no GPU needed: providers faked)."""
    refusals = {"triton": [], "cuda": []}
    asked = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def reasons(self, op, tensors, params):
            asked.append(self.name)
            return refusals[self.name]

    monkeypatch.setattr(backend, "get_provider", lambda name: Fake(name))
    monkeypatch.setattr(backend, "_warned", set())
    cuda = torch.device("cuda")
    infos = (((backend.MAP_DIM,) * 3 + (96,), torch.float16, cuda, True, False),
             ((169, 1), torch.float32, cuda, True, False))
    params = (("num_heads", 1), ("shift", 0), ("window", 7))
    assert backend._choose("auto", "window_attention", infos, params) == "triton"
    assert asked == ["triton"]
    refusals["triton"] = ["no triton today"]
    assert backend._choose("auto", "window_attention", infos, params) == "cuda"
    assert backend._choose("cuda", "window_attention", infos, params) == "cuda"
    refusals["cuda"] = ["no extension"]
    with pytest.warns(UserWarning, match="triton: no triton today; cuda: no extension"):
        assert backend._choose("auto", "window_attention", infos, params) == "torch"
    asked.clear()
    doubles = tuple((shape, torch.float64, dev, c, e) for shape, _, dev, c, e in infos)
    with pytest.warns(UserWarning, match="float64"):
        assert backend._choose("auto", "window_attention", doubles, params) == "torch"
    assert asked == []


@pytest.mark.parametrize("op", ["window", "semantic_windowed", "semantic_global"])
def test_fused_ops_count_the_references_flops_forward_and_backward(op):
    """FlopCounterMode over forward and backward: a fused op counts what the PyTorch
    reference's matmuls count (semask/ops/flops.py), backward included, also for global
    semantic attention (N = Hp * Wp keys)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    if op == "window":
        inputs = [torch.randn(2, 7, 14, 3 * 32, requires_grad=True), torch.randn(169, 2)]
        run = lambda b: semask.ops.window_attention(*inputs, 2, 7, 3, 0.25, backend=b)  # noqa: E731
    else:
        window = 7 if op == "semantic_windowed" else 0
        inputs = [torch.randn(1, 7, 14, n, requires_grad=True) for n in (5, 5, 16)]
        run = lambda b: semask.ops.semantic_attention(*inputs, window, backend=b)  # noqa: E731
    counts = {}
    for b in ("torch", "triton"):
        with FlopCounterMode(display=False) as counter:
            run(b).square().sum().backward()
        counts[b] = counter.get_total_flops()
    assert counts["triton"] == counts["torch"] > 0


def test_public_ops_take_non_contiguous_inputs_on_an_explicit_backend():
    """Views with other strides (slices of one projection, transposed maps) reach the fused
    kernels through the public ops as their values: an explicit request must not be refused
    for the layout (the kernels need contiguous inputs: the ops make them so)."""
    torch.manual_seed(0)
    qkv = torch.randn(1, 7, 7, 3 * 32).transpose(1, 2)
    table = torch.randn(2, 169).t()
    assert not qkv.is_contiguous() and not table.is_contiguous()
    got = semask.ops.window_attention(qkv, table, 2, 7, 3, 16 ** -0.5, backend="triton")
    want = window_attention_reference(qkv.double(), table.double(), 2, 7, 3, 16 ** -0.5)
    assert (got.double() - want).abs().max().item() < 1e-5
    x = torch.randn(1, 7, 14, 5 + 5 + 16)
    q, k, v = x[..., :5], x[..., 5:10], x[..., 10:]
    assert not q.is_contiguous()
    got = semask.ops.semantic_attention(q, k, v, 7, backend="triton")
    want = semantic_attention_reference(q.double(), k.double(), v.double(), 7)
    assert (got.double() - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_implementations_match_the_real_ops(dtype):
    """What torch.compile / FakeTensorMode see of the custom ops (their fake
    implementations) is what the kernels return: shapes (the cropped out, the lse layout)
    and dtypes (lse float32 whatever the inputs; half qkv with an fp32 table)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    qkv, table = torch.randn(2, 14, 7, 3 * 32).to(dtype), torch.randn(169, 2)
    q, k, v = (torch.randn(1, 7, 14, n).to(dtype) for n in (5, 5, 16))
    calls = []
    out, lse = torch.ops.semask.window_attention_fwd(qkv, table, 2, 7, 3, 0.25, 10, 5, "triton")
    dout = torch.randn_like(out)
    calls.append((torch.ops.semask.window_attention_fwd, (qkv, table, 2, 7, 3, 0.25, 10, 5, "triton")))
    calls.append((torch.ops.semask.window_attention_bwd, (dout, qkv, table, out, lse, 2, 7, 3, 0.25, "triton")))
    for window in (7, 0):
        sout, slse = torch.ops.semask.semantic_attention_fwd(q, k, v, window, "triton")
        calls.append((torch.ops.semask.semantic_attention_fwd, (q, k, v, window, "triton")))
        calls.append((torch.ops.semask.semantic_attention_bwd,
                      (torch.randn_like(sout), q, k, v, sout, slse, window, "triton")))
    for op, args in calls:
        real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        assert [(tuple(t.shape), t.dtype) for t in fake] == [(tuple(t.shape), t.dtype) for t in real], op


def test_empty_maps_are_refused_by_name_on_an_explicit_backend():
    """A map of no tokens stands in as MAP_DIM for backend choice; the choice must still
    see it empty and refuse by name (the kernels' launch had divided by zero)."""
    with pytest.raises((ValueError, backend.BackendUnavailable), match="empty"):
        semask.ops.window_attention(torch.randn(1, 0, 7, 96), torch.randn(169, 2), 2, 7, 3, 0.25, "triton")
    with pytest.raises((ValueError, backend.BackendUnavailable), match="empty"):
        semask.ops.semantic_attention(*torch.randn(3, 1, 7, 0, 4), 0, "triton")
