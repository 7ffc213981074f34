"""GPU time per kernel of the Triton window and semantic ops, forward and backward apart.

The benchmarks time a direction as a whole (a backward is one to three kernels, plus
PyTorch's allocations and casts); this splits one call into its kernels with
``torch.profiler``, over the op cases of ``benchmarks/cases.py`` (512 inputs, bf16):

    python benchmarks/kernel_split.py --cases semantic/semask_b-512/s0/win12
    python benchmarks/kernel_split.py --cases window/swin_t-512/s0 --out results/dir/split.md
    python benchmarks/kernel_split.py --cases semantic/semask_b-512/s0/win12 --dkdv-backward

Each direction runs ``--reps`` times after a warm-up call (the forward's output feeding
every backward); the table gives each kernel's mean GPU time per call. CUDA only.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import cases as C  # noqa: E402
from benchmarks import providers  # noqa: E402
from benchmarks.profile_step import kernel_rows  # noqa: E402
from benchmarks.sweep import _runners, sweep_cases  # noqa: E402
from semask.kernels import semantic_attention as SA  # noqa: E402


def kernel_times(fn, reps: int) -> list[tuple[str, float, float]]:
    """[(kernel, µs per call, launches per call)] of ``reps`` calls of fn, slowest first
    (the kernels as ``profile_step.kernel_rows`` picks them out of the profile)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kernels, _ = kernel_rows(prof.key_averages(), cuda=True)
    return [(name, ms * 1e3 / reps, calls / reps) for name, ms, calls in kernels]


def split(case, dtype: torch.dtype, reps: int) -> list[str]:
    """Markdown rows (direction, kernel, µs, launches) of one op case."""
    forward, backward = _runners(case, "cuda", dtype)
    out, lse = forward()
    lines = []
    for direction, fn in (("fwd", forward), ("bwd", lambda: backward(out, lse))):
        rows = kernel_times(fn, reps)
        total = sum(us for _, us, _ in rows)
        lines += [f"| {case.name} | {direction} | `{name[:70]}` | {us:.1f} | {n:.3g} |"
                  for name, us, n in rows]
        lines.append(f"| {case.name} | {direction} | total | {total:.1f} | |")
    return lines


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True,
                    help="comma-separated substrings of window/semantic case names")
    ap.add_argument("--dtype", choices=sorted(providers.DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, default=16, help="batch of the op cases (default 16)")
    ap.add_argument("--reps", type=int, default=10, help="profiled calls per direction")
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--dkdv-backward", action="store_true",
                    help="windows' semantic backward through the dk/dv kernel, recomputing "
                         "the scores, instead of the scratch P^T and dS^T (turns "
                         "semantic_attention.SCRATCH_BACKWARD off)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("kernel_split times GPU kernels: it needs a CUDA device")
    chosen = [c for c in C.select(sweep_cases(False, args.batch), args.cases.split(","))
              if c.kind in ("window", "semantic")]
    if not chosen:
        ap.error(f"no window or semantic case matches {args.cases!r} (see run.py --list)")
    SA.SCRATCH_BACKWARD = SA.SCRATCH_BACKWARD and not args.dkdv_backward
    lines = [f"# GPU time per kernel: {torch.cuda.get_device_name()}, {args.dtype}, "
             f"batch {args.batch}, {args.reps} calls"
             + ("" if SA.SCRATCH_BACKWARD else ", semantic backward through dk/dv"), "",
             "| case | direction | kernel | µs per call | launches per call |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for case in chosen:
        rows = split(case, providers.DTYPES[args.dtype], args.reps)
        print("\n".join(rows), flush=True)
        lines += rows
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
