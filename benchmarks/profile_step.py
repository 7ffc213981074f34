"""Where a training step spends its time: torch.profiler over one SeMask-Swin step per
backend, kernels grouped by what they do.

    python benchmarks/profile_step.py --device cuda                    # SeMask-T 512, batch 16, bf16
    python benchmarks/profile_step.py --device cuda --fused reference,triton --rows 30
    python benchmarks/profile_step.py --model semask_swin_micro_fpn --img 64 --batch 2   # CPU smoke run

For each backend (``--fused``: reference = the eager PyTorch model, triton, cuda, auto;
with ``-compile`` appended, e.g. ``triton-compile``, the model runs under ``torch.compile``,
forward and loss compiled as one function unless the loss is the fused Triton kernel, which
runs eagerly; the warm-up steps include the compilation) the step (forward under autocast, loss,
backward, the trainer's AdamW step: fused on a GPU) runs ``--warmup`` times, then
``--timed`` times from an idle GPU for its wall time and its host time (until ``step()``
returns, before the GPU is waited for), then ``--timed`` times back to back (as the
benchmarks time steps; the GPU waited for once at the end), then once under the profiler.
The kernels' share of the wall time says whether the GPU waits for the host (a low share);
host time close to the wall time alone does not, since the host also blocks once ~1000
launches are queued.

Written into ``--out`` (default ``benchmarks/results/<device>-profile-<date>/``):
``profile.md`` with, per backend, those times, the time per group of kernels (attention,
matmul, convolution, normalisation, loss, optimizer, other elementwise), the top kernels by
own time and, on a GPU, the top host-side ops by own CPU time (and how much of the host
time is inside ops at all); ``trace_<backend>.json`` with ``--trace`` (open in
chrome://tracing or Perfetto).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import statistics
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import semask  # noqa: E402
from benchmarks.measure import device_slug  # noqa: E402
from benchmarks.providers import compiled_training_loss, training_loss  # noqa: E402
from semask.train.optim import build_optimizer  # noqa: E402

# Kernel (or CPU op) name patterns per group, tried in order; the first match wins.
GROUPS = (
    ("window attention", r"_window_\w*kernel|window_attention|window_fwd|window_bwd"),
    ("semantic attention", r"_semantic_\w*kernel|semantic_attention|semantic_fwd|semantic_bwd"),
    ("x2 upsampling (FPN head, semantic decoder; Triton)", r"_upsample2x_\w*kernel"),
    ("softmax, upsample, cross-entropy (loss; eager attention softmax)",
     r"_upsample_ce_kernel|upsample|interpolat|softmax|nll|cross_entropy"),
    ("matmul", r"gemm|matmul|\bmm\b|bmm|addmm|linear|cutlass|xmma|nvjet"),
    ("convolution", r"conv|cudnn|winograd"),
    ("normalisation", r"norm"),
    ("optimizer", r"adam|foreach|multi_tensor|lerp"),
    ("copies and layout", r"copy|cat\b|contiguous|transpose|permute|pad|roll|index|gather|"
                          r"scatter|fill|zero"),
)


BACKENDS = ("reference", "triton", "cuda", "auto")  # --fused values; "-compile" appended:
# the same model under torch.compile (benchmarks.providers.compiled_training_loss)


def group_of(name: str) -> str:
    """The group of a kernel or op name (see :data:`GROUPS`); 'other elementwise' else."""
    low = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, low):
            return group
    return "other elementwise"


def step_fn(model, images, target, device: str, dtype: torch.dtype, loss_of=None):
    """One training step (autocast forward and loss, backward, AdamW step as the trainer
    builds it: fused on a GPU); ``loss_of(images, target)``: what computes the loss
    (default the eager model's; a compiled one, say)."""
    opt = build_optimizer(model, lr=1e-4, weight_decay=1e-4,
                          fused=True if device.startswith("cuda") else None)
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=dtype)
                if dtype != torch.float32 else contextlib.nullcontext())
    loss_of = training_loss(model) if loss_of is None else loss_of

    def step():
        with autocast:
            loss = loss_of(images, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def step_times(step, reps: int, cuda: bool) -> tuple[float, float, float]:
    """(wall ms, host ms, back-to-back ms) of a step: the medians of ``reps`` steps, each
    from an idle GPU (wall until the GPU has finished, host until ``step()`` returned),
    then the mean of ``reps`` steps run back to back, as the benchmarks time them, with
    the GPU waited for once at the end."""
    walls, hosts = [], []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        hosts.append(time.perf_counter() - t0)
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    if cuda:
        torch.cuda.synchronize()
    chained = (time.perf_counter() - t0) / reps
    return statistics.median(walls) * 1e3, statistics.median(hosts) * 1e3, chained * 1e3


def kernel_rows(events, cuda: bool) -> tuple[list, list]:
    """([(name, own ms, calls)] of the kernels (GPU) or ops (CPU), [(op, own CPU ms, calls)]
    of the host side (GPU only)) from ``prof.key_averages()``. On a GPU a CPU op's own device
    time repeats its kernels', and the ranges of ``record_function`` (the optimizer's
    "Optimizer.step#AdamW.step", say) come back as device events spanning the kernels they
    enclose (``is_user_annotation``; torch >= 2.6): both are left out."""
    rows, host_rows = [], []
    for e in events:
        on_host = e.device_type == DeviceType.CPU
        if cuda and not on_host:
            own = 0.0 if getattr(e, "is_user_annotation", False) else e.self_device_time_total / 1e3
        else:
            own = 0.0 if cuda else e.self_cpu_time_total / 1e3
        if own > 0:
            rows.append((e.key, own, e.count))
        if cuda and on_host and e.self_cpu_time_total > 0:
            host_rows.append((e.key, e.self_cpu_time_total / 1e3, e.count))
    rows.sort(key=lambda r: -r[1])
    host_rows.sort(key=lambda r: -r[1])
    return rows, host_rows


def profile_backend(args, fused: str) -> tuple[list, float, tuple, dict]:
    """[(name, own time in ms, calls)] of every kernel (GPU) or op (CPU) of one step, the
    step's total, its (wall ms, host ms, back-to-back ms) from :func:`step_times`, and on a
    GPU the host side of the profiled step: {"rows": [(op, own CPU ms, calls)], "step_ms": host time
    of the profiled step (profiler overhead included)}."""
    torch.manual_seed(0)
    backend = fused.removesuffix("-compile")
    model = semask.create_model(args.model, num_classes=args.num_classes,
                                fused=False if backend == "reference" else backend)
    model = model.to(args.device).train()
    images = torch.randn(args.batch, 3, args.img, args.img, device=args.device)
    target = torch.randint(0, args.num_classes, (args.batch, args.img, args.img), device=args.device)
    loss_of = None
    if backend != fused:  # "-compile"
        torch._dynamo.reset()
        loss_of = compiled_training_loss(model)
    step = step_fn(model, images, target, args.device, args.dtype, loss_of)
    cuda = args.device.startswith("cuda")
    for _ in range(args.warmup):
        step()
    times = step_times(step, args.timed, cuda)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        step_ms = (time.perf_counter() - t0) * 1e3
        if cuda:
            torch.cuda.synchronize()
    if args.trace:
        prof.export_chrome_trace(os.path.join(args.out, f"trace_{fused}.json"))
    rows, host_rows = kernel_rows(prof.key_averages(), cuda)
    return rows, sum(r[1] for r in rows), times, dict(rows=host_rows, step_ms=step_ms)


def report(fused: str, rows, total: float, top: int, unit: str, times: tuple,
           host_ops: dict | None = None) -> str:
    """Markdown: wall and host time, time per group, the top kernels, then (GPU) the top
    host-side ops."""
    groups: dict[str, float] = {}
    for name, ms, _ in rows:
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    wall, host, chained = times
    lines = [f"## {fused}: {total:.2f} ms of {unit} time in one step", "",
             f"Step wall time {wall:.2f} ms, host time {host:.2f} ms (until the step "
             f"returned; median of the timed steps, each from an idle device); "
             f"{chained:.2f} ms per step back to back (mean). The {unit} time above is "
             f"{100 * total / wall:.0f}% of the wall time: the rest is time the device "
             f"waited (for the host, or between kernels).", "",
             "| group | ms | share |", "|---|---|---|"]
    for group, ms in sorted(groups.items(), key=lambda g: -g[1]):
        lines.append(f"| {group} | {ms:.2f} | {100 * ms / total:.1f}% |")
    lines += ["", f"Top {top} by own time:", "", "| kernel | group | ms | calls |", "|---|---|---|---|"]
    for name, ms, calls in rows[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short}` | {group_of(name)} | {ms:.3f} | {calls} |")
    if host_ops:
        attributed = sum(ms for _, ms, _ in host_ops["rows"])
        lines += ["", f"Host side of the profiled step: {host_ops['step_ms']:.2f} ms until it returned "
                  f"(profiler overhead included), {attributed:.2f} ms of it inside the ops below "
                  f"(own CPU time; launches included); the rest is Python between ops (modules, "
                  f"autograd Functions, Triton's launcher).", "",
                  f"Top {top} host-side ops by own CPU time:", "", "| op | ms | calls |", "|---|---|---|"]
        for name, ms, calls in host_ops["rows"][:top]:
            short = name if len(name) <= 90 else name[:87] + "..."
            lines.append(f"| `{short}` | {ms:.3f} | {calls} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="semask_swin_tiny_fpn", help="a name of semask.create_model")
    ap.add_argument("--fused", default="reference,triton",
                    help="comma-separated backends: reference, triton, cuda, auto; each may end "
                         "in -compile (the model under torch.compile), e.g. triton-compile")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img", type=int, default=512, help="square input size")
    ap.add_argument("--num-classes", type=int, default=150)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                    help="autocast dtype (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the timed ones")
    ap.add_argument("--timed", type=lambda x: max(1, int(x)), default=5,
                    help="steps timed for the wall and host time, before the profiled one")
    ap.add_argument("--rows", type=int, default=20, help="top kernels listed per backend")
    ap.add_argument("--trace", action="store_true", help="also write a chrome trace per backend")
    ap.add_argument("--out", default=None, help="output folder")
    args = ap.parse_args(argv)
    args.fused = [f.strip() for f in args.fused.split(",") if f.strip()]
    for f in args.fused:
        if f.removesuffix("-compile") not in BACKENDS:
            ap.error(f"unknown backend {f!r} in --fused ({', '.join(BACKENDS)}, each optionally "
                     f"with -compile)")
    name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[name]
    if args.out is None:
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"{device_slug(args.device)}-profile-{datetime.date.today()}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    unit = "GPU kernel" if args.device.startswith("cuda") else "CPU op (self)"
    parts = [f"# Training-step profile: {args.model}, batch {args.batch}, {args.img}x{args.img}, "
             f"{str(args.dtype).replace('torch.', '')}, {args.device} "
             f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
             f"torch {torch.__version__}\n"]
    for fused in args.fused:
        rows, total, times, host_ops = profile_backend(args, fused)
        parts.append(report(fused, rows, total, args.rows, unit, times, host_ops))
        print(parts[-1], flush=True)
    text = "\n".join(parts)
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write(text)
    print(f"written to {os.path.join(args.out, 'profile.md')}")
    return text


if __name__ == "__main__":
    main()
