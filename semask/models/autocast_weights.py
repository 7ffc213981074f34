"""Autocast's weight casts of a fused model, all in one go per forward.

Under autocast every Linear and Conv2d casts its fp32 weight and bias to the autocast dtype
in a kernel of its own, and the backward casts each gradient back in another: in a SeMask-T
training step ~300 tiny launches and as many autograd nodes, host time in a step that the
host bounds. :func:`cast_weights` casts them all with one multi-tensor copy per direction
(``torch._foreach_copy_``, as FSDP2 casts its parameters); the model then runs with those
tensors in place of the parameters (``torch.func.functional_call``), which autocast passes
through, being in its dtype already. Values and gradients are those of autocast's own casts.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

LOWP_LAYERS = (nn.Linear, nn.Conv2d)  # layers autocast runs in its low precision


class _CastAll(torch.autograd.Function):
    """tensors -> copies in ``dtype`` (one multi-tensor copy); their gradients are cast back
    to the tensors' dtypes the same way."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *tensors: Tensor):
        ctx.set_materialize_grads(False)
        ctx.dtypes = [t.dtype for t in tensors]
        out = [torch.empty_like(t, dtype=dtype) for t in tensors]
        torch._foreach_copy_(out, list(tensors))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        present = [i for i, g in enumerate(grads) if g is not None]
        back = [torch.empty_like(grads[i], dtype=ctx.dtypes[i]) for i in present]
        if back:
            torch._foreach_copy_(back, [grads[i] for i in present])
        out: list = [None] * len(grads)
        for i, g in zip(present, back):
            out[i] = g
        return (None, *out)


def cast_weights(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """{name: the fp32 weight or bias of a Linear or Conv2d layer of ``model`` cast to
    ``dtype``}: the trainable ones through one :class:`_CastAll`, the frozen ones with one
    copy outside autograd (so that no graph is recorded through them). The layers are
    looked up per call (0.2 ms for SeMask-T on a slow CPU): a replaced layer, or a replica
    of ``nn.DataParallel``, is never served stale weights."""
    found = {True: [], False: []}
    for prefix, module in model.named_modules():
        if isinstance(module, LOWP_LAYERS):
            for attr, p in module.named_parameters(recurse=False):
                if p.dtype == torch.float32:
                    found[p.requires_grad].append((f"{prefix}.{attr}" if prefix else attr, p))
    out = {}
    for trainable, params in found.items():
        if params:
            with contextlib.nullcontext() if trainable else torch.no_grad():
                casted = _CastAll.apply(dtype, *(p for _, p in params))
            out.update(zip((name for name, _ in params), casted))
    return out


def call_with(module: nn.Module, prefix: str, weights: dict[str, Tensor], *args):
    """``module(*args)`` with the entries of ``weights`` under ``prefix.`` in place of its
    parameters (plain call when there are none)."""
    own = {n[len(prefix) + 1:]: t for n, t in weights.items() if n.startswith(prefix + ".")}
    if not own:
        return module(*args)
    return torch.func.functional_call(module, own, args, tie_weights=False)  # none are tied
