#!/usr/bin/env python
"""semask benchmarks: time, throughput, FLOPs, bandwidth and memory of every provider
(reference, sdpa, compile, triton, triton-compile, cuda) per op (window / semantic attention
at real stage shapes) and end to end (SeMask-Swin FPN inference and training step).

Writes results.json, results.md and PNG plots (speed-up, memory) into --out. Examples:
    python benchmarks/run.py --quick                      # CPU smoke run, < 3 minutes
    python benchmarks/run.py --device cuda                # full GPU run (bf16, batch 16)
    python benchmarks/run.py --device cuda --cases window/swin_t-512 --providers reference,triton
    python benchmarks/run.py --device cuda --isolate --time-budget 300   # one process per provider
A provider that cannot run a case is recorded as skipped with its reason.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

from benchmarks import cases as _cases  # noqa: E402
from benchmarks import measure, providers, report  # noqa: E402

SCHEMA_VERSION = 1
RECORD_FIELDS = ("case", "kind", "shape", "dtype", "mode", "provider", "batch", "time_ms",
                 "graph_ms", "graph_speedup", "throughput", "flops", "flops_source", "tflops",
                 "bytes", "gbps", "floor_frac", "floor_bound",
                 "peak_mem_mb", "peak_mem_growth_mb", "speedup", "max_rel_err", "skipped_reason", "note")


def _loss_chunk(text: str):
    """'auto', 'none' (-> None) or a positive int."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected auto, none or a positive int, got {text!r}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a few small cases at batch 1 (CPU smoke run; finishes in < 3 minutes)")
    ap.add_argument("--device", default=None,
                    help="cpu or cuda[:i] (default: cuda when available, else cpu)")
    ap.add_argument("--cases", default=None,
                    help="comma-separated substrings of case names to keep, e.g. "
                         "'window/swin_t-512,model/' (see --list)")
    ap.add_argument("--modes", default=None,
                    help="comma-separated modes to keep: fwd, fwd_bwd (default both); e.g. "
                         "fwd_bwd alone to give a compiling provider's time to the training step")
    ap.add_argument("--providers", default=",".join(providers.PROVIDERS),
                    help="comma-separated subset of " + ",".join(providers.PROVIDERS))
    ap.add_argument("--dtype", choices=sorted(providers.DTYPES), default=None,
                    help="op dtype / model autocast dtype (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch of the op cases (default 16; --quick: 1)")
    ap.add_argument("--model-batch", type=int, default=None,
                    help="batch of the model cases (default: 16 for SeMask-T, 8 for S/B/L; --quick: 1)")
    ap.add_argument("--out", default=None,
                    help="output folder (default benchmarks/results/<device>-<date>/, "
                         "<device>-quick-<date>/ with --quick)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for all measurements; later cases are recorded as skipped "
                         "(default: none; --quick: 130)")
    ap.add_argument("--compile-budget", type=float, default=None,
                    help="seconds the compiling providers (compile, triton-compile) may spend in "
                         "total (compilation included; per provider with --isolate); "
                         "default: half the time budget, --quick: 45")
    ap.add_argument("--target-time", type=float, default=None,
                    help="seconds of repetitions per measurement (default 0.1 GPU, 0.3 CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: torch's choice; --quick on CPU: 1, "
                         "since a shared small machine makes multi-threaded timings erratic)")
    ap.add_argument("--loss-chunk", type=_loss_chunk, default="auto",
                    help="images per piece of the models' loss: an int, 'none' (one piece) or "
                         "'auto' (each model's default: none for the reference, 4 with fused "
                         "ops); applies to every provider's model cases")
    ap.add_argument("--no-fused-loss", dest="fused_loss", action="store_false",
                    help="the triton provider's models compute the loss without the fused "
                         "upsample + cross-entropy kernel (chunked or one piece, as "
                         "--loss-chunk says)")
    ap.add_argument("--no-fused-upsample", dest="fused_upsample", action="store_false",
                    help="the triton provider's models upsample in the FPN head and the "
                         "semantic decoder as the reference does (no Triton x2 upsampling, "
                         "no folded chains)")
    norm = ap.add_mutually_exclusive_group()
    norm.add_argument("--no-fused-norm", dest="fused_norm", action="store_const", const=False,
                      help="the triton provider's models run PyTorch's LayerNorm (no Triton "
                           "LayerNorm kernels; default: the Triton ones in CUDA graphs only)")
    norm.add_argument("--eager-fused-norm", dest="fused_norm", action="store_const", const=True,
                      help="the triton provider's models run the Triton LayerNorm in eager "
                           "steps too")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="the model cases (the only ones then run) replay CUDA graphs: "
                         "training steps their forward, losses and backward, inference its "
                         "forward (semask.train.cuda_graphs; GPU, eager providers)")
    ap.add_argument("--isolate", action="store_true",
                    help="run each provider in its own process (a crashing kernel cannot take "
                         "the others down); the time budget is shared out between them")
    ap.add_argument("--list", action="store_true", help="print the selected cases and exit")
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-model-flops", action="store_true", help="skip the model FLOPs table")
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    bad = [p for p in args.providers if p not in providers.PROVIDERS]
    if bad:
        ap.error(f"unknown provider(s) {', '.join(bad)}; choose from {', '.join(providers.PROVIDERS)}")
    args.cases = [c.strip() for c in args.cases.split(",")] if args.cases else None
    args.modes = [m.strip() for m in args.modes.split(",")] if args.modes else None
    if args.modes and not set(args.modes) <= {"fwd", "fwd_bwd"}:
        ap.error(f"--modes takes fwd and fwd_bwd, got {','.join(args.modes)}")
    if args.quick:
        args.time_budget = 130.0 if args.time_budget is None else args.time_budget
        args.compile_budget = 45.0 if args.compile_budget is None else args.compile_budget
    if args.compile_budget is None and args.time_budget is not None:
        args.compile_budget = args.time_budget / 2
    args.target_time = args.target_time or (0.1 if gpu else 0.3)
    if args.threads is None and args.quick and not gpu:
        args.threads = 1
    return args


def select_cases(args) -> list:
    if args.quick:
        cases = _cases.quick_cases(args.batch)
        if args.model_batch:
            for c in cases:
                if c.kind == "model":
                    c.batch = args.model_batch
    else:
        cases = _cases.full_cases(args.batch or 16, args.model_batch)
        if all(p in providers.COMPILED for p in args.providers):
            # alone in its process (--isolate) compile has time for few cases: the SeMask-T
            # model first, as issue 4 compares the fused training step with it
            cases.sort(key=lambda c: c.name != "model/semask_swin_tiny_fpn-512")
    if args.cuda_graphs:  # what graphs change: the model cases
        cases = [c for c in cases if c.kind == "model"]
    if args.modes:
        cases = [c for c in cases if c.mode in args.modes]
    return _cases.select(cases, args.cases)


def default_out(args) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    name = f"{measure.device_slug(args.device)}-{'quick-' if args.quick else ''}{date}"
    return os.path.join(HERE, "results", name)


# ----------------------------------------------------------------------------- one record
def new_record(case, provider: str, dtype: str) -> dict:
    rec = dict.fromkeys(RECORD_FIELDS)
    rec.update(case=case.name, kind=case.kind, shape=case.shape(), dtype=dtype, mode=case.mode,
               provider=provider, batch=case.batch, bytes=_cases.bytes_moved(case, dtype))
    return rec


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def measure_one(case, provider: str, args, rec: dict) -> None:
    """Fill ``rec`` with the measurements of ``provider`` on ``case`` (or a skip reason)."""
    prepared = None
    try:
        prepared = providers.prepare(case, provider, args.device, args.dtype,
                                     loss_chunk=args.loss_chunk, fused_loss=args.fused_loss,
                                     fused_upsample=args.fused_upsample,
                                     fused_norm=args.fused_norm, cuda_graphs=args.cuda_graphs)
        rec["note"] = prepared.note or None
        rec["time_ms"] = measure.time_ms(prepared.step, args.device, args.target_time,
                                         max_reps=prepared.max_reps, long_step=prepared.long_step,
                                         min_reps=min(3, prepared.max_reps))
        if args.device.startswith("cuda") and case.kind != "model":
            _graph_time(prepared, rec, args.device)
        if prepared.peak_memory:
            rec["peak_mem_mb"], rec["peak_mem_growth_mb"] = measure.peak_memory_mb(
                prepared.step, args.device, reserved=prepared.peak_reserved)
        if prepared.count is not None:
            rec["flops"] = measure.count_flops(prepared.count)
        if prepared.error is not None:
            rec["max_rel_err"] = prepared.error()
        rec["flops_source"] = ("run (eager fused model)" if provider == "triton-compile" else
                               "run (eager reference)" if provider == "compile"
                               or (provider == "sdpa" and case.kind == "model") else "run")
    except providers.Skip as exc:
        rec["skipped_reason"] = str(exc)
    except torch.cuda.OutOfMemoryError as exc:
        rec["skipped_reason"] = f"out of memory ({_short(exc)[:120]})"
    except Exception as exc:  # a failing provider must not stop the others
        rec["skipped_reason"] = f"error: {_short(exc)}"
    finally:
        if rec["skipped_reason"]:
            rec["time_ms"] = rec["graph_ms"] = rec["max_rel_err"] = None
            rec["peak_mem_mb"] = rec["peak_mem_growth_mb"] = None
        del prepared
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if case.kind != "model" and (rec["flops"] is None or rec["flops"] == 0 and case.kind not in _cases.NO_MATMUL):
        # skipped, or a kernel FlopCounterMode has no formula for (e.g. SDPA's CPU flash
        # path): count the same call on meta tensors (a loss or upsampling counts 0)
        try:
            rec["flops"] = providers.meta_flops(case, provider, args.dtype)
            rec["flops_source"] = "meta"
        except Exception as exc:
            rec["note"] = providers.join_notes(rec["note"], f"FLOP count failed: {_short(exc)}")


def _graph_time(prepared, rec: dict, device: str) -> None:
    """rec["graph_ms"]: the op's GPU time per call from CUDA graph replays (no host launch
    gaps); a capture that fails leaves it None with the reason (its root cause) in the note."""
    try:
        rec["graph_ms"] = measure.graph_time_ms(prepared.step, rec["time_ms"], device=device)
    except Exception as exc:
        cause = exc.__context__ or exc
        rec["note"] = providers.join_notes(rec["note"], f"no CUDA graph time: {_short(cause)}")


def cuda_broken(device: str) -> str | None:
    """The error text if the CUDA context no longer works (after an illegal access)."""
    if not device.startswith("cuda"):
        return None
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device=device).add_(1).item()
        return None
    except Exception as exc:
        return _short(exc)


def run_cases(cases, args, on_record=None) -> list[dict]:
    """Measure every case x provider; ``on_record(records)`` after each (partial saves)."""
    start = time.perf_counter()
    compile_spent, broken, records = 0.0, None, []
    for case in cases:
        for provider in args.providers:
            rec = new_record(case, provider, args.dtype)
            elapsed = time.perf_counter() - start
            if broken:
                rec["skipped_reason"] = f"CUDA context broken by an earlier error ({broken})"
            elif args.time_budget is not None and elapsed > args.time_budget:
                rec["skipped_reason"] = f"time budget of {args.time_budget:.0f} s exhausted"
            elif provider in providers.COMPILED and args.compile_budget is not None \
                    and compile_spent > args.compile_budget:
                rec["skipped_reason"] = f"compile time budget of {args.compile_budget:.0f} s exhausted"
            if rec["skipped_reason"]:
                if case.kind != "model":
                    try:
                        rec["flops"], rec["flops_source"] = providers.meta_flops(case, provider, args.dtype), "meta"
                    except Exception:
                        pass
            else:
                t0 = time.perf_counter()
                measure_one(case, provider, args, rec)
                if provider in providers.COMPILED:
                    compile_spent += time.perf_counter() - t0
                broken = cuda_broken(args.device)
            records.append(rec)
            _print_record(rec, time.perf_counter() - start)
            if on_record is not None:
                on_record(records)
    return records


def _print_record(rec: dict, elapsed: float) -> None:
    what = f"{rec['case']} {rec['mode']}"
    if rec["time_ms"] is None:
        print(f"[{elapsed:6.1f}s] {what:42s} {rec['provider']:9s} skipped: {rec['skipped_reason']}",
              flush=True)
    else:
        mem = "" if rec["peak_mem_mb"] is None else f"  peak {rec['peak_mem_mb']:9.1f} MB"
        if rec.get("peak_mem_growth_mb") is not None:
            mem += f" (+{rec['peak_mem_growth_mb']:.1f} MB in the call)"
        graph = "" if rec.get("graph_ms") is None else f"  graph {rec['graph_ms']:8.3f} ms"
        print(f"[{elapsed:6.1f}s] {what:42s} {rec['provider']:9s} {rec['time_ms']:10.3f} ms{graph}{mem}",
              flush=True)


def finalize(records: list[dict], peak_bandwidth: float | None,
             matmul_rate: float | None = None) -> None:
    """Derived figures: throughput, TFLOP/s, GB/s, fraction of the floor (the larger of
    the bytes at ``peak_bandwidth`` and the FLOPs at ``matmul_rate``, FLOP/s; which one in
    ``floor_bound``), speed-up over the reference of the same case and mode (of the stream
    times, and of the CUDA graph times where both have one)."""
    ref = {(r["case"], r["mode"]): r["time_ms"] for r in records
           if r["provider"] == "reference" and r["time_ms"]}
    ref_graph = {(r["case"], r["mode"]): r.get("graph_ms") for r in records
                 if r["provider"] == "reference" and r.get("graph_ms")}
    for r in records:
        base_graph, graph = ref_graph.get((r["case"], r["mode"])), r.get("graph_ms")
        r["graph_speedup"] = base_graph / graph if base_graph and graph else None
        t = r["time_ms"]
        if not t:
            r["throughput"] = r["tflops"] = r["gbps"] = r["floor_frac"] = r["speedup"] = None
            r["floor_bound"] = None
            continue
        r["throughput"] = r["batch"] / (t * 1e-3)
        r["tflops"] = r["flops"] / (t * 1e-3) / 1e12 if r["flops"] else None
        r["gbps"] = r["bytes"] / (t * 1e-3) / 1e9 if r["bytes"] else None
        floor_s, r["floor_bound"] = (_cases.floor_time_s(r["bytes"], r["flops"], peak_bandwidth,
                                                        matmul_rate) if r["bytes"] else (None, None))
        r["floor_frac"] = floor_s / (t * 1e-3) if floor_s else None
        base = ref.get((r["case"], r["mode"]))
        r["speedup"] = base / t if base else None


def measured_matmul_rate(results: dict) -> float | None:
    """FLOP/s of the compute floor: the matmul measured at the start of the run."""
    tflops = (results.get("measured") or {}).get("matmul_tflops")
    return tflops * 1e12 if tflops else None


# ----------------------------------------------------------------------------- whole runs
def settings(args, cases) -> dict:
    return dict(quick=args.quick, device=args.device, dtype=args.dtype, batch=args.batch,
                model_batch=args.model_batch, providers=args.providers,
                cases=sorted({c.name for c in cases}), time_budget_s=args.time_budget,
                compile_budget_s=args.compile_budget, target_time_s=args.target_time,
                threads=torch.get_num_threads(), isolate=args.isolate)


def run_in_process(args, cases, out: str) -> dict:
    """All providers in this process; results.json is rewritten after every record, so a
    run killed from outside keeps what it measured."""
    results = dict(schema=SCHEMA_VERSION, environment=measure.environment(args.device),
                   measured=measure.measure_device(args.device), records=[])

    def save(records):
        results["records"] = records
        _write_json(results, out)

    results["records"] = run_cases(cases, args, save)
    return results


def _write_json(results: dict, out: str) -> None:
    tmp = os.path.join(out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, os.path.join(out, "results.json"))


def run_isolated(args, cases) -> dict:
    """One child process per provider, sharing the time budget; a child that dies leaves
    its records skipped with the reason."""
    results, t_start = None, time.perf_counter()
    records, scratch = [], tempfile.mkdtemp(prefix="semask-bench-")
    # fused providers right after the reference; compile last, as it can use up any time
    # the others leave
    rank = ("reference", "triton", "cuda", "sdpa", "compile", "triton-compile")
    order = sorted(args.providers, key=rank.index)
    for i, provider in enumerate(order):
        child_out = os.path.join(scratch, provider)
        argv = [sys.executable, os.path.abspath(__file__), "--device", args.device,
                "--dtype", args.dtype, "--providers", provider, "--out", child_out,
                "--no-report", "--no-model-flops", "--target-time", str(args.target_time),
                "--loss-chunk", "none" if args.loss_chunk is None else str(args.loss_chunk)]
        if not args.fused_loss:
            argv.append("--no-fused-loss")
        if not args.fused_upsample:
            argv.append("--no-fused-upsample")
        if args.fused_norm is not None:
            argv.append("--eager-fused-norm" if args.fused_norm else "--no-fused-norm")
        if args.cuda_graphs:
            argv.append("--cuda-graphs")
        for flag, value in (("--batch", args.batch), ("--model-batch", args.model_batch),
                            ("--cases", ",".join(args.cases) if args.cases else None),
                            ("--modes", ",".join(args.modes) if args.modes else None)):
            if value is not None:
                argv += [flag, str(value)]
        if args.quick:
            argv.append("--quick")
        if args.threads:
            argv += ["--threads", str(args.threads)]
        timeout = None
        if args.time_budget is not None:
            left = args.time_budget - (time.perf_counter() - t_start)
            share = max(left / (len(order) - i), 5.0)
            argv += ["--time-budget", f"{share:.0f}"]
            if provider in providers.COMPILED:
                argv += ["--compile-budget", f"{min(share, args.compile_budget or share):.0f}"]
            timeout = share + 45  # the last measurement may overrun; partial results are kept
        elif args.compile_budget is not None and provider in providers.COMPILED:
            argv += ["--compile-budget", f"{args.compile_budget:.0f}"]
        print(f"== provider {provider}: {' '.join(argv[2:])}", flush=True)
        reason = _run_child(argv, timeout)
        path = os.path.join(child_out, "results.json")
        child = None
        if os.path.exists(path):
            with open(path) as f:
                child = json.load(f)
        done = set()
        if child is not None:
            records += child["records"]
            done = {(r["case"], r["mode"]) for r in child["records"]}
            results = results or child
        for case in cases:  # what a killed or crashed child did not measure
            if (case.name, case.mode) not in done:
                rec = new_record(case, provider, args.dtype)
                rec["skipped_reason"] = reason or "provider process wrote no results"
                records.append(rec)
    shutil.rmtree(scratch, ignore_errors=True)
    if results is None:
        results = dict(schema=SCHEMA_VERSION, environment=measure.environment(args.device), measured={})
    results = dict(results, records=records)
    return results


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # gone already
        pass


def _run_child(argv: list[str], timeout: float | None) -> str | None:
    """Run one provider's process (its own session, so a kill takes its compile workers
    too); the reason its records may be missing, or None. A SIGTERM to this process (a
    time limit around the benchmark) kills the child's group too: in a session of its own
    it would otherwise go on using the GPU."""
    proc = subprocess.Popen(argv, start_new_session=True)

    def terminate(signum, frame):
        _kill_group(proc.pid)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        return f"provider process killed after {timeout:.0f} s"
    finally:
        signal.signal(signal.SIGTERM, previous)
    return f"provider process exited with code {rc}" if rc else None


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # SDPA / inductor chatter; reasons are recorded instead
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = select_cases(args)
    if args.list:
        for c in cases:
            print(f"{c.name:36s} {c.mode:8s} {c.shape()}")
        return 0
    if not cases:
        print("no case matches --cases", file=sys.stderr)
        return 2
    out = args.out or default_out(args)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    results = run_isolated(args, cases) if args.isolate else run_in_process(args, cases, out)
    env, measured = results["environment"], results["measured"]
    peak_bw, source = _cases.floor_bandwidth(env["device"], measured.get("copy_gbps"))
    finalize(results["records"], peak_bw, measured_matmul_rate(results))
    results.update(settings=settings(args, cases),
                   peak_bandwidth=dict(gbps=peak_bw / 1e9 if peak_bw else None, source=source),
                   perf_model=_cases.perf_model_rows("bf16"),
                   wall_s=None)
    if not args.no_model_flops:
        from benchmarks.model_flops import model_flops
        results["model_flops"] = model_flops()
    results["wall_s"] = time.perf_counter() - t0
    _write_json(results, out)
    if not args.no_report:
        report.write_report(results, out)
        print(report.summary_table(results))
    print(f"wrote {out} in {results['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
