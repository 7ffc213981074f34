"""The five providers of every case, as callables the runner times.

reference  eager PyTorch (``semask.ops.reference``; models with ``fused=False``)
sdpa       the same roll / pad / partition, with the attention call done by
           ``F.scaled_dot_product_attention`` (bias + shift mask as ``attn_mask``); models:
           the reference model with its attention calls swapped for these
compile    ``torch.compile`` of the reference function / model (training steps: forward
           and loss compiled as one function)
triton     ``backend="triton"`` (models: ``fused="triton"``)
triton-compile  ``torch.compile`` of the ``fused="triton"`` model (model cases only; the
           fused custom ops trace into the graph; the fused loss kernel runs eagerly)
cuda       ``backend="cuda"``   (models: ``fused="cuda"``)

``prepare(case, provider, ...)`` returns a :class:`Prepared` step (one forward, or one
forward + backward / training step) or raises :class:`Skip` with the reason.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import semask
from semask.models.loss import fused_loss_reasons, upsampled_cross_entropy
from semask.ops import backend as _backend
from semask.ops.reference import (relative_position_bias, semantic_attention_reference,
                                  shift_attn_mask, window_attention_reference, window_partition,
                                  window_reverse)
from semask.ops.layer_norm import fused_layer_norm_reasons, layer_norm
from semask.ops.upsample import fused_upsample_reasons, upsample2x
from semask.train.optim import build_optimizer

from .cases import NO_MATMUL, Case

# the op modules (``semask.ops`` re-exports functions under the same names)
_win_mod = importlib.import_module("semask.ops.window_attention")
_sem_mod = importlib.import_module("semask.ops.semantic_attention")

PROVIDERS = ("reference", "sdpa", "compile", "triton", "triton-compile", "cuda")
FUSED = ("triton", "cuda")
COMPILED = ("compile", "triton-compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OP_NAME = {"window": "window_attention", "semantic": "semantic_attention"}
IGNORE = semask.models.semask.IGNORE_INDEX  # label of the loss cases' ignored pixels


class Skip(Exception):
    """The provider cannot run this case; the message is the reason."""


def join_notes(*parts: str | None) -> str:
    """The non-empty parts of a record's note, joined with '; '."""
    return "; ".join(x for x in parts if x)


@dataclass
class Prepared:
    """``step()`` is what gets timed; ``count()`` runs it once for FLOP counting (eager;
    None: count on meta tensors instead); ``error()`` checks the result (op cases); ``note``
    qualifies the numbers (e.g. the Triton interpreter); ``peak_memory=False`` leaves the
    memory figure out (a call too slow to repeat for it); ``peak_reserved``: the figure is
    the peak reserved, not allocated (CUDA-graphed steps, whose activations live in the
    graph's pool; reserved is at least allocated, so this does not favour them)."""

    step: Callable[[], object]
    count: Callable[[], object] | None
    long_step: bool = False
    note: str = ""
    max_reps: int = 100
    peak_memory: bool = True
    error: Callable[[], float] | None = None  # max relative error against the fp32 reference
    peak_reserved: bool = False


# ----------------------------------------------------------------------------- SDPA ops
@functools.lru_cache(maxsize=64)
def _shift_mask(Hp: int, Wp: int, window: int, shift: int, device: str, dtype: torch.dtype):
    return shift_attn_mask(Hp, Wp, window, shift, device).to(dtype)


def sdpa_window_attention(qkv, table, num_heads: int, window: int, shift: int, scale: float):
    """Same contract as ``window_attention_reference``; the attention is one SDPA call
    with the relative position bias (+ shift mask, computed once per shape) as attn_mask."""
    B, Hp, Wp, C3 = qkv.shape
    C = C3 // 3
    D, N = C // num_heads, window * window
    x = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2)) if shift else qkv
    q, k, v = window_partition(x, window).view(-1, N, 3, num_heads, D).permute(2, 0, 3, 1, 4)
    bias = relative_position_bias(table, window).to(qkv.dtype)  # [heads, N, N]
    if shift:
        mask = _shift_mask(Hp, Wp, window, shift, str(qkv.device), qkv.dtype)  # [nW, N, N]
        nW = mask.shape[0]
        attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nW * num_heads, N, N)
        q, k, v = (t.reshape(B, nW * num_heads, N, D) for t in (q, k, v))
    else:
        attn_mask = bias.unsqueeze(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    out = out.reshape(-1, num_heads, N, D).transpose(1, 2).reshape(-1, N, C)
    out = window_reverse(out, window, Hp, Wp)
    return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out


def sdpa_semantic_attention(q, k, v, window: int):
    """Same contract as ``semantic_attention_reference`` (no scaling: scale=1)."""
    B, Hp, Wp, _ = v.shape

    def windows(t):
        return (window_partition(t, window) if window else t.flatten(1, 2)).unsqueeze(1)

    out = F.scaled_dot_product_attention(windows(q), windows(k), windows(v), scale=1.0).squeeze(1)
    return window_reverse(out, window, Hp, Wp) if window else out.reshape(B, Hp, Wp, -1)


@contextlib.contextmanager
def sdpa_in_reference_model():
    """Make the reference path of the model modules call the SDPA ops (benchmark only)."""
    saved = (_win_mod.window_attention_reference, _sem_mod.semantic_attention_reference)
    _win_mod.window_attention_reference = sdpa_window_attention
    _sem_mod.semantic_attention_reference = sdpa_semantic_attention
    try:
        yield
    finally:
        _win_mod.window_attention_reference, _sem_mod.semantic_attention_reference = saved


# ----------------------------------------------------------------------------- availability
def fused_reasons(provider: str, op: str, tensors: list, params: dict) -> list[str]:
    """Why a fused provider cannot run (empty: it can); any failure becomes a reason."""
    try:
        reasons = _backend.common_reasons(tensors) or _backend.not_supported_reasons(
            provider, op, tensors, params)
    except Exception as exc:  # e.g. the kernel module is not written yet
        reasons = [f"{provider} backend failed to load ({type(exc).__name__}: {exc})"]
    return [str(r) for r in reasons]


def interpreter_note(provider: str, device: str) -> str:
    if provider == "triton" and device == "cpu":
        return "Triton interpreter on CPU (TRITON_INTERPRET=1): correctness path, not performance"
    return ""


# ----------------------------------------------------------------------------- op cases
def op_inputs(case: Case, device: str, dtype: torch.dtype, requires_grad: bool) -> dict:
    p, B = case.params, case.batch
    g = torch.Generator(device=device).manual_seed(0)  # drawn on the device: large inputs

    def rnd(*shape, std=1.0, mean=0.0):
        t = (torch.randn(*shape, generator=g, device=device) * std + mean).to(dtype)
        return t.requires_grad_(requires_grad)

    if case.kind == "window":
        return dict(qkv=rnd(B, p["Hp"], p["Wp"], 3 * p["C"]),
                    table=rnd((2 * p["window"] - 1) ** 2, p["heads"], std=0.02))
    if case.kind == "loss":  # a band of ignored pixels, as crops padded with 255
        target = torch.randint(0, p["K"], (B, p["H"], p["W"]), generator=g, device=device)
        target[:, : p["H"] // 16] = IGNORE
        return dict(logits=rnd(B, p["K"], p["h"], p["w"], std=2.0), target=target)
    if case.kind == "upsample":
        return dict(x=rnd(B, p["C"], p["h"], p["w"]))
    if case.kind == "norm":  # the residual stream: offset and wider than unit scale
        return dict(x=rnd(B, p["Hp"], p["Wp"], p["C"], std=3.0, mean=0.5),
                    weight=rnd(p["C"], std=0.1, mean=1.0), bias=rnd(p["C"], std=0.1))
    # semantic logits of a trained layer are larger than unit scale; 0.5 keeps the
    # unscaled softmax well-conditioned for every K
    return dict(q=rnd(B, p["Hp"], p["Wp"], p["K"], std=0.5), k=rnd(B, p["Hp"], p["Wp"], p["K"], std=0.5),
                v=rnd(B, p["Hp"], p["Wp"], p["C"]))


def fused_semantic_inputs(inputs: dict) -> dict:
    """A semantic case's q and k as ``SemanticAttention`` feeds the Triton kernels: zero
    classes appended up to a multiple of ``CLASS_MULTIPLE`` (150 -> 160; the attention is
    that of the K classes). New leaves; v as it is."""
    pad = _sem_mod.class_padding(inputs["q"].shape[-1])
    if not pad:
        return inputs
    padded = {n: F.pad(inputs[n].detach(), (0, pad)).requires_grad_(inputs[n].requires_grad)
              for n in ("q", "k")}
    return dict(inputs, **padded)


def unpadded_classes(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with ``SemanticAttention`` feeding the Triton kernels the K classes as they
    are: FLOPs are counted for the K classes on every provider, not the padded ones."""
    def call():
        with _sem_mod.classes_unpadded():
            return fn()
    return call


def op_forward(case: Case, provider: str) -> Callable:
    """f(**inputs) -> out for an op case."""
    p = case.params
    if case.kind == "window":
        args = (p["heads"], p["window"], p["shift"], (p["C"] // p["heads"]) ** -0.5)
        if provider in FUSED:
            return lambda qkv, table: _win_mod.window_attention(qkv, table, *args, backend=provider)
        fn = sdpa_window_attention if provider == "sdpa" else window_attention_reference
        return lambda qkv, table: fn(qkv, table, *args)
    if case.kind == "loss":  # the model's loss: one piece (reference) or the fused kernel
        fused = provider == "triton"
        return lambda logits, target: upsampled_cross_entropy(logits, target, IGNORE, fused=fused)
    if case.kind == "upsample":
        fused = provider == "triton"
        return lambda x: upsample2x(x, fused)
    if case.kind == "norm":
        backend = "triton" if provider == "triton" else "torch"
        return lambda x, weight, bias: layer_norm(x, weight, bias, 1e-5, backend)
    w = p["window"]
    if provider in FUSED:
        return lambda q, k, v: _sem_mod.semantic_attention(q, k, v, w, backend=provider)
    fn = sdpa_semantic_attention if provider == "sdpa" else semantic_attention_reference
    return lambda q, k, v: fn(q, k, v, w)


def _out_shape(inputs: dict) -> tuple:
    if "logits" in inputs:  # a loss: a scalar
        return ()
    if "weight" in inputs:  # a LayerNorm
        return tuple(inputs["x"].shape)
    if "x" in inputs:  # an upsampling
        B, C, h, w = inputs["x"].shape
        return (B, C, 2 * h, 2 * w)
    first = next(iter(inputs.values()))
    C = first.shape[3] // 3 if "qkv" in inputs else inputs["v"].shape[3]
    return (*first.shape[:3], C)


def _op_step(forward: Callable, inputs: dict, mode: str, dout) -> Callable:
    """fwd: out under no_grad; fwd_bwd: the input gradients for ``dout``."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return forward(**inputs)
        return step
    leaves = tuple(t for t in inputs.values() if t.requires_grad)

    def step():
        out = forward(**inputs)
        return torch.autograd.grad(out, leaves, dout)
    return step


def _rel_error(outputs, reference) -> float:
    """max |a - ref| / max |ref| over the outputs (forward output, or every gradient)."""
    if isinstance(outputs, torch.Tensor):
        outputs, reference = (outputs,), (reference,)
    return max(float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30))
               for a, b in zip(outputs, reference))


def prepare_op(case: Case, provider: str, device: str, dtype_name: str) -> Prepared:
    dtype = DTYPES[dtype_name]
    given = inputs = op_inputs(case, device, dtype, case.mode == "fwd_bwd")
    padded = interpreted = ""
    if case.kind == "semantic" and provider in _sem_mod.PADDED_BACKENDS:  # as the model pads
        inputs = fused_semantic_inputs(given)
        if inputs is not given:
            padded = (f"q, k padded to {inputs['q'].shape[-1]} classes with zeros, as the fused "
                      f"SemanticAttention does; FLOPs and bytes of {case.params['K']}")
    if case.kind in NO_MATMUL and provider in ("sdpa", "cuda"):
        raise Skip(f"no fused {case.kind} in the cuda extension" if provider == "cuda" else
                   "SDPA applies to the attention cases only")
    if provider in FUSED:
        p = case.params
        if case.kind == "loss":  # exactly the check upsampled_cross_entropy(fused=True) makes
            reasons = fused_loss_reasons(inputs["logits"], inputs["target"], IGNORE)
        elif case.kind == "upsample":  # and the one upsample2x(fused=True) makes
            reasons = fused_upsample_reasons(inputs["x"])
        elif case.kind == "norm":  # and layer_norm's
            reasons = fused_layer_norm_reasons(inputs["x"], inputs["weight"], inputs["bias"])
        else:
            params = (dict(num_heads=p["heads"], window=p["window"], shift=p["shift"])
                      if case.kind == "window" else dict(window=p["window"]))
            reasons = fused_reasons(provider, OP_NAME[case.kind], list(inputs.values()), params)
        if reasons:
            raise Skip("; ".join(reasons))
        interpreted = interpreter_note(provider, device)
    eager = op_forward(case, "reference" if provider == "compile" else provider)
    forward = eager
    if provider == "compile":
        torch._dynamo.reset()  # fresh cache per case: no recompile limit, no stale graphs
        forward = torch.compile(eager, dynamic=False)
    dout = None
    if case.mode == "fwd_bwd":
        g = torch.Generator(device=device).manual_seed(1)
        dout = torch.randn(_out_shape(inputs), generator=g, device=device).to(dtype)
    step = _op_step(forward, inputs, case.mode, dout)
    # FLOPs: compile's counted on the eager reference, the K classes (not padded) everywhere
    count = _op_step(eager, given, case.mode, dout) if inputs is not given or provider == "compile" \
        else step

    def error() -> float:
        """Against the float32 reference on the same (rounded) inputs."""
        ref_inputs = {k: v.detach().float().requires_grad_(v.requires_grad)
                      if v.is_floating_point() else v for k, v in inputs.items()}
        ref_step = _op_step(op_forward(case, "reference"), ref_inputs, case.mode,
                            None if dout is None else dout.float())
        return _rel_error(step(), ref_step())

    note = join_notes(padded, interpreted)
    if interpreted:  # the interpreter is slow and its time means nothing: one timed call,
        # FLOPs on meta tensors, no memory figure; error() still checks its numbers
        return Prepared(step, None, note=note, max_reps=1, error=error, peak_memory=False)
    return Prepared(step, count, note=note, error=error)


def meta_flops(case: Case, provider: str, dtype_name: str) -> int:
    """FLOPs of an op case counted on meta tensors (no kernel runs): fused providers go
    through their custom op's fake implementation and the formula in semask.ops.flops."""
    from .measure import count_flops

    if case.kind in NO_MATMUL:
        return 0  # upsampling (and cross-entropy): no matmul, nothing FlopCounterMode counts
    dtype = DTYPES[dtype_name]
    inputs = op_inputs_meta(case, dtype, case.mode == "fwd_bwd")
    p = case.params
    if provider in FUSED and case.kind == "window":
        args = (p["heads"], p["window"], p["shift"], (p["C"] // p["heads"]) ** -0.5)
        forward = lambda qkv, table: torch.ops.semask.window_attention_fwd(  # noqa: E731
            qkv, table, *args, *qkv.shape[1:3], provider)[0]
    elif provider in FUSED:
        forward = lambda q, k, v: torch.ops.semask.semantic_attention_fwd(q, k, v, p["window"], provider)[0]  # noqa: E731
    else:
        forward = op_forward(case, "reference" if provider == "compile" else provider)
    leaves = tuple(inputs.values())

    def step():
        out = forward(**inputs)
        if case.mode == "fwd_bwd":
            torch.autograd.grad(out, leaves, torch.empty_like(out))
    return count_flops(step)


def op_inputs_meta(case: Case, dtype, requires_grad: bool) -> dict:
    p, B = case.params, case.batch

    def empty(*shape):
        return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=requires_grad)

    if case.kind == "window":
        return dict(qkv=empty(B, p["Hp"], p["Wp"], 3 * p["C"]),
                    table=empty((2 * p["window"] - 1) ** 2, p["heads"]))
    return dict(q=empty(B, p["Hp"], p["Wp"], p["K"]), k=empty(B, p["Hp"], p["Wp"], p["K"]),
                v=empty(B, p["Hp"], p["Wp"], p["C"]))


# ----------------------------------------------------------------------------- model cases
def _model_probe(provider: str, device: str, dtype) -> list[str]:
    """Reasons a fused provider cannot run the model's two ops (tiny probe tensors)."""
    x = torch.zeros(1, 7, 7, 3 * 96, device=device, dtype=dtype)  # C = 96, 3 heads of 32
    table = torch.zeros(169, 3, device=device, dtype=dtype)
    reasons = fused_reasons(provider, "window_attention", [x, table],
                            dict(num_heads=3, window=7, shift=3))
    q = torch.zeros(1, 7, 7, 150, device=device, dtype=dtype)
    reasons += fused_reasons(provider, "semantic_attention", [q, q, x[..., :96].contiguous()],
                             dict(window=7))
    return list(dict.fromkeys(reasons))


def prepare_model(case: Case, provider: str, device: str, dtype_name: str,
                  allow_interpreter: bool = False, loss_chunk="auto",
                  fused_loss: bool = True, fused_upsample: bool = True,
                  fused_norm: bool | None = None, cuda_graphs: bool = False) -> Prepared:
    dtype = DTYPES[dtype_name]
    if cuda_graphs and (provider in COMPILED or device == "cpu"):
        raise Skip("CUDA graphs of the model: on a GPU, for the eager providers")
    if provider in COMPILED and device == "cpu":
        raise Skip("torch.compile of a whole model takes minutes on a CPU; left out there")
    fused = "triton" if provider == "triton-compile" else provider if provider in FUSED else False
    if fused:
        reasons = _model_probe(fused, device, torch.float32)
        if reasons:
            raise Skip("; ".join(reasons))
        if provider == "triton" and device == "cpu" and not allow_interpreter:
            raise Skip("whole models under the Triton interpreter are too slow to benchmark "
                       "(the op cases cover the interpreter path)")
    p = case.params
    torch.manual_seed(0)
    model = semask.create_model(p["model"], num_classes=p["K"], fused=fused).to(device)
    if loss_chunk != "auto":
        model.loss_chunk = loss_chunk
    model.fused_loss = model.fused_loss and fused_loss
    model.fused_upsample = model.fused_upsample and fused_upsample
    if model.fused_norm and fused_norm is not None:
        model.fused_norm = fused_norm
    images = torch.randn(case.batch, 3, p["img"], p["img"], device=device)
    target = torch.randint(0, p["K"], (case.batch, p["img"], p["img"]), device=device)
    use_autocast = dtype != torch.float32
    autocast = (lambda: torch.autocast(device_type=device.split(":")[0], dtype=dtype)) if use_autocast \
        else contextlib.nullcontext
    patch = sdpa_in_reference_model if provider == "sdpa" else contextlib.nullcontext
    if provider in COMPILED:
        torch._dynamo.reset()

    if case.mode == "fwd":
        model.eval()

        def make(net, patch=patch):
            def step():
                with patch(), torch.no_grad(), autocast():
                    return net(images).logits
            return step
        eager = model
        runner = torch.compile(model) if provider in COMPILED else eager
        if cuda_graphs:
            timed = _graphed_forward(model, images, autocast, patch)
    else:
        model.train()
        # the trainer's optimizer: AdamW with its no-decay groups, fused on a GPU
        opt = build_optimizer(model, lr=1e-4, weight_decay=1e-4,
                              fused=True if device.startswith("cuda") else None)

        def make(loss_of, patch=patch):
            def step():
                with patch():
                    with autocast():
                        loss = loss_of(images, target)
                    loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
            return step
        eager = training_loss(model)
        runner = compiled_training_loss(model) if provider in COMPILED else eager
        if cuda_graphs:
            with patch():  # sdpa: the reference model captured with its SDPA attention
                timed = _graphed_training_step(model, images, target, opt,
                                               dtype if use_autocast else None)
    note = "" if dtype == torch.float32 else f"autocast {dtype_name} (weights fp32)"
    if provider == "triton-compile":
        note = join_notes("torch.compile of the fused model", note)
    if case.mode == "fwd_bwd":
        loss = ("fused upsample + cross-entropy loss kernel" if model.fused_loss else
                f"chunked loss (loss_chunk={model.loss_chunk})" if model.loss_chunk else "")
        note = join_notes(note, "training step: forward, loss, backward, AdamW step "
                                "(fused on a GPU)", loss)
        if provider in COMPILED:
            note = join_notes(note, "compiled: the forward (the fused loss kernel runs eagerly)"
                              if model.fused_loss else "compiled: forward and loss as one function")
    # the Triton upsampling and LayerNorm run in eager mode only (torch.compile traces
    # PyTorch's ops instead): not named for the compiled providers
    if model.fused_upsample and provider not in COMPILED:
        note = join_notes(note, "fused x2 upsampling (head, decoder)")
    if provider not in COMPILED and (model.fused_norm is True or
                                     model.fused_norm == "graphs" and cuda_graphs):
        note = join_notes(note, "Triton LayerNorm")
    if cuda_graphs:
        what = ("forward, losses, backward (optimizer eager)" if case.mode == "fwd_bwd" else
                "the forward (semask.train.cuda_graphs.GraphedInference; each call copies "
                "the logits out)")
        note = join_notes(note, f"CUDA graphs: {what}; memory: peak reserved in a call, the "
                                "graph's pool included")
        return Prepared(timed, unpadded_classes(make(eager, contextlib.nullcontext)),
                        long_step=True, note=note, peak_reserved=True)
    # FLOPs of compile and sdpa are counted on the eager reference model (the same work;
    # FlopCounterMode cannot see into compiled code or SDPA's CPU flash kernel), of the
    # fused ones for the K classes (unpadded)
    return Prepared(make(runner), unpadded_classes(make(eager, contextlib.nullcontext)),
                    long_step=True, note=note)


def training_loss(model, forward=None) -> Callable:
    """images, target -> the model's training loss, the images run through ``forward``
    (default: the model itself)."""
    forward = model if forward is None else forward

    def loss_of(images, target):
        return model.loss(forward(images), target)["loss"]
    return loss_of


def compiled_training_loss(model) -> Callable:
    """:func:`training_loss` under ``torch.compile``: forward and loss compiled as one
    function, as the eager reference runs them; a model that computes its loss with the
    fused Triton kernel (eager only: compiled, the loss would be PyTorch's one-piece loss)
    gets its forward compiled and keeps that kernel."""
    if model.fused_loss:
        return training_loss(model, torch.compile(model))
    return torch.compile(training_loss(model))


def _graphed_forward(model, images, autocast, patch) -> Callable[[], object]:
    """The eval forward replayed from a CUDA graph (GraphedInference, which returns a copy
    of the logits), captured here, on the first call."""
    from semask.train.cuda_graphs import GraphedInference

    graphed = GraphedInference(model, capture_on=1)

    def step():
        with patch(), torch.no_grad(), autocast():
            return graphed(images)
    step()
    if graphed.captures != 1:
        raise RuntimeError(f"GraphedInference made {graphed.captures} captures, expected 1")
    return step


def _graphed_training_step(model, images, target, opt, amp_dtype) -> Callable[[], object]:
    """The training step with forward, losses and backward replayed as CUDA graphs
    (:func:`semask.train.cuda_graphs.graphed_loss_step`, captured here, before timing)."""
    from semask.train.cuda_graphs import graphed_loss_step

    def autocast():
        return (torch.autocast("cuda", dtype=amp_dtype, cache_enabled=False) if amp_dtype
                else contextlib.nullcontext())

    graphed = graphed_loss_step(model, images, target, autocast)

    def step():
        loss = graphed(images, target)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def prepare(case: Case, provider: str, device: str, dtype_name: str,
            allow_interpreter_models: bool = False, loss_chunk="auto",
            fused_loss: bool = True, fused_upsample: bool = True,
            fused_norm: bool | None = None, cuda_graphs: bool = False) -> Prepared:
    """``loss_chunk`` ("auto": the model's default, None or an int), ``fused_loss`` (False:
    never the fused loss kernel), ``fused_upsample`` (False: the head's and decoder's
    upsampling as the reference's), ``fused_norm`` (None: the model's default, the Triton
    LayerNorm in CUDA graphs only; True: in eager steps too; False: PyTorch's LayerNorm) and
    ``cuda_graphs`` (training steps and forwards replayed as CUDA graphs) apply to model cases."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
    if provider == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Skip("inputs are on the CPU and TRITON_INTERPRET is not 1 (the Triton kernels "
                   "run on CPU only in the interpreter)")
    if case.kind == "model":
        return prepare_model(case, provider, device, dtype_name, allow_interpreter_models,
                             loss_chunk, fused_loss, fused_upsample, fused_norm, cuda_graphs)
    if provider == "triton-compile":
        raise Skip("triton-compile compiles whole models; the op cases have triton and compile")
    return prepare_op(case, provider, device, dtype_name)
