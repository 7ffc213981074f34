"""Kernel launches of one training step, counted on the CPU (no GPU needed).

A host-bound training step costs host time per launched kernel (dispatch, autograd, launch).
This counts, for one step of a model (forward under autocast, both losses, backward; the
optimizer left out), the aten ops that launch a kernel on a GPU (views and allocations are
not counted: ``NO_KERNEL``) and the Triton launches, forward by innermost module:

    TRITON_INTERPRET=1 python benchmarks/count_launches.py                  # SeMask-T, 64x64
    TRITON_INTERPRET=1 python benchmarks/count_launches.py --fused reference,triton --img 96
    TRITON_INTERPRET=1 python benchmarks/count_launches.py --captured   # the graphed step's

``--captured`` counts the step as ``--cuda-graphs`` captures it: inside
``layer_norm.graph_capture``, where a fused model's LayerNorms run on Triton (in eager
steps PyTorch's, plus the casts of their fp32 outputs under autocast).

The fused ops take their eager path while counted (the counter's dispatch mode is hidden
from ``backend.eager_dispatch``, as no mode is active in a real step); Triton kernels run in
the interpreter, whose launches are counted. Counts at small sizes equal those at 512 up to
padding-dependent ops.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import semask  # noqa: E402
from semask.ops import backend  # noqa: E402
from semask.ops.layer_norm import graph_capture  # noqa: E402

NO_KERNEL = {"view", "t", "detach", "_unsafe_view", "slice", "permute", "transpose", "expand",
             "unsqueeze", "squeeze", "select", "alias", "as_strided", "empty", "new_empty",
             "empty_like", "empty_strided", "set_", "_local_scalar_dense", "promote_types",
             "lift_fresh", "unbind", "split", "copy_"}  # copy_: the interpreter's own


class _Counter(TorchDispatchMode):
    """Counts kernel-launching aten ops per innermost module (``where[-1]``)."""

    def __init__(self, where: list[str]):
        super().__init__()
        self.where, self.ops = where, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in NO_KERNEL:
            self.ops[(self.where[-1], str(func.overloadpacket))] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _triton_launches():
    """Counts the Triton interpreter's kernel launches (a one-element list) while active."""
    count = [0]
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield count
        return
    import triton.runtime.interpreter as interp
    run = interp.GridExecutor.__call__

    def counted(self, *args, **kwargs):
        count[0] += 1
        return run(self, *args, **kwargs)
    interp.GridExecutor.__call__ = counted
    try:
        yield count
    finally:
        interp.GridExecutor.__call__ = run


@contextlib.contextmanager
def _eager_fused_ops():
    """Hide dispatch modes from ``backend.eager_dispatch`` (no mode is active in a real step)."""
    hidden = backend._get_current_dispatch_mode
    backend._get_current_dispatch_mode = lambda: None
    try:
        yield
    finally:
        backend._get_current_dispatch_mode = hidden


def count_step(model_name: str, fused: str, img: int, batch: int, dtype: torch.dtype,
               num_classes: int = 150, captured: bool = False) -> dict:
    """{"forward": Counter{(module, op): n}, "backward": Counter{("(backward)", op): n},
    "triton_forward", "triton_backward"} of the second of two training steps (the first
    warms the caches); ``captured``: both inside ``layer_norm.graph_capture``."""
    torch.manual_seed(0)
    model = semask.create_model(model_name, num_classes=num_classes,
                                fused=False if fused == "reference" else fused).train()
    images = torch.randn(batch, 3, img, img)
    target = torch.randint(0, num_classes, (batch, img, img))
    where = ["(model)"]
    for module in model.modules():
        name = type(module).__name__
        module.register_forward_pre_hook(lambda m, i, name=name: where.append(name))
        module.register_forward_hook(lambda m, i, o: (where.pop(), None)[1])

    def loss():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return model.loss(model(images), target)["loss"]

    result = {}
    in_graph = graph_capture() if captured else contextlib.nullcontext()
    with _eager_fused_ops(), _triton_launches() as triton, in_graph:
        loss().backward()
        model.zero_grad(set_to_none=True)
        triton[0] = 0
        with _Counter(where) as fwd:
            step_loss = loss()
        result["forward"], result["triton_forward"] = fwd.ops, triton[0]
        triton[0] = 0
        where[:] = ["(backward)"]
        with _Counter(where) as bwd:
            step_loss.backward()
        result["backward"], result["triton_backward"] = bwd.ops, triton[0]
    return result


def report(fused: str, counts: dict, rows: int) -> str:
    fwd, bwd = counts["forward"], counts["backward"]
    n_fwd, n_bwd = sum(fwd.values()), sum(bwd.values())
    total = n_fwd + n_bwd + counts["triton_forward"] + counts["triton_backward"]
    lines = [f"## {fused}: {total} launches ({n_fwd} aten + {counts['triton_forward']} Triton "
             f"forward, {n_bwd} aten + {counts['triton_backward']} Triton backward)", "",
             "| forward: module | op | launches |", "|---|---|---|"]
    lines += [f"| {m} | `{op}` | {n} |" for (m, op), n in fwd.most_common(rows)]
    per_op = collections.Counter()
    for (_, op), n in bwd.items():
        per_op[op] += n
    lines += ["", "| backward: op | launches |", "|---|---|"]
    lines += [f"| `{op}` | {n} |" for op, n in per_op.most_common(rows)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="semask_swin_tiny_fpn", help="a name of semask.create_model")
    ap.add_argument("--fused", default="reference,triton",
                    help="comma-separated: reference, triton (Triton needs TRITON_INTERPRET=1)")
    ap.add_argument("--img", type=int, default=64, help="square input size")
    ap.add_argument("--batch", type=int, default=2, help="images (2: batch norm needs > 1 value)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="autocast dtype")
    ap.add_argument("--rows", type=int, default=15, help="rows per table")
    ap.add_argument("--captured", action="store_true",
                    help="count the step as a CUDA graph captures it (fused models' "
                         "LayerNorms on Triton; eager steps run PyTorch's)")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    text = "".join(report(f, count_step(args.model, f, args.img, args.batch, dtype,
                                        captured=args.captured), args.rows)
                   for f in args.fused.split(","))
    print(text)
    return text


if __name__ == "__main__":
    main()
