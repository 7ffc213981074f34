"""Sweep the Triton kernels' launch configurations at the real stage shapes (for tuning).

For every window / semantic / loss op case of ``benchmarks/cases.py`` (512 inputs) and
every candidate configuration of each direction (forward kernel; backward kernels given
the default forward's out and lse, the online semantic ones swept one at a time as
"bwd/dq" and "bwd/dkdv", and for windows "bwd/gemm", the scratch backward's GEMM kernel
after the dq kernel, against the default backward; for the fused loss, its loss + gradient
launch, direction "fwd"; global semantic maps, which run on the GEMM path by default, sweep its row kernels'
tiles and, against them, the attention kernels' configurations), this script runs the kernel, checks its results against
the default configuration's (max |x - x_default| / max |x_default|; the default is the
one the tests check against the reference), and times it (on GPU its time under CUDA
graph replay, see ``_time_ms``; one call on CPU). Nothing in the package changes: for the
duration of one measurement the kernel modules' config functions (``_config``,
``config``) answer the candidate.

    python benchmarks/sweep.py --device cuda --time-budget 240 --out DIR
    TRITON_INTERPRET=1 python benchmarks/sweep.py --quick     # the mechanics, on the CPU

Writes ``sweep.json`` (environment, one row per case x direction x configuration) and
``sweep.md`` (per case and direction: default time, best configuration, its time).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cases as C  # noqa: E402
from benchmarks import measure, providers  # noqa: E402
from semask.kernels import semantic_attention as SA  # noqa: E402
from semask.kernels import semantic_gemm as SG  # noqa: E402
from semask.kernels import semantic_window as SW  # noqa: E402
from semask.kernels import upsample_cross_entropy as UCE  # noqa: E402
from semask.kernels import window_attention as WA  # noqa: E402

DIRECTIONS = ("fwd", "bwd")
DIRECTION_NAMES = ("fwd", "bwd", "bwd/dq", "bwd/dkdv", "bwd/gemm")  # --directions (bwd: all)
WRITE_EVERY_S = 1.0  # least seconds between rewrites of the result files within a case


# ----------------------------------------------------------------------------- candidates
def window_candidates(window: int, direction: str, quick: bool) -> list[dict]:
    """BLOCK_M (query rows per program), num_warps, programs per SM of the grouping; then,
    at the default tile, the software pipeline's depth over a program's windows
    (num_stages; Triton's default 3), and for the forward the registers capped at 128
    (Triton's ``maxnreg``): the shifted w = 7 forward takes 143 for sm_90 (3 programs of 4
    warps per SM; the unshifted 128, 4 per SM), capped it spills 40 B and fits 4."""
    cfg = WA._config(window, direction, torch.bfloat16)
    ms = [m for m in (16, 32, 64) if m <= cfg["BLOCK_N"] + cfg["BLOCK_N2"] * cfg["TAIL"]]
    grid = itertools.product(ms, (4, 8), (4, 8, 16, 32) if direction == "fwd" else (4, 8, 16))
    cands = [dict(BLOCK_M=m, num_warps=w, programs_per_sm=p) for m, w, p in grid]
    at_default = dict(BLOCK_M=cfg["BLOCK_M"], num_warps=cfg["num_warps"])
    stages = [dict(at_default, programs_per_sm=p, num_stages=n)
              for n, p in itertools.product((1, 2, 4), (3, 4, 8))]
    capped = [dict(at_default, programs_per_sm=p, maxnreg=128)
              for p in (4, 3)] if direction == "fwd" else []
    return [cands[0], cands[-1], stages[0], *capped[:1]] if quick else cands + stages + capped


def semantic_candidates(N: int, K: int, Cv: int, whole_rows: bool, kernel: str,
                        quick: bool) -> list[dict]:
    """Whole rows (``semantic_window.supports``; ``kernel`` "fwd" or "bwd"): BLOCK_M (query
    rows), BLOCK_K/BLOCK_C chunks, num_warps. Online softmax (``kernel`` one of
    ``semantic_attention.KERNELS``): BLOCK_M, BLOCK_N, BLOCK_C, num_warps (and num_stages
    forward; windows also 16-token blocks and 128-token steps, ``common.step_tail``); the
    class tiles are ``semantic_attention._classes``. "gemm" (windows: the scratch
    backward's kernel): BLOCK_N keys, BLOCK_M query steps, BLOCK_C dv chunks, dv and dk in
    one launch or two (SPLIT). "dq" of windows: each tile also with dq in the GEMM kernel
    (DQ_IN_GEMM)."""
    if whole_rows:  # and, as one more candidate, the online kernels at their defaults
        block_n = max(16, SA._pow2(N))
        ms = [m for m in (16, 32, 64) if m <= block_n]
        cands = [dict(BLOCK_M=m, BLOCK_N=block_n, BLOCK_K=kc, BLOCK_C=c, num_warps=w, num_stages=2)
                 for m, kc, c, w in itertools.product(ms, (16, 32), (16, 32, 64), (4, 8))]
        return ([cands[0], cands[-1]] if quick else cands) + [dict(path="online")]
    top = max(32, SA._pow2(N))
    window = N <= 256  # windows (9..16) also try 16-token blocks and 128-token steps
    small, step = ((16,), (128,)) if window else ((), ())
    ms = [m for m in small + ((32, 64, 128) if kernel == "fwd" else (32, 64))
          + (step if kernel in ("dkdv", "gemm") else ()) if m <= top]
    ns = [n for n in small + (32, 64) + (step if kernel in ("fwd", "dq") else ()) if n <= top]
    cs = [c for c in dict(fwd=(64, 128, 256), dq=(32, 64), dkdv=(64, 128), gemm=(64, 128))[kernel]
          if c <= SA._pow2(Cv)]
    stages = (2, 3) if kernel == "fwd" else (2,)
    cands = [dict(BLOCK_M=m, BLOCK_N=n, BLOCK_C=c, **SA._classes(K), num_warps=w, num_stages=st)
             for m, n, c, w, st in itertools.product(ms, ns, cs or [SA._pow2(Cv)], (4, 8), stages)]
    if kernel == "dq":
        cands = [dict(c, DQ_IN_GEMM=False) for c in cands]
    if kernel == "gemm" or (kernel == "dq" and window):
        # first the default tiles (bf16's) both ways, then every tile both ways: the GEMM
        # kernel as one launch or two (dv, dk: SPLIT); dq in the dq kernel or, from the
        # scratch dS^T, in the GEMM kernel at its default tiles (DQ_IN_GEMM)
        flag = "SPLIT" if kernel == "gemm" else "DQ_IN_GEMM"
        default = SA._config(N, K, Cv, kernel, torch.bfloat16)
        cands = [dict(c, **{flag: on}) for c in cands for on in (False, True)]
        tiles = lambda c: {k: v for k, v in c.items() if k != flag}  # noqa: E731
        cands = [default, dict(default, **{flag: not default[flag]})] + \
            [c for c in cands if tiles(c) != tiles(default)]
    return [cands[0], cands[-1]] if quick else cands


def gemm_candidates(quick: bool) -> list[dict]:
    """The GEMM path's row kernels: elements per program (TILE_ELEMENTS), num_warps."""
    cands = [dict(path="gemm", TILE_ELEMENTS=t, num_warps=w)
             for t, w in itertools.product((1024, 2048, 4096, 8192), (4, 8, 16))]
    return [cands[0], cands[-1]] if quick else cands


def loss_candidates(quick: bool) -> list[dict]:
    """Output tile (TILE_Y x TILE_X pixels), num_warps and the classes: in two passes in
    chunks of BLOCK_K, or in one pass (ONE_PASS; head and tail tiles of all classes)."""
    tiles = ((8, 8), (8, 16), (4, 16), (16, 8), (4, 32), (16, 16))
    cands = [dict(TILE_Y=ty, TILE_X=tx, BLOCK_K=bk, num_warps=w, ONE_PASS=False)
             for (ty, tx), bk, w in itertools.product(tiles, (16, 32, 64), (2, 4, 8))]
    one_pass = [dict(TILE_Y=ty, TILE_X=tx, BLOCK_K=16, num_warps=w, ONE_PASS=True)
                for (ty, tx), w in itertools.product(tiles, (2, 4, 8))]
    return [cands[0], cands[-1], one_pass[0]] if quick else one_pass + cands


@contextlib.contextmanager
def loss_config(cfg: dict):
    """Make the fused loss kernel's ``_config`` answer ``cfg`` (spans and slots derived)."""
    default = UCE._config

    def patched(h, w, H, W, K, dtype):
        span_y, span_x = UCE._span(h, H, cfg["TILE_Y"]), UCE._span(w, W, cfg["TILE_X"])
        slots = max(16, 1 << (span_y * span_x - 1).bit_length())
        return dict(cfg, SPAN_Y=span_y, SPAN_X=span_x, SLOTS=slots,
                    **UCE.class_tiles(K, cfg["ONE_PASS"], cfg["BLOCK_K"]))

    UCE._config = patched
    try:
        yield
    finally:
        UCE._config = default


@contextlib.contextmanager
def window_config(window: int, direction: str, cfg: dict):
    """Make the window kernels' ``_config`` answer ``cfg`` (BLOCK_M, num_warps and, if given,
    num_stages and maxnreg) for ``direction`` at any dtype (the other direction keeps its
    default), and the grouping aim at ``cfg["programs_per_sm"]``."""
    default, saved_pps = WA._config, WA._PROGRAMS_PER_SM

    def patched(w, d, dtype):
        chosen = default(w, d, dtype)
        if w == window and d == direction:
            chosen.update(BLOCK_M=cfg["BLOCK_M"], num_warps=cfg["num_warps"])
            chosen.update({k: cfg[k] for k in ("num_stages", "maxnreg") if k in cfg})
        return chosen

    pps = list(saved_pps)
    pps[WA.DIRECTIONS.index(direction)] = cfg["programs_per_sm"]
    WA._config, WA._PROGRAMS_PER_SM = patched, tuple(pps)
    try:
        yield
    finally:
        WA._config, WA._PROGRAMS_PER_SM = default, saved_pps


@contextlib.contextmanager
def semantic_config(whole_rows: bool, kernel: str, cfg: dict):
    """Make the semantic kernels' config function answer ``cfg`` for ``kernel`` (the others
    keep theirs): whole rows ``semantic_window.config`` ("fwd" or "bwd"), online softmax
    ``semantic_attention._config`` (one of its KERNELS; "gemm" and dq with DQ_IN_GEMM also
    turn the scratch backward on, "dkdv" off); ``{"path": "online"}``: the online kernels at their defaults where the
    whole-row ones would run."""
    if cfg.get("path") == "online":
        owner, name = SW, "supports"
        patched = lambda N, window: False  # noqa: E731
    elif whole_rows:
        owner, name = SW, "config"
        patched = lambda N, K, Cv, backward, dtype: (  # noqa: E731
            dict(cfg) if backward == (kernel == "bwd") else default(N, K, Cv, backward, dtype))
    else:
        owner, name = SA, "_config"
        patched = lambda N, K, Cv, which, dtype: (  # noqa: E731
            dict(cfg) if which == kernel else default(N, K, Cv, which, dtype))
    default, scratch = getattr(owner, name), SA.SCRATCH_BACKWARD
    setattr(owner, name, patched)
    # the GEMM kernel (and dq in it) runs in the scratch backward only, dk/dv outside it
    SA.SCRATCH_BACKWARD = (True if kernel == "gemm" or cfg.get("DQ_IN_GEMM") else
                           False if kernel == "dkdv" else scratch)
    try:
        yield
    finally:
        setattr(owner, name, default)
        SA.SCRATCH_BACKWARD = scratch


@contextlib.contextmanager
def gemm_config(cfg: dict):
    """Make the GEMM path's row kernels launch with ``cfg``'s tile and warps."""
    saved = SG.TILE_ELEMENTS, SG.NUM_WARPS
    SG.TILE_ELEMENTS, SG.NUM_WARPS = cfg["TILE_ELEMENTS"], cfg["num_warps"]
    try:
        yield
    finally:
        SG.TILE_ELEMENTS, SG.NUM_WARPS = saved


@contextlib.contextmanager
def on_kernels(setting, cfg: dict):
    """``setting(cfg)`` with global maps on the attention kernels (the GEMM path off)."""
    saved = SG.MAX_TOKENS
    SG.MAX_TOKENS = 0
    try:
        with setting(cfg):
            yield
    finally:
        SG.MAX_TOKENS = saved


# ----------------------------------------------------------------------------- one case
def _runners(case, device: str, dtype: torch.dtype):
    """(forward(), backward(out, lse)) of the case's kernel on fixed inputs."""
    inputs = providers.op_inputs(case, device, dtype, requires_grad=False)
    p = case.params
    g = torch.Generator(device=device).manual_seed(1)
    if case.kind == "window":
        qkv, table = inputs["qkv"], inputs["table"]
        args = (p["heads"], p["window"], p["shift"], (p["C"] // p["heads"]) ** -0.5)
        dout = torch.randn(qkv.shape[:3] + (p["C"],), generator=g, device=device).to(dtype)
        return (lambda: WA.forward(qkv, table, *args),
                lambda out, lse: WA.backward(dout, qkv, table, out, lse, *args))
    inputs = providers.fused_semantic_inputs(inputs)  # classes as the fused model pads them
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    dout = torch.randn(v.shape, generator=g, device=device).to(dtype)
    return (lambda: SA.forward(q, k, v, p["window"]),
            lambda out, lse: SA.backward(dout, q, k, v, out, lse, p["window"]))


_GRAPH_TIMING = {"on": True}  # off after a default configuration failed to capture


def _time_ms(fn, device: str, default: bool = False) -> float:
    """GPU: the kernel's time under CUDA graph replay (``measure.graph_time_ms``: no host
    launch gaps, which would hide the differences between configurations of the small
    late-stage kernels), estimated first by a short ``measure.time_ms``. A candidate that
    fails to capture raises (its row records the error); a default that fails switches the
    rest of the sweep to ``measure.time_ms`` medians, so each case compares like with like.
    CPU: a single call in the interpreter."""
    estimate = measure.time_ms(fn, device, target_s=0.02, max_reps=1, min_reps=1)
    if not device.startswith("cuda") or not _GRAPH_TIMING["on"]:
        return estimate
    try:
        return measure.graph_time_ms(fn, estimate, graph_ms=3.0, replays=10, device=device)
    except Exception as exc:
        if not default:
            raise
        _GRAPH_TIMING["on"] = False
        print(f"sweep: CUDA graph capture failed ({type(exc).__name__}: {exc}); timing with "
              f"measure.time_ms from here on", flush=True)
        return estimate


def _try(base: dict, cfg: dict, setting, call, expected, device: str, deadline: float) -> dict:
    """One candidate: its agreement with the default configuration's results and its time."""
    row = dict(base, config=cfg, time_ms=None, rel_err=None, error=None)
    if time.perf_counter() > deadline:
        row["error"] = "time budget exhausted"
        return row
    try:
        with setting(cfg):
            got = call()
            row["rel_err"] = providers._rel_error(got if isinstance(got, tuple) else (got,), expected)
            row["time_ms"] = _time_ms(call, device)
    except Exception as exc:  # a configuration the compiler rejects, say
        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return row


def sweep_loss_case(case, device: str, dtype: torch.dtype, quick: bool,
                    deadline: float) -> Iterator[dict]:
    """The fused loss kernel's loss + gradient launch under every candidate configuration,
    one row at a time."""
    inputs = providers.op_inputs(case, device, dtype, requires_grad=False)

    def call():
        return UCE.upsample_cross_entropy(inputs["logits"], inputs["target"], providers.IGNORE, True)

    expected = call()
    base = dict(case=case.name, shape=case.shape(), direction="fwd")
    yield dict(base, config="default", time_ms=_time_ms(call, device, default=True),
               rel_err=0.0, error=None)
    for cfg in loss_candidates(quick):
        yield _try(base, cfg, loss_config, call, expected, device, deadline)


def sweep_case(case, device: str, dtype: torch.dtype, quick: bool, deadline: float,
               directions: list[str] | None = None) -> Iterator[dict]:
    """Rows of every candidate of the case's kernels, one at a time (``directions``: of
    :data:`DIRECTION_NAMES`, the kernels to keep, "bwd" every backward one; None: all)."""
    if case.kind == "loss":
        yield from sweep_loss_case(case, device, dtype, quick, deadline)
        return
    forward, backward = _runners(case, device, dtype)

    def baseline(path_setting):
        """(calls, expected results) per direction; the backward from that path's forward."""
        with path_setting:
            out, lse = forward()
            grads = tuple(backward(out, lse))
        return {"fwd": forward, "bwd": lambda: backward(out, lse)}, {"fwd": (out,), "bwd": grads}

    default = baseline(contextlib.nullcontext())
    timed, kernels = set(), None
    for direction, cands, setting, on_kernel_path in _sweeps(case, quick):
        if directions and not any(d in direction for d in directions):
            continue
        if on_kernel_path and kernels is None:  # the attention kernels' own out and lse
            kernels = baseline(on_kernels(lambda cfg: contextlib.nullcontext(), {}))
        calls, expected = kernels if on_kernel_path else default
        which = direction.split("/")[0]
        base = dict(case=case.name, shape=case.shape(), direction=direction)
        if direction not in timed:  # the GEMM path and the kernels share directions
            timed.add(direction)
            yield dict(base, config="default", rel_err=0.0, error=None,
                       time_ms=_time_ms(default[0][which], device, default=True))
        for cfg in cands:
            yield _try(base, cfg, setting, calls[which], expected[which], device, deadline)


def _sweeps(case, quick: bool):
    """(direction, candidates, setting, on_kernel_path) per swept kernel of a window or
    semantic case: "fwd" and "bwd", or for the online semantic kernels "fwd", "bwd/dq",
    "bwd/dkdv" and for windows "bwd/gemm" (each timed by the whole launch of its direction,
    the other kernel at its default; "bwd/gemm": the scratch backward). Global maps on the
    GEMM path: its row kernels ("fwd", "bwd"), then the attention kernels' candidates with that path off (on_kernel_path: their backward takes
    the kernels' own forward results and is checked against the kernels' default; the
    default row stays the GEMM path)."""
    p = case.params
    if case.kind == "window":
        for d in DIRECTIONS:
            yield (d, window_candidates(p["window"], d, quick),
                   lambda cfg, d=d: window_config(p["window"], d, cfg), False)
        return
    n = p["window"] ** 2 if p["window"] else p["Hp"] * p["Wp"]
    gemm = SG.supports(n, p["window"])
    if gemm:
        for d in DIRECTIONS:
            yield d, gemm_candidates(quick), gemm_config, False
    whole_rows = SW.supports(n, p["window"])
    scratch = SA.scratch_fits(n, p["window"])
    for kernel in DIRECTIONS if whole_rows else [k for k in SA.KERNELS if k != "gemm" or scratch]:
        direction = kernel if kernel in DIRECTIONS else "bwd/" + kernel
        setting = lambda cfg, k=kernel: semantic_config(whole_rows, k, cfg)  # noqa: E731
        yield (direction, semantic_candidates(n, p["K"], p["C"], whole_rows, kernel, quick),
               (lambda cfg, s=setting: on_kernels(s, cfg)) if gemm else setting, gemm)


# ----------------------------------------------------------------------------- cases, report
def sweep_cases(quick: bool, batch: int) -> list:
    if quick:  # small shapes for the interpreter
        win = C.Case("window/quick/sw", "window", "fwd", 1,
                     dict(Hp=14, Wp=14, C=64, heads=2, window=7, shift=3))
        sem = C.Case("semantic/quick/win7", "semantic", "fwd", 1, dict(Hp=14, Wp=14, K=19, C=32, window=7))
        glob = C.Case("semantic/quick/global", "semantic", "fwd", 1, dict(Hp=17, Wp=16, K=19, C=32, window=0))
        loss = C.loss_case("cityscapes", "fwd", 1, size=(16, 24))
        return [win, sem, glob, loss]
    return [c for c in C.full_cases(batch, None)
            if c.kind in ("window", "semantic", "loss") and c.mode == "fwd" and c.params["img"] == 512]


def best_rows(rows: list[dict], max_rel_err: float) -> list[dict]:
    """Per case and direction: the default time and the fastest configuration whose
    results agree with the default's within ``max_rel_err``."""
    table = []
    for key in dict.fromkeys((r["case"], r["direction"]) for r in rows):
        group = [r for r in rows if (r["case"], r["direction"]) == key]
        default = next(r for r in group if r["config"] == "default")
        ok = [r for r in group if r["time_ms"] is not None and r["rel_err"] is not None
              and r["rel_err"] <= max_rel_err]
        best = min(ok, key=lambda r: r["time_ms"])
        table.append(dict(case=key[0], direction=key[1], default_ms=default["time_ms"],
                          best_ms=best["time_ms"], best_config=best["config"],
                          speedup=default["time_ms"] / best["time_ms"],
                          tried=len(group) - 1, failed=sum(r["error"] is not None for r in group)))
    return table


def markdown(env: dict, table: list[dict]) -> str:
    lines = [f"# Triton launch-configuration sweep: {env['device']}", "",
             f"torch {env['torch']}, Triton {env['triton']}, commit `{env['commit']}`, "
             f"{env['dtype']}, batch {env['batch']}, {env['date']}", "",
             "| case | direction | default ms | best ms | speed-up | best configuration | tried (failed) |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        cfg = t["best_config"] if isinstance(t["best_config"], str) else \
            ", ".join(f"{k}={v}" for k, v in t["best_config"].items())
        lines.append(f"| {t['case']} | {t['direction']} | {t['default_ms']:.4g} | {t['best_ms']:.4g} | "
                     f"{t['speedup']:.2f}x | {cfg} | {t['tried']} ({t['failed']}) |")
    return "\n".join(lines) + "\n"


def _write(out: str, env: dict, max_rel: float, rows: list[dict]) -> None:
    """sweep.json (environment, rows, best per case and direction) and sweep.md in ``out``,
    each replacing the old file whole (a run killed while writing leaves the previous one)."""
    table = best_rows(rows, max_rel)
    texts = {"sweep.json": json.dumps(dict(environment=env, max_rel_err=max_rel, rows=rows,
                                           best=table), indent=1),
             "sweep.md": markdown(env, table)}
    for name, text in texts.items():
        with open(os.path.join(out, name + ".tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (the default when a GPU is visible) or cpu (interpreter)")
    ap.add_argument("--dtype", choices=sorted(providers.DTYPES), default=None,
                    help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=16, help="batch of the op cases (default 16)")
    ap.add_argument("--cases", default=None, help="comma-separated substrings of case names to keep")
    ap.add_argument("--directions", default=None,
                    help="comma-separated directions of the window and semantic kernels to "
                         "sweep: fwd, bwd (every backward kernel), bwd/dq, bwd/dkdv, bwd/gemm "
                         "(default: all; loss cases are swept whole)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, two candidates each (CPU check)")
    ap.add_argument("--time-budget", type=float, default=240.0, help="seconds (default 240)")
    ap.add_argument("--max-rel-err", type=float, default=None,
                    help="agreement with the default that a best configuration needs "
                         "(default 1e-5 for fp32, 2e-2 for bf16/fp16)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/sweep-<device>-<date>)")
    args = ap.parse_args(argv)
    directions = [d.strip() for d in args.directions.split(",") if d.strip()] \
        if args.directions else None
    if directions is not None and (not directions or set(directions) - set(DIRECTION_NAMES)):
        ap.error(f"--directions takes {', '.join(DIRECTION_NAMES)}, got {args.directions!r}")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("on the CPU the kernels run only in Triton's interpreter: set TRITON_INTERPRET=1")
    dtype_name = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    dtype = providers.DTYPES[dtype_name]
    max_rel = args.max_rel_err if args.max_rel_err is not None else (1e-5 if dtype_name == "fp32" else 2e-2)
    env = dict(measure.environment(args.device), dtype=dtype_name, batch=1 if args.quick else args.batch)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"sweep-{measure.device_slug(args.device)}-{env['date'][:10]}")
    os.makedirs(out, exist_ok=True)
    cases = C.select(sweep_cases(args.quick, args.batch), args.cases.split(",") if args.cases else None)
    deadline, rows = time.perf_counter() + args.time_budget, []
    for case in cases:
        if time.perf_counter() > deadline:
            print(f"{case.name}: time budget exhausted", flush=True)
            continue
        # the files are rewritten after rows (at most every WRITE_EVERY_S) and after each
        # case, so a run cut short keeps what it timed (a rewrite of 3000 rows takes ~60 ms)
        written = time.perf_counter()
        for row in sweep_case(case, args.device, dtype, args.quick, deadline, directions):
            rows.append(row)
            if time.perf_counter() - written >= WRITE_EVERY_S:
                _write(out, env, max_rel, rows)
                written = time.perf_counter()
        _write(out, env, max_rel, rows)
        t = [x for x in best_rows(rows, max_rel) if x["case"] == case.name]
        print(f"{case.name}: " + "; ".join(f"{x['direction']} {x['default_ms']:.4g} -> {x['best_ms']:.4g} ms"
                                           for x in t), flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
