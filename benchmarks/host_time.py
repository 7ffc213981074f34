"""Host time per call of the fused ops: what a host-bound training step pays for each op.

Each op runs at a small late-stage shape (its GPU time far below its host time) ``--calls``
times back to back, with no synchronisation inside the loop; the wall time of the loop per
call is the host time of one call (Python, checks, aten dispatch, autograd, launches). The
PyTorch reference of each op runs alongside, and for the LayerNorm and window attention
also their kernel launchers called directly (no autograd, no checks), which tells the cost
of our op layer from that of the launches.

    python benchmarks/host_time.py                    # CPU: Triton launches stubbed
    python benchmarks/host_time.py --device cuda --out benchmarks/results/<dir>/host_time.md
    python benchmarks/host_time.py --device cuda --profile 25   # + where the host time goes

``--profile N`` adds, per op, the N functions with the most own time (cProfile) over the
triton fwd_bwd calls of the LayerNorm and window rows: Triton's launcher (``jit.py``),
autograd, our op layer. cProfile slows Python several-fold, so its times only rank.

On the CPU the script sets ``TRITON_INTERPRET=1`` and makes every Triton launch a no-op, so
the times are the Python and aten cost without Triton's own launch cost (and the outputs
are garbage, their device-side checks skipped): a GPU-free way to compare host-side changes
between commits. The torch column there is mostly real CPU arithmetic, so torch against
triton means nothing on the CPU. On a GPU fwd_bwd's backward runs on autograd's device
thread, as in a training step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stub_triton_launches() -> None:
    """Every launch of an interpreted Triton kernel returns at once, and the device-side
    checks on the (unwritten) outputs are skipped (CPU runs only)."""
    import torch
    from triton.runtime import interpreter

    interpreter.InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    torch._assert_async = lambda *args, **kwargs: None


def cases(device: str):
    """(name, {backend: fn(mode)}) per op; fn("fwd") runs the forward under no_grad,
    fn("fwd_bwd") forward and input gradients; "direct" backends take the mode too."""
    import torch

    from semask.kernels import layer_norm as ln_kernels
    from semask.models.loss import upsampled_cross_entropy
    from semask.ops import backend
    from semask.ops.layer_norm import layer_norm
    from semask.ops.semantic_attention import semantic_attention
    from semask.ops.upsample import upsample2x
    from semask.ops.window_attention import window_attention

    g = torch.Generator().manual_seed(0)

    def rnd(*shape, grad=True):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    def run(forward, inputs, mode):
        if mode == "fwd":
            with torch.no_grad():
                return forward()
        out = forward()
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    x, w, b = rnd(1, 7, 7, 768), rnd(768), rnd(768)
    xp, wp, bp = rnd(1, 12, 12, 96), rnd(96), rnd(96)
    mean = torch.zeros(49, device=device)
    rstd = torch.ones(49, device=device)

    def ln_direct(mode):
        y, _, _ = ln_kernels.forward(x.detach(), w.detach(), b.detach(), 1e-5, x.dtype)
        if mode == "fwd_bwd":
            ln_kernels.backward(y, x.detach(), w.detach(), mean, rstd)

    qkv, table = rnd(1, 14, 14, 3 * 96), rnd(169, 3)
    win = (3, 7, 3, 32 ** -0.5)
    triton = backend.get_provider("triton")

    def window_direct(mode):
        out, lse = triton.window_attention_fwd(qkv.detach(), table.detach(), *win, 14, 14)
        if mode == "fwd_bwd":
            triton.window_attention_bwd(out, qkv.detach(), table.detach(), out, lse, *win)

    qw, kw, vw = rnd(1, 14, 14, 19), rnd(1, 14, 14, 19), rnd(1, 14, 14, 96)
    qg, kg, vg = rnd(1, 8, 8, 19), rnd(1, 8, 8, 19), rnd(1, 8, 8, 96)
    up = rnd(1, 16, 8, 8)
    logits = rnd(1, 19, 8, 8)
    target = torch.randint(0, 19, (1, 32, 32), generator=g).to(device)

    def pair(fn, inputs, **extra):
        """torch and triton runs of fn(backend)."""
        both = {name: (lambda mode, name=name: run(lambda: fn(name), inputs, mode))
                for name in ("torch", "triton")}
        return {**both, **extra}

    return [
        ("layer_norm 7x7x768", pair(lambda be: layer_norm(x, w, b, 1e-5, be), (x, w, b),
                                    direct=ln_direct)),
        ("layer_norm 12x12x96, padded to 14", pair(
            lambda be: layer_norm(xp, wp, bp, 1e-5, be, pad_multiple=7), (xp, wp, bp))),
        ("window_attention 14x14, 3 heads, shift 3", pair(
            lambda be: window_attention(qkv, table, *win, backend=be), (qkv, table),
            direct=window_direct)),
        ("semantic_attention 14x14, window 7, K 19", pair(
            lambda be: semantic_attention(qw, kw, vw, 7, backend=be), (qw, kw, vw))),
        ("semantic_attention 8x8, global, K 19", pair(
            lambda be: semantic_attention(qg, kg, vg, 0, backend=be), (qg, kg, vg))),
        ("upsample2x 16x8x8", pair(lambda be: upsample2x(up, fused=be == "triton"), (up,))),
        ("upsampled cross-entropy 19x8x8 -> 32x32", pair(
            lambda be: upsampled_cross_entropy(logits, target, fused=be == "triton"), (logits,))),
    ]


def host_us(fn, calls: int, sync) -> float:
    """Wall time per call of ``calls`` back-to-back calls of fn, in microseconds."""
    for _ in range(max(5, calls // 10)):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return elapsed / calls * 1e6


def profile_rows(fn, calls: int, top: int) -> list[str]:
    """Markdown rows: the ``top`` functions by own time over ``calls`` calls of fn."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(lambda: [fn() for _ in range(calls)])
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    rows = []
    for (path, line, name), (_, ncalls, tottime, cumtime, _) in ranked:
        where = f"{os.path.basename(path)}:{line}" if line else "built-in"
        rows.append(f"| `{name}` | {where} | {ncalls / calls:.3g} | {tottime / calls * 1e6:.1f} | "
                    f"{cumtime / calls * 1e6:.1f} |")
    return rows


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (Triton launches stubbed) or cuda")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per row (default 300)")
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also rank the N functions with the most own time (cProfile) in "
                         "the triton fwd_bwd calls of the LayerNorm and window rows")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        stub_triton_launches()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    lines = [f"# Host time per call (µs), {args.device}"
             + (", Triton launches stubbed" if args.device == "cpu" else
                f", {torch.cuda.get_device_name(args.device)}"),
             f"torch {torch.__version__}, {args.calls} calls per row; direct: the kernel "
             "launchers without autograd or checks", "",
             "| op | mode | torch | triton | direct |", "|---|---|---|---|---|"]
    all_cases = cases(args.device)
    for name, runs in all_cases:
        for mode in ("fwd", "fwd_bwd"):
            cells = [f"{host_us(lambda: runs[be](mode), args.calls, sync):.1f}" if be in runs
                     else "–" for be in ("torch", "triton", "direct")]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    for name, runs in all_cases if args.profile else ():
        if "direct" not in runs:
            continue
        lines += ["", f"## Own time per triton fwd_bwd call: {name} (cProfile, {args.calls} calls)",
                  "", "| function | where | calls per op call | own µs | cumulative µs |",
                  "|---|---|---|---|---|",
                  *profile_rows(lambda: runs["triton"]("fwd_bwd"), args.calls, args.profile)]
        sync()
        print("\n".join(lines[-args.profile - 4:]), flush=True)
    table = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return table


if __name__ == "__main__":
    print(main())
