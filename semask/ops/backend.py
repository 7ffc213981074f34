"""Backend choice for the fused ops (in the manner of xformers' dispatch).

``fused=False`` always runs the plain PyTorch reference ("torch"). ``fused=True`` means
"auto", unless ``SEMASK_BACKEND=auto|torch|triton|cuda`` says otherwise; a string
picks a backend directly. "auto" takes the first fused provider that supports the
inputs and otherwise falls back to the reference with one warning; an explicitly
requested provider that cannot run raises :class:`BackendUnavailable` listing why.

A provider lives in its own module, imported only when first asked for, and exposes
``PROVIDER`` with ``reasons(op, tensors, params) -> list[str]`` (empty when it can run)
and the four launchers (same signatures for every provider)::

    window_attention_fwd(qkv, table, num_heads, window, shift, scale, height, width)
        -> (out, lse)         (out: the first height x width tokens of the map)
    window_attention_bwd(dout, qkv, table, out, lse, num_heads, window, shift, scale)
        -> (dqkv, dtable)     (dout: out's shape)
    semantic_attention_fwd(q, k, v, window) -> (out, lse)
    semantic_attention_bwd(dout, q, k, v, out, lse, window) -> (dq, dk, dv)

Layouts are documented in :mod:`semask.ops.reference`.

Under ``torch.compile`` the choice is made once per graph at trace time: :func:`choose`
hands the tensors' dtype, device, contiguity and static sizes (see :func:`_describe`) as
constants to a function marked ``assume_constant_result``, so backend choice never breaks
the graph, with static or dynamic shapes.
"""
from __future__ import annotations

import importlib
import math
import os
import warnings
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

BACKEND_ENV = "SEMASK_BACKEND"
CHOICES = ("auto", "torch", "triton", "cuda")
FUSED_PROVIDERS = ("triton", "cuda")  # in order of preference for "auto"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PROVIDER_MODULES = {
    "triton": "semask.kernels.provider",
    "cuda": "semask.ops.cuda_provider",
}
_providers: dict = {}
_warned: set = set()
_choices: dict = {}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run the given inputs."""


def requested_backend(fused: bool | str) -> str:
    """Map the ``fused=`` argument (and ``SEMASK_BACKEND``) to one of :data:`CHOICES`."""
    where = "fused="
    if not isinstance(fused, str):  # True / False, and 1 / 0
        if not fused:
            return "torch"
        fused, where = os.environ.get(BACKEND_ENV, "").strip() or "auto", f"{BACKEND_ENV}="
    choice = fused.strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{where}{fused!r}: unknown backend; choose one of {', '.join(CHOICES)}")
    return choice


def get_provider(name: str):
    """The provider object of a fused backend, or None when its module cannot load."""
    if name not in _providers:
        try:
            _providers[name] = importlib.import_module(_PROVIDER_MODULES[name]).PROVIDER
        except Exception as exc:  # an optional backend must never break import
            _providers[name] = None
            _providers[name + ":error"] = f"{type(exc).__name__}: {exc}"
    return _providers[name]


def not_supported_reasons(name: str, op: str, tensors: list[Tensor], params: dict) -> list[str]:
    """Why provider ``name`` cannot run ``op`` on these inputs (empty list: it can)."""
    provider = get_provider(name)
    if provider is None:
        return [f"{name} backend failed to load ({_providers.get(name + ':error')})"]
    return list(provider.reasons(op, tensors, params))


def int_arguments(op: str, **values) -> list[int]:
    """The values as Python ints (numpy integers included: the kernels' launchers take
    ints only); a TypeError naming the argument for anything else (a float, a bool)."""
    bad = [f"{name} must be an int, got {value!r}" for name, value in values.items()
           if isinstance(value, bool) or not hasattr(value, "__index__")]
    if bad:
        raise TypeError(f"{op}: " + "; ".join(bad))
    return [value.__index__() for value in values.values()]


def check_inputs(op: str, tensors: dict[str, Tensor]) -> None:
    """The error every backend shares: inputs on more than one device."""
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        raise ValueError(f"{op}: all inputs must be on one device, got {listing}")


def common_reasons(tensors: list[Tensor]) -> list[str]:
    """Why no fused provider can run these inputs (dtype), before asking any of them."""
    bad = sorted({str(t.dtype) for t in tensors if t.dtype not in SUPPORTED_DTYPES})
    return [f"dtype {', '.join(bad)} is not supported (float32, float16, bfloat16)"] if bad else []


# What the batch and map sizes stand in as for backend choice: every window up to 16
# divides it (the real sizes are checked by the ops before the choice).
MAP_DIM = 720720  # lcm(1, ..., 16)


class TensorInfo(NamedTuple):
    """What providers' ``reasons`` read of a tensor, as plain constants."""

    shape: tuple
    dtype: torch.dtype
    device: torch.device
    contiguous: bool
    empty: bool

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return 0 if self.empty else math.prod(self.shape)

    def is_contiguous(self) -> bool:
        return self.contiguous


def choose(requested: str, op: str, tensors: list[Tensor], params: dict) -> str:
    """Resolve ``requested`` (one of :data:`CHOICES`) to a runnable backend name.

    In eager mode a fused choice is remembered per (request, op, tensor descriptions,
    params with their types, TRITON_INTERPRET, the loaded provider objects), so repeated
    calls skip the providers' checks; fallbacks to the reference are not remembered (they
    warn once on their own)."""
    if not isinstance(requested, str) or requested not in CHOICES:
        raise ValueError(f"{op}: unknown backend {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested == "torch" or torch._C._are_functorch_transforms_active():
        # torch.func.grad / jacrev cannot differentiate the custom ops' autograd (PyTorch
        # asks for a setup_context it generates itself): the reference path under functorch
        return "torch"
    infos = tuple([_describe(t) for t in tensors])
    items = tuple(sorted(params.items()))
    if not eager_dispatch(tensors):  # tracing: sizes may be symbolic, the choice is traced once
        return _choose(requested, op, infos, items)
    for name in FUSED_PROVIDERS if requested == "auto" else (requested,):
        get_provider(name)  # loaded before the key is made
    key = (requested, op, infos, tuple((k, type(v), v) for k, v in items),
           os.environ.get("TRITON_INTERPRET"), tuple(_providers.items()))
    name = _choices.get(key)
    if name is None:
        name = _choose(requested, op, infos, items)
        if name != "torch":
            _choices[key] = name
    return name


def eager_dispatch(tensors=()) -> bool:
    """Whether a fused op may call its provider through a plain autograd Function (far
    less host time per call than the custom op): plain tensors (no subclass such as
    DTensor), and not while torch.compile, make_fx, jit.trace or a functorch transform
    (vmap, grad) traces, nor under a dispatch mode (FlopCounterMode, FakeTensorMode):
    these must see the custom op."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and not torch.jit.is_tracing() and not torch._C._are_functorch_transforms_active()
            and all(type(t) in (Tensor, torch.nn.Parameter) for t in tensors))


def graph_anchor(t: Tensor) -> Tensor:
    """An empty tensor whose graph leads to ``t``'s, without holding ``t``'s memory (for
    :func:`single_backward`'s ``sources`` where ``t`` is not saved)."""
    return t.reshape(-1)[:0].clone()


def single_backward(grads: tuple, what: str, sources: tuple = ()) -> tuple:
    """Gradients of a fused backward (computed without a graph), made to raise when
    differentiated: under ``create_graph`` (grad mode on) each is an output of one node
    whose backward fails with a message, so a gradient penalty through a fused op errors
    instead of losing its second-order terms, while create_graph uses that do not
    differentiate through it still work. ``sources``: the tensors the gradients depend on
    (the incoming gradient, the op's inputs), which the node takes as inputs too (as empty
    slices): ``torch.autograd.grad`` only runs the nodes on a path to the tensors it is
    asked about, and without them the path from a gradient to, say, a weight upstream of
    the op would skip the node and drop the terms silently."""
    if not torch.is_grad_enabled():
        return grads
    present = [g for g in grads if g is not None]
    linked = [s.reshape(-1)[:0] for s in sources if s is not None and s.requires_grad]
    err = torch._C._functions.DelayedError(
        f"{what} differentiates once: a gradient penalty (double backward) through it needs "
        f"the PyTorch reference path", len(present) + len(linked))
    wrapped = err(*[g.detach().requires_grad_() for g in present], *linked)
    wrapped = iter((wrapped,) if isinstance(wrapped, Tensor) else wrapped)
    return tuple(None if g is None else next(wrapped) for g in grads)


class FusedOp(NamedTuple):
    """What the eager path needs of a fused op: its ``name`` (the providers' launchers are
    ``<name>_fwd`` and ``<name>_bwd``), the custom op's ``setup_context``, ``grads(bwd, ctx,
    dout)`` (the inputs' gradients by a backward function) and the custom backward op."""

    name: str
    setup_context: Callable
    grads: Callable
    custom_bwd: Callable

    def provider_bwd(self, *args):
        """The provider's backward launcher; ``args`` as the custom backward op's."""
        return getattr(get_provider(args[-1]), f"{self.name}_bwd")(*args[:-1])


class EagerFused(torch.autograd.Function):
    """A fused op's custom op without the dispatcher (eager mode, see :func:`eager_dispatch`):
    ``EagerFused.apply(op, *inputs)``, ``inputs`` as the custom forward op's (provider last)."""

    @staticmethod
    def forward(ctx, op: FusedOp, *inputs):
        output = getattr(get_provider(inputs[-1]), f"{op.name}_fwd")(*inputs[:-1])
        op.setup_context(ctx, inputs, output)
        ctx.set_materialize_grads(False)  # lse has no gradient: no zero tensor for it
        ctx.op = op
        return output

    @staticmethod
    def backward(ctx, dout, _dlse):
        op = ctx.op
        # the custom op where the backward is traced or counted (compiled autograd, FLOPs)
        bwd = op.provider_bwd if eager_dispatch() else op.custom_bwd
        with torch.no_grad():
            grads = op.grads(bwd, ctx, dout)
        return (None, *single_backward(grads, f"semask {op.name} (fused)",
                                       (dout, *ctx.saved_tensors)))


def _describe(t: Tensor) -> tuple:
    """TensorInfo fields of ``t`` as constants, also while torch.compile traces with dynamic
    sizes: the batch and map sizes of a [B, Hp, Wp, X] activation stand in as
    :data:`MAP_DIM` (the ops' input checks have tested the real ones); X and the sizes of
    other tensors (parameters) are static."""
    shape = (MAP_DIM,) * 3 + (int(t.shape[-1]),) if t.dim() == 4 else tuple(t.shape)
    empty = True if t.numel() == 0 else False  # a branch: dynamo guards and folds it
    return shape, t.dtype, t.device, t.is_contiguous(), empty


@torch.compiler.assume_constant_result
def _choose(requested: str, op: str, infos: tuple, params: tuple) -> str:
    tensors, params = [TensorInfo(*info) for info in infos], dict(params)
    common = common_reasons(tensors)
    if requested != "auto":
        reasons = common or not_supported_reasons(requested, op, tensors, params)
        if reasons:
            raise BackendUnavailable(
                f"backend {requested!r} (fused= or {BACKEND_ENV}) cannot run {op}: "
                + "; ".join(reasons))
        return requested
    why = {}
    if common:
        why["all"] = common
    elif tensors[0].device.type != "cuda":  # interpreter runs only when asked for by name
        why["auto"] = [f"inputs are on {tensors[0].device.type}, fused kernels need CUDA"]
    for name in FUSED_PROVIDERS if not why else ():
        reasons = not_supported_reasons(name, op, tensors, params)
        if not reasons:
            return name
        why[name] = reasons
    detail = "; ".join(f"{n}: {', '.join(r)}" for n, r in why.items())
    if detail not in _warned:  # one warning per distinct reason, not per call or op
        _warned.add(detail)
        warnings.warn(f"semask: fused kernels cannot run here ({detail}); using the "
                      f"PyTorch reference (first seen in {op})", stacklevel=4)
    return "torch"
