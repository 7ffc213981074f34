"""--cuda-graphs: the training forward, losses and backward replayed as CUDA graphs, and
evaluation / inference forwards (GraphedInference).

CPU: the settings that cannot capture are refused before anything is written; the capture
plumbing runs on stand-ins. GPU (marker ``gpu``): replays give the eager step's losses and
gradients on new inputs and draw its dropout masks, short runs (one resumed) train like the
eager one, and replayed eval forwards give the eager logits.
"""
import contextlib
import inspect

import pytest
import torch

import semask
from semask.ops import layer_norm
from semask.train import cuda_graphs as cg
from semask.train.cuda_graphs import graph_support_errors, graphed_loss_step, pinned_batches_allowed
from semask.train.plot import read_metrics
from semask.train.trainer import train


def test_unsupported_settings_are_named():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graph_support_errors(cuda, False, False, False, 1) == []
    assert len(graph_support_errors(cuda, True, True, True, 2)) == 4
    why = " ".join(graph_support_errors(cpu, False, False, False, 1))
    assert "CUDA device" in why


def test_batches_are_pinned_under_graphs_only_with_a_thread_local_capture(monkeypatch):
    assert pinned_batches_allowed(False)
    monkeypatch.setattr(cg, "THREAD_LOCAL_CAPTURE", {})
    assert not pinned_batches_allowed(True) and pinned_batches_allowed(False)
    monkeypatch.setattr(cg, "THREAD_LOCAL_CAPTURE", {"capture_error_mode": "thread_local"})
    assert pinned_batches_allowed(True)


def test_refused_on_cpu_before_anything_is_written(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="--cuda-graphs: CUDA graphs need a CUDA device"):
        train(tiny_config(tmp_path / "run", cuda_graphs=True, device="cpu"))
    assert not (tmp_path / "run").exists()


def test_capture_leaves_inputs_statistics_and_rng_as_they_were(monkeypatch):
    """CPU, capture replaced by a stand-in that does what warm-up and capture do to the
    state around them (runs the step: BatchNorm statistics move, dropout and drop path draw
    from the RNG; writes the static inputs as replays do): the caller's tensors, the
    statistics and the RNG state are as before, and the step runs on the stand-in, inside
    layer_norm.graph_capture."""
    calls = []

    def capture(module, sample_args, allow_unused_input, **kwargs):
        assert layer_norm._captures == 1  # fused models' LayerNorms take the Triton kernels
        # thread-local where torch has it: a pinning loader thread's CUDA calls would fail a
        # global-mode capture
        assert kwargs == cg.THREAD_LOCAL_CAPTURE
        if "capture_error_mode" in inspect.signature(real_capture).parameters:
            assert kwargs == {"capture_error_mode": "thread_local"}
        module(*sample_args)
        sample_args[0].add_(1.0)  # a replay copies new inputs into the static ones
        calls.append(sample_args)
        return module

    real_capture = torch.cuda.make_graphed_callables
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, drop_path_rate=0.3).train()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    sample = images.clone()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()
    step = graphed_loss_step(model, images, labels, contextlib.nullcontext)
    assert torch.equal(images, sample) and calls[0][0] is not images
    assert layer_norm._captures == 0
    assert torch.equal(torch.get_rng_state(), rng)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    torch.manual_seed(3)
    got = step(images, labels)
    torch.manual_seed(3)
    want = model.loss(model(images), labels)
    assert got["loss"].item() == want["loss"].item()
    with pytest.raises(ValueError, match="captured for images"):
        step(images[:1], labels[:1])
    # a replay's backward hands its static gradient buffers to .grad: a step before the
    # gradients are set to None would double them, so it raises
    got["loss"].backward()
    with pytest.raises(RuntimeError, match="zero_grad"):
        step(images, labels)
    model.zero_grad(set_to_none=True)
    step(images, labels)


def test_failed_capture_leaves_the_statistics_as_they_were(monkeypatch):
    """The warm-up runs move the BatchNorm statistics; a capture that fails afterwards
    still puts them back."""
    def capture(module, sample_args, allow_unused_input, **kwargs):
        module(*sample_args)
        raise RuntimeError("capture failed")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16).train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    with pytest.raises(RuntimeError, match="capture failed"):
        graphed_loss_step(model, images, labels, contextlib.nullcontext)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


def _deterministic_model(fused, ohem_min_kept=None):
    """The fused model with its LayerNorms on the Triton kernels in eager steps too
    (fused_norm=True): by default (fused_norm="graphs") the eager steps run PyTorch's
    LayerNorm and the replays the kernels, whose last bits differ, and a gradient summed
    with cancellation (a zero-initialised gamma's) then differs by several percent."""
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, drop_path_rate=0.0,
                              fused=fused, fused_norm=True if fused else None,
                              ohem_min_kept=ohem_min_kept).cuda().train()
    for m in model.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("fused, ohem", [(False, None), (True, None), (True, 1000)])
def test_gpu_replays_equal_eager_steps(fused, ohem):
    """Same weights, no dropout: each replay on new images gives the eager step's losses and
    parameter gradients (bf16 autocast without its cache), also after the eager model's
    AdamW steps are copied into the graphed model's parameters in place (as its optimizer
    would write them); capture leaves the BatchNorm statistics and the sample tensors as
    they were, and replays update the statistics as eager steps do. ``ohem``: the main loss
    with hard pixel mining (its top-k captures)."""
    graph_model, eager_model = _deterministic_model(fused, ohem), _deterministic_model(fused, ohem)
    opt = torch.optim.AdamW(eager_model.parameters(), lr=1e-3)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)

    g = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(2, 3, 64, 64, device="cuda", generator=g),
                torch.randint(0, 5, (2, 64, 64), device="cuda", generator=g)) for _ in range(3)]
    sample = [t.clone() for t in batches[0]]
    buffers = {n: b.clone() for n, b in graph_model.named_buffers()}
    step = graphed_loss_step(graph_model, *batches[0], autocast)
    for n, b in graph_model.named_buffers():
        torch.testing.assert_close(b, buffers[n], rtol=0, atol=0, msg=n)
    for images, labels in batches[1:] + batches[:1]:
        got = step(images, labels)
        got["loss"].backward()
        with autocast():
            want = eager_model.loss(eager_model(images), labels)
        want["loss"].backward()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-4, msg=key)
        for (n, p), q in zip(graph_model.named_parameters(), eager_model.parameters()):
            if q.grad is not None:
                scale = q.grad.abs().max().item() + 1e-12
                assert (p.grad - q.grad).abs().max().item() <= 2e-2 * scale, n
        opt.step()
        with torch.no_grad():
            for p, q in zip(graph_model.parameters(), eager_model.parameters()):
                p.copy_(q)
        for m in (graph_model, eager_model):
            m.zero_grad(set_to_none=True)
    for t, t0 in zip(batches[0], sample):
        assert torch.equal(t, t0)
    moved = 0
    for (n, b), c in zip(graph_model.named_buffers(), eager_model.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-2, atol=1e-3, msg=n)
        moved += not torch.equal(b, buffers[n])
    assert moved > 0  # the replays did update the running statistics


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True])
def test_gpu_replays_draw_the_eager_masks(fused):
    """Capture leaves the CUDA RNG state as it found it, and a replay from a given RNG state
    draws the dropout and drop-path masks an eager step from that state draws (same losses):
    first from the state before the capture (the trainer's case), then from seeds."""
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, drop_path_rate=0.3,
                              fused=fused).cuda().train()
    images = torch.randn(2, 3, 64, 64, device="cuda")
    labels = torch.randint(0, 5, (2, 64, 64), device="cuda")
    state = torch.cuda.get_rng_state()
    step = graphed_loss_step(model, images, labels, contextlib.nullcontext)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    got = step(images, labels)["loss"].item()
    torch.cuda.set_rng_state(state)
    assert got == pytest.approx(model.loss(model(images), labels)["loss"].item(), rel=1e-4)
    losses = []
    for seed in (3, 4, 3):
        torch.cuda.manual_seed(seed)
        got = {k: v.clone() for k, v in step(images, labels).items()}
        torch.cuda.manual_seed(seed)
        want = model.loss(model(images), labels)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
        losses.append(got["loss"].item())
    assert losses[0] == losses[2] != losses[1]  # the masks depend on the state


def _losses(out_dir):
    return [r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_gpu_training_run_with_cuda_graphs(tmp_path, tiny_config, amp):
    """With dropout and drop path on, a run with graphs gives the eager run's losses (the
    capture puts the RNG state back, so replays draw the eager run's masks), and so does a
    run with graphs stopped after two iterations and resumed (captured again on resuming).
    fp16: the GradScaler's scaled loss enters the graphed backward; an evaluation at
    iteration 2 runs between replays. The graphed runs load with worker processes, whose
    batches a thread pins (CUDA calls) while the step is captured."""
    kw = dict(iters=4, device="cuda", amp=amp, eval_interval=2)
    train(tiny_config(tmp_path / "eager", **kw))
    kw.update(cuda_graphs=True, num_workers=2)
    train(tiny_config(tmp_path / "graphs", **kw))
    train(tiny_config(tmp_path / "split", **kw), stop_at=2)
    train(tiny_config(tmp_path / "split", **kw), resume=str(tmp_path / "split"))
    eager, graphs, split = (_losses(tmp_path / d) for d in ("eager", "graphs", "split"))
    assert len(graphs) == len(split) == 4
    assert graphs == pytest.approx(eager, rel=5e-3)
    assert split == pytest.approx(graphs, rel=5e-3)


def _stand_in_capture(captured):
    """A CPU stand-in for cuda_graphs._capture: the forward runs once at capture, and each
    replay recomputes it from the static input into the static output, as a graph replay
    rewrites it."""
    def capture(forward, x, warmup=2):
        static_in = x.clone()
        static_out = forward(static_in)
        captured.append(tuple(x.shape))
        return (lambda: static_out.copy_(forward(static_in))), static_in, static_out
    return capture


def test_graphed_inference_captures_repeated_sizes_and_replays(monkeypatch):
    """CPU, capture by the stand-in: a size runs eagerly the first two times, is captured
    the third and replayed after; every output equals the eager model's logits and survives
    later calls (no aliasing of the static output); once max_graphs sizes are captured,
    others run eagerly however often they come; grad mode, training mode and another
    autocast state are other cases."""
    from semask.train import cuda_graphs as cg

    captured = []
    monkeypatch.setattr(cg, "_capture", _stand_in_capture(captured))
    monkeypatch.setattr(cg, "_graphable", lambda x: True)
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16).eval()
    runner = cg.GraphedInference(model, max_graphs=2)
    g = torch.Generator().manual_seed(1)
    sizes = ((64, 64), (64, 96), (96, 64))
    xs = {s: [torch.randn(1, 3, *s, generator=g) for _ in range(4)] for s in sizes}
    with torch.no_grad():
        want = {s: [model(x).logits for x in v] for s, v in xs.items()}
        got = {s: [] for s in sizes}
        for i in range(4):
            for s in sizes:
                got[s].append(runner(xs[s][i]))
            assert runner.captures == (0 if i < 2 else 2)
    assert captured == [(1, 3, 64, 64), (1, 3, 64, 96)]  # the third size stays eager
    for s in sizes:
        for out, ref in zip(got[s], want[s], strict=True):
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out = runner(xs[(96, 64)][0])  # grad mode: eager
    assert out.requires_grad
    runner = cg.GraphedInference(model, capture_on=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        runner(xs[(64, 64)][0])
        runner(xs[(64, 64)][1])  # the same signature: replayed
    with torch.no_grad():
        runner(xs[(64, 64)][0])  # without autocast: another signature
    assert runner.captures == 2
    model.train()
    with torch.no_grad():
        runner(xs[(64, 96)][0])
    assert runner.captures == 2


def test_eval_and_infer_commands_refuse_graphs_on_cpu(capsys):
    """Refused by name before the checkpoint is even looked for."""
    from semask.train.cli import eval_main, infer_main

    for main, extra in ((eval_main, []), (infer_main, ["image.png"])):
        with pytest.raises(SystemExit):
            main(["no/such/run", *extra, "--cuda-graphs", "--device", "cpu"])
        assert "--cuda-graphs needs a CUDA device, got cpu" in capsys.readouterr().err


def test_graphed_evaluation_needs_cuda():
    from semask.train.evaluate import evaluate

    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        evaluate(torch.nn.Identity(), [], 3, "cpu", cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, "triton"])
@pytest.mark.parametrize("amp", [False, True])
def test_gpu_graphed_inference_equals_eager(fused, amp):
    """Replays of a captured eval forward give the eager forward's logits on new inputs,
    fp32 and under bf16 autocast, reference and fused models."""
    from semask.train.cuda_graphs import GraphedInference

    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=16, fused=fused).cuda().eval()
    runner = GraphedInference(model)
    xs = [torch.randn(1, 3, 64, 96, device="cuda") for _ in range(6)]  # captured at the third
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        got = [runner(x).float() for x in xs]
        want = [model(x).logits.float() for x in xs]
    assert runner.captures == 1
    tol = 2e-2 if amp else 1e-4
    for out, ref in zip(got, want):
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol * ref.abs().max().item())
