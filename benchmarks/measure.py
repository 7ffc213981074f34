"""Timing, peak memory, FLOP counting and the environment (device, versions, commit).

GPU: per call, an L2 flush that the host waits for, then CUDA events around the call
(median), after a warm-up; a CUDA-event loop of back-to-back calls for long steps. CPU:
repeated ``time.perf_counter`` after warm-up, median. Both GPU timings include the time
the GPU waits for the host to launch the step's kernels (a flushed call starts on an idle
GPU, so its whole launch cost counts); :func:`graph_time_ms` times CUDA graph replays
instead, which leaves out the host (its GPU time per call). Peak memory:
``torch.cuda.max_memory_allocated`` on GPU, with cuBLAS's workspaces and the allocator
cache freed first, and its growth over what was allocated before the call; on CPU the
process peak RSS (VmHWM, reset through /proc/self/clear_refs so each measurement has its
own peak).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import semask.ops.flops  # noqa: F401  (FLOP formulas of the fused custom ops)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, target_s: float = 0.3, max_reps: int = 100,
            long_step: bool = False, min_reps: int = 3) -> float:
    """Median time of ``fn`` in milliseconds (see module docstring)."""
    if device.startswith("cuda"):
        fn()  # first call outside the timing: autotuning, compilation, lazy init
        torch.cuda.synchronize()
        if long_step:
            return _cuda_event_loop(fn, max(target_s, 0.5), max_reps)
        return _flushed_calls_ms(fn, target_s)
    if max_reps > 1:
        fn()  # warm-up (a single-shot measurement, e.g. the Triton interpreter, has none)
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < target_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _l2_flush_buffer() -> torch.Tensor:
    """int32 buffer of twice the L2 size (at least 64 MiB): zeroing it evicts the L2."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return torch.empty(max(2 * getattr(props, "L2_cache_size", 0), 64 << 20) // 4,
                       dtype=torch.int32, device="cuda")


def _flushed_calls_ms(fn, target_s: float, warmup_s: float = 0.025, max_reps: int = 1000) -> float:
    """Median over calls of ``fn``, each timed by CUDA events from an idle GPU with a cold
    L2: flush, wait for it, start event, ``fn()``, end event. The wait puts the whole host
    launch cost of a call in its time (``do_bench`` records the start while the flush
    still runs, hiding up to a flush's duration of it). Warm-up ~``warmup_s``, then calls
    for ~``target_s`` of wall time, flushes and waits included (5 to ``max_reps``)."""
    cache = _l2_flush_buffer()

    def timed(reps: int) -> list[float]:
        pairs = []
        for _ in range(reps):
            cache.zero_()
            torch.cuda.synchronize()
            pairs.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            pairs[-1][0].record()
            fn()
            pairs[-1][1].record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in pairs]

    t0 = time.perf_counter()
    timed(3)
    per_call = max((time.perf_counter() - t0) / 3, 1e-6)  # seconds of wall time
    timed(int(min(max_reps, warmup_s / per_call)))
    return statistics.median(timed(int(min(max_reps, max(5, target_s / per_call)))))


def _cuda_event_loop(fn, target_s: float, max_reps: int) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    estimate = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(3, target_s / estimate)))
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
             for _ in range(reps)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def graph_time_ms(fn: Callable[[], object], estimate_ms: float, graph_ms: float = 5.0,
                  replays: int = 20, device: str = "cuda") -> float:
    """GPU time of one call of ``fn`` in ms, without host launch gaps: ``fn`` is captured
    into a CUDA graph n times (n * estimate_ms ~ graph_ms), each call after an L2 flush (a
    zero fill of twice the L2 size, as :func:`time_ms` flushes), and a second graph holds the
    n flushes alone; the graphs' replays alternate and the result is (median of the first -
    median of the second) / n. For many small launches METHOD.md advises graph replays:
    they measure what the kernels cost when the host keeps ahead of the GPU, as in a
    model step. Raises what capture raises (an op that syncs the host, say), with the
    stream and memory restored."""
    n = int(min(50, max(1, round(graph_ms / max(estimate_ms, 1e-3)))))
    with torch.cuda.device(torch.device(device)):
        cache = _l2_flush_buffer()
        home = torch.cuda.current_stream()
        graphs = []
        try:
            side = _side_stream()
            side.wait_stream(home)
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(2):
                    cache.zero_()
                    fn()
            home.wait_stream(side)
            torch.cuda.synchronize()
            for with_fn in (True, False):
                graphs.append(torch.cuda.CUDAGraph())
                with torch.cuda.graph(graphs[-1]):
                    for _ in range(n):
                        cache.zero_()
                        if with_fn:
                            fn()
            return _replay_difference_ms(graphs, replays) / n
        finally:
            torch.cuda.set_stream(home)  # a failed capture_end leaves the capture stream set
            del graphs
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


_SIDE_STREAMS: dict = {}


def _side_stream() -> torch.cuda.Stream:
    """One side stream per device, made once: each new stream gets its own cuBLAS
    workspace from PyTorch's allocator, which would stay allocated (and inflate peak
    memory) for every graph timing otherwise."""
    index = torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream()
    return _SIDE_STREAMS[index]


def _replay_difference_ms(graphs: list, replays: int) -> float:
    """median replay time of graphs[0] - that of graphs[1] (replays alternate), >= 0."""
    times = [[], []]
    for graph in graphs:
        graph.replay()
    torch.cuda.synchronize()
    for _ in range(replays):
        for graph, seen in zip(graphs, times):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            seen.append((start, end))
    torch.cuda.synchronize()
    work, flush = (statistics.median(s.elapsed_time(e) for s, e in seen) for seen in times)
    return max(work - flush, 0.0)


# ----------------------------------------------------------------------------- memory
def _rss_peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak is the process's lifetime peak


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def peak_memory_mb(fn: Callable[[], object], device: str,
                   reserved: bool = False) -> tuple[float | None, float | None]:
    """(peak, growth) in MiB of one call of ``fn``: the GPU allocator's peak and its growth
    over what was allocated just before the call (cuBLAS's workspaces, one per stream
    that ran a matmul, and the cache freed first, so earlier work does not count), or the
    process's peak RSS and its growth over the RSS before; ``reserved``: on a GPU the peak
    reserved instead (what a CUDA graph's pool holds is reserved, not allocated, while it
    replays)."""
    if device.startswith("cuda"):
        synchronize(device)
        if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
            torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_reserved() if reserved else torch.cuda.memory_allocated()
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_reserved() if reserved else torch.cuda.max_memory_allocated()
        return peak / 2 ** 20, (peak - before) / 2 ** 20
    _reset_rss_peak()
    before = _rss_mb()
    fn()
    peak = _rss_peak_mb()
    return peak, None if peak is None or before is None else max(peak - before, 0.0)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as FlopCounterMode counts them (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- environment
def git_commit() -> str:
    """$SEMASK_COMMIT as given when set (a copied checkout, as on a lent GPU machine, can
    carry stale git metadata or none), else HEAD, with '-dirty' when ``git status
    --porcelain`` lists anything (changes or untracked files, ignored ones not), else
    'unknown'."""
    if os.environ.get("SEMASK_COMMIT"):
        return os.environ["SEMASK_COMMIT"]
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        sha = git("rev-parse", "HEAD")
        return sha + ("-dirty" if git("status", "--porcelain") else "")
    except Exception:
        return "unknown"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"model name\s*:\s*(.+)", f.read())
        if match:
            return f"CPU: {match.group(1).strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def device_slug(device: str) -> str:
    """Short folder-safe device label: 'h100', 'h200', 'a100', ... or 'cpu'."""
    if not device.startswith("cuda"):
        return "cpu"
    name = device_name(device)
    match = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name.upper())
    return (match.group(1) if match else re.sub(r"[^A-Za-z0-9]+", "-", name)).lower()


def measure_device(device: str) -> dict:
    """Measured device-to-device copy bandwidth (bytes read + written per second) and a
    large matmul's rate, so every result states the ceilings it was taken under."""
    big = device.startswith("cuda")
    nbytes = (1 << 30) if big else (1 << 27)
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    y = torch.empty_like(x)
    t = time_ms(lambda: y.copy_(x), device, target_s=0.2 if big else 0.5, max_reps=20)
    copy_bps = 2 * nbytes / (t * 1e-3)
    del x, y
    n, dtype = (8192, torch.bfloat16) if big else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_ms(lambda: a @ b, device, target_s=0.2 if big else 0.5, max_reps=20)
    return dict(copy_gbps=copy_bps / 1e9, matmul_tflops=2 * n ** 3 / (t * 1e-3) / 1e12,
                matmul=f"{n}x{n}x{n} {str(dtype).replace('torch.', '')}")


def environment(device: str) -> dict:
    """Device, versions, commit and date for results.json."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception as exc:
        triton_version = f"not importable ({type(exc).__name__})"
    env = dict(device=device_name(device), device_type="cuda" if device.startswith("cuda") else "cpu",
               torch=torch.__version__, triton=triton_version, python=platform.python_version(),
               commit=git_commit(), date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               cpu_threads=torch.get_num_threads(),
               triton_interpret=os.environ.get("TRITON_INTERPRET") == "1")
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}",
                   sm_count=props.multi_processor_count,
                   memory_gb=round(props.total_memory / 2 ** 30, 1))
    return env
