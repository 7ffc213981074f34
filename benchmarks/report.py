#!/usr/bin/env python
"""Markdown table and PNG plots made from a results.json (and only from it).

    python benchmarks/report.py benchmarks/results/<run>/           # rewrite md + plots
    python benchmarks/report.py --merge OUT a/results.json b/results.json
        # records of several runs on one device (e.g. one per provider), speed-ups recomputed
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

PROVIDER_ORDER = ("reference", "sdpa", "compile", "triton", "triton-compile", "cuda")
COLORS = {"reference": "#7f7f7f", "sdpa": "#1f77b4", "compile": "#2ca02c", "triton": "#d62728",
          "triton-compile": "#ff7f0e", "cuda": "#9467bd"}
# issue 4's speed goals (H100, bf16, batch 16, 512x512): (label, kind, mode, figure, bound);
# the memory goal compares the absolute peaks (peak_mem_mb) of the two providers' steps
GOAL_DTYPE, GOAL_BATCH = "bf16", 16
GOALS = (
    ("window attention fwd >= 4x eager", "window", "fwd", "speedup", 4.0),
    ("window attention fwd >= 1.5x SDPA", "window", "fwd", "vs_sdpa", 1.5),
    ("window attention fwd >= 60% of the HBM floor", "window", "fwd", "floor_frac", 0.6),
    ("window attention fwd+bwd >= 3x eager", "window", "fwd_bwd", "speedup", 3.0),
    ("semantic attention fwd+bwd >= 2.5x eager", "semantic", "fwd_bwd", "speedup", 2.5),
    ("SeMask-T FPN training step >= 1.8x eager", "model", "fwd_bwd", "speedup", 1.8),
    ("SeMask-T FPN training step >= 1.15x torch.compile", "model", "fwd_bwd", "vs_compile", 1.15),
    ("SeMask-T FPN peak training memory <= 0.6x eager", "model", "fwd_bwd", "mem_ratio", 0.6),
)


def _providers(records) -> list[str]:
    seen = {r["provider"] for r in records}
    return [p for p in PROVIDER_ORDER if p in seen] + sorted(seen - set(PROVIDER_ORDER))


def _rows(records) -> list[tuple]:
    """(case, mode) in first-seen order."""
    return list(dict.fromkeys((r["case"], r["mode"]) for r in records))


def _index(records) -> dict:
    return {(r["case"], r["mode"], r["provider"]): r for r in records}


def _fmt(x, spec=".3g", none="–") -> str:
    return none if x is None else format(x, spec)


def _is_cpu(results) -> bool:
    return results["environment"].get("device_type") == "cpu"


# ----------------------------------------------------------------------------- markdown
def write_report(results: dict, out: str) -> None:
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(results))
    plot_speedup(results, os.path.join(out, "speedup.png"))
    plot_memory(results, os.path.join(out, "memory.png"))


def markdown(results: dict) -> str:
    env, rec = results["environment"], results["records"]
    s = results.get("settings", {})
    lines = [f"# semask benchmarks: {env['device']}", ""]
    if _is_cpu(results):
        lines += ["> **These are CPU numbers** "
                  f"(torch threads: {s.get('threads', env.get('cpu_threads'))}{', --quick' if s.get('quick') else ''}, "
                  f"{s.get('dtype')}): they show that every path runs and what it counts; they "
                  "say nothing about GPU speed. Peak memory is the process's peak RSS. Triton "
                  "rows on a CPU are runs of the Triton interpreter, not performance.", ""]
    measured = results.get("measured") or {}
    bw = results.get("peak_bandwidth") or {}
    lines += ["| | |", "|---|---|",
              f"| device | {env['device']}" + (f" (sm {env['capability']}, {env['sm_count']} SMs, "
                                               f"{env['memory_gb']} GB)" if env.get("capability") else "") + " |",
              f"| torch / Triton / Python | {env['torch']} / {env['triton']} / {env['python']}"
              + (f" (CUDA {env['cuda']})" if env.get("cuda") else "") + " |",
              f"| commit | `{env['commit']}` |", f"| date (UTC) | {env['date']} |",
              f"| dtype, op batch, model batch | {s.get('dtype')}, {_batches(rec, False)}, "
              f"{_batches(rec, True)} |",
              f"| measured copy bandwidth | {_fmt(measured.get('copy_gbps'), '.0f')} GB/s "
              f"(read + write); {measured.get('matmul', 'matmul')}: "
              f"{_fmt(measured.get('matmul_tflops'), '.1f')} TFLOP/s |",
              f"| bandwidth of the floor | {_fmt(bw.get('gbps'), '.0f')} GB/s, {bw.get('source', '')} |",
              f"| compute of the floor | {_fmt(measured.get('matmul_tflops'), '.1f')} TFLOP/s "
              f"(the matmul measured above) |",
              ""]
    lines += ["Times are medians after warm-up (GPU ops: CUDA events around each call, started "
              "once an L2 flush has finished, so a call's whole launch cost counts; model steps: "
              "a CUDA-event loop; CPU: `time.perf_counter`). FLOPs are counted with `FlopCounterMode` (2 per "
              "multiply-add; fused ops through the formulas in `semask/ops/flops.py`, equal to "
              "the reference's matmuls). GB/s uses the bytes model of "
              "`shared/PERF_MODEL.md` (see `benchmarks/cases.py`); % floor is the larger of "
              "its bytes at the floor's bandwidth and its FLOPs at the measured matmul rate "
              "over the time (bound: memory or compute). Peak MB: the allocator's peak in a "
              "call (inputs, weights, optimizer state included), growth MB: its rise over what "
              "was allocated before the call. Model `fwd_bwd` is a whole "
              "training step (forward, loss, backward, AdamW). Rel. err (op cases): "
              "max |out - ref| / max |ref| of the output (fwd) or of every input gradient "
              "(fwd_bwd) against the float32 reference on the same inputs.", "",
              "![speed-up](speedup.png)", "", "![peak memory](memory.png)", ""]
    lines += _speedup_matrix(rec)
    if _has_graph_times(rec):
        lines += _speedup_matrix(rec, "graph_ms")
    lines += _per_image(results)
    lines += _goals(results)
    lines += _details(rec)
    if results.get("model_flops"):
        lines += _model_flops(results["model_flops"])
    if results.get("perf_model"):
        lines += _perf_model(results["perf_model"])
    return "\n".join(lines) + "\n"


def _batches(records, models: bool) -> str:
    sizes = sorted({r["batch"] for r in records if (r["kind"] == "model") == models})
    return "/".join(map(str, sizes)) or "–"


# time field -> its speed-up field
SPEEDUP = {"time_ms": "speedup", "graph_ms": "graph_speedup"}


def _has_graph_times(records) -> bool:
    return any(r.get("graph_ms") for r in records)


def _speedup_matrix(records, field: str = "time_ms") -> list[str]:
    graph = field == "graph_ms"
    if graph:
        records = [r for r in records if r["kind"] != "model"]
    provs, idx, reasons = _providers(records), _index(records), {}
    out = (["## GPU time per call under CUDA graph replay (speed-up over the eager reference)",
            "", "The same op steps captured in CUDA graphs and replayed, each call after an L2 "
            "flush (`benchmarks/measure.py:graph_time_ms`): no host launch gaps, so this is "
            "what the kernels cost when the host keeps ahead of the GPU, as in a model step. "
            "The table above includes the host's launch time where it exceeds the GPU's.", ""]
           if graph else ["## Speed-up over the eager reference (median time)", ""])
    out += ["| case | mode | " + " | ".join(provs) + " |", "|---|---|" + "---|" * len(provs)]
    for case, mode in _rows(records):
        cells = []
        for p in provs:
            r = idx.get((case, mode, p))
            if r is None:
                cells.append("")
            elif r["time_ms"] is None:
                n = reasons.setdefault(r["skipped_reason"], len(reasons) + 1)
                cells.append(f"skipped [{n}]")
            elif r.get(field) is None:
                cells.append("–")
            else:
                sp = f"{r[SPEEDUP[field]]:.2f}x " if r.get(SPEEDUP[field]) else ""
                cells.append(f"{sp}({_fmt_ms(r[field])})" + (" *" if r.get("note") and p == "triton"
                                                              and "interpreter" in r["note"] else ""))
        out.append(f"| {case} | {mode} | " + " | ".join(cells) + " |")
    out.append("")
    if any("interpreter" in (r.get("note") or "") for r in records):
        out += ["\\* Triton interpreter on CPU: a correctness path, its time is not performance.", ""]
    if reasons:
        out += ["Skipped:", ""] + [f"{n}. {reason}" for reason, n in reasons.items()] + [""]
    return out


def _fmt_ms(t: float) -> str:
    return f"{t:.3g} ms" if t < 1000 else f"{t / 1e3:.3g} s"


def goal_values(records, field: str = "time_ms") -> list[dict]:
    """Each goal of issue 4 per fused provider: geometric mean, min and count over the
    matching 512x512 cases that ran at the goals' dtype and batch (bf16, 16; model goals:
    SeMask-T only), from the stream times (``field="time_ms"``) or the CUDA graph times
    (``"graph_ms"``: op goals only). ``other_settings``: cases ran, none at those settings."""
    idx, out = _index(records), []
    for label, kind, mode, figure, bound in GOALS:
        if field == "graph_ms" and kind == "model":
            continue
        for prov in ("triton", "cuda", "triton-compile"):
            vals, other_settings = [], False
            for r in records:
                if r["provider"] != prov or r["kind"] != kind or r["mode"] != mode or r["time_ms"] is None:
                    continue
                if "-512" not in r["case"] or (kind == "model" and "tiny" not in r["case"]):
                    continue
                if r["dtype"] != GOAL_DTYPE or r["batch"] != GOAL_BATCH:
                    other_settings = True
                    continue
                v = _goal_figure(r, idx, figure, field)
                if v is not None:
                    vals.append(v)
            if not vals:
                if prov != "triton-compile" or other_settings:  # a model-only provider: no empty op rows
                    out.append(dict(goal=label, provider=prov, n=0, other_settings=other_settings))
                continue
            geo = math.exp(sum(math.log(v) for v in vals) / len(vals))
            worst = max(vals) if figure == "mem_ratio" else min(vals)
            ok = worst <= bound if figure == "mem_ratio" else worst >= bound
            out.append(dict(goal=label, provider=prov, n=len(vals), geomean=geo, worst=worst, met=ok))
    return out


def _goal_figure(r, idx, figure, field="time_ms"):
    t = r.get(field)
    if not t:
        return None
    if figure == "floor_frac":  # bytes / bandwidth / time
        return r["floor_frac"] * r["time_ms"] / t if r.get("floor_frac") else None
    other = {"speedup": "reference", "vs_sdpa": "sdpa", "vs_compile": "compile",
             "mem_ratio": "reference"}[figure]
    o = idx.get((r["case"], r["mode"], other))
    if o is None or o["time_ms"] is None:
        return None
    if figure == "mem_ratio":
        return r["peak_mem_mb"] / o["peak_mem_mb"] if r["peak_mem_mb"] and o["peak_mem_mb"] else None
    return o[field] / t if o.get(field) else None


def _goals(results) -> list[str]:
    out = ["## Speed goals of issue 4", ""]
    if _is_cpu(results):
        return out + ["The goals are defined on an H100 (bf16, batch 16, 512x512); this is a CPU run, "
                      "so they are not evaluated here.", ""]
    device = results["environment"]["device"]
    # the goals' GPU by its exact name (cases.DEVICE_NAMES): an H100 PCIe or NVL is not it
    from benchmarks.cases import DEVICE_NAMES
    on = "" if DEVICE_NAMES.get(device.strip()) == "H100" else f" on {device}"
    out += [f"Over the 512x512 cases that ran at bf16, batch 16 (worst case decides; the goals "
            f"are set for an H100, bf16, batch 16){'' if not on else f'; measured{on}, not an H100 SXM'}."]
    fields = ["time_ms"] + (["graph_ms"] if _has_graph_times(results["records"]) else [])
    for field in fields:
        if field == "graph_ms":
            out += ["", "The op goals again from the GPU times under CUDA graph replay:"]
        out += ["", "| goal | provider | cases | geo-mean | worst | met |", "|---|---|---|---|---|---|"]
        for g in goal_values(results["records"], field):
            if g["n"] == 0:
                why = "not the goal's settings" if g["other_settings"] else "not measured"
                out.append(f"| {g['goal']} | {g['provider']} | 0 | – | – | {why} |")
            else:
                out.append(f"| {g['goal']} | {g['provider']} | {g['n']} | {g['geomean']:.2f} | "
                           f"{g['worst']:.2f} | {'yes' if g['met'] else 'no'}{on} |")
    return out + [""]


def per_image_rows(results, field: str = "time_ms") -> list[dict]:
    """Window attention of a whole network per image (forward): the stage cases summed as
    the network calls them (depth/2 unshifted + depth/2 shifted blocks per stage), against
    the bytes model's floor. Only where every stage of both kinds was measured (``field``:
    stream or CUDA graph times)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.cases import ARCH, VARIANTS, window_case

    idx, rows = _index(results["records"]), []
    bw = (results.get("peak_bandwidth") or {}).get("gbps")
    for arch in ARCH:
        for img in (224, 512):
            depths = VARIANTS[ARCH[arch]].depths
            for prov in _providers(results["records"]):
                total, nbytes, batch = 0.0, 0, None
                for stage, depth in enumerate(depths):
                    for shifted in (False, True):
                        name = window_case(arch, img, stage, shifted, "fwd", 1).name
                        r = idx.get((name, "fwd", prov))
                        if r is None or r.get(field) is None or (batch and r["batch"] != batch):
                            break
                        batch = r["batch"]
                        total += depth / 2 * r[field] / r["batch"]
                        nbytes += depth / 2 * r["bytes"] / r["batch"]
                    else:
                        continue
                    break
                else:
                    rows.append(dict(network=f"{arch}-{img}", provider=prov, us_per_image=total * 1e3,
                                     floor_us=nbytes / (bw * 1e9) * 1e6 if bw else None))
    return rows


def _per_image(results) -> list[str]:
    rows = [dict(r, timing="stream") for r in per_image_rows(results)]
    rows += [dict(r, timing="CUDA graph") for r in per_image_rows(results, "graph_ms")]
    if not rows:
        return []
    out = ["## Window attention per image (forward, all blocks of the network)", "",
           "| network | provider | timing | us per image | floor us | % of floor |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        frac = r["floor_us"] / r["us_per_image"] * 100 if r["floor_us"] else None
        out.append(f"| {r['network']} | {r['provider']} | {r['timing']} | {r['us_per_image']:.1f} | "
                   f"{_fmt(r['floor_us'], '.1f')} | {_fmt(frac, '.1f')} |")
    return out + [""]


def _details(records) -> list[str]:
    out = ["## All records", "",
           "| case | mode | provider | shape | time | graph time | img/s | GFLOP | TFLOP/s | GB/s | "
           "% floor | bound | peak MB | growth MB | speed-up | rel. err |", "|" + "---|" * 16]
    for r in records:
        if r["time_ms"] is None:
            continue
        out.append(f"| {r['case']} | {r['mode']} | {r['provider']} | {r['shape']} | "
                   f"{_fmt_ms(r['time_ms'])} | {_fmt_ms(r['graph_ms']) if r.get('graph_ms') else '–'} | "
                   f"{_fmt(r['throughput'], '.4g')} | "
                   f"{_fmt(r['flops'] / 1e9 if r['flops'] else None, '.4g')} | "
                   f"{_fmt(r['tflops'], '.3g')} | {_fmt(r['gbps'], '.4g')} | "
                   f"{_fmt(r['floor_frac'] * 100 if r['floor_frac'] else None, '.1f')} | "
                   f"{r.get('floor_bound') or '–'} | {_fmt(r['peak_mem_mb'], '.0f')} | "
                   f"{_fmt(r.get('peak_mem_growth_mb'), '.0f')} | {_fmt(r['speedup'], '.2f')} | "
                   f"{_fmt(r.get('max_rel_err'), '.1e')} |")
    return out + [""]


def _model_flops(mf) -> list[str]:
    out = ["## Model FLOPs (GMACs = multiply-adds, batch 1, counted on meta tensors)", "",
           "Our Swin backbone against the published ImageNet figures (Liu et al. 2021; the "
           "published params include the 1000-class head, ours do not):", "",
           "| model | input | window | GMACs (ours) | published | diff | params M (ours) | published |",
           "|---|---|---|---|---|---|---|---|"]
    for r in mf["swin"]:
        out.append(f"| {r['model']} | {r['input']} | {r['window']} | {r['gmacs']:.2f} | "
                   f"{r['published_gmacs']} | {r['rel_diff'] * 100:+.1f}% | "
                   f"{r['backbone_params_m']:.1f} | {r['published_params_m']} |")
    out += ["", "What SeMask adds (512x512, ADE20K's 150 classes, semantic attention windowed "
            "per stage as released):", "",
            "| model | semantic windowed | Swin backbone | + semantic layers | FPN head | total | "
            "Swin-FPN total | params M | Swin-FPN params M | published params M |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in mf["semask"]:
        win = "".join("W" if w else "G" for w in r["semantic_windowed"])
        out.append(f"| {r['model']} | {win} | {r['swin_backbone_gmacs']:.1f} | "
                   f"+{r['semantic_layers_gmacs']:.1f} | {r['fpn_head_gmacs']:.1f} | "
                   f"{r['total_gmacs']:.1f} | {r['swin_fpn_total_gmacs']:.1f} | "
                   f"{r['params_m']:.1f} | {r['swin_fpn_params_m']:.1f} | {r['published_params_m']} |")
    return out + ["", "W = windowed, G = global semantic attention in stages 0-3.", ""]


def _perf_model(rows) -> list[str]:
    out = ["## Bytes model, recomputed (per image, forward, all blocks, bf16)", "",
           "| op | input | MB | GFLOP | flop/B | floor H100 | floor H200 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['kind']} | {r['name']} | {r['bytes'] / 1e6:.1f} | {r['flops'] / 1e9:.3f} | "
                   f"{r['intensity']:.0f} | {r['floor_us']['H100']:.1f} us | {r['floor_us']['H200']:.1f} us |")
    return out + [""]


def summary_table(results: dict) -> str:
    """Short plain-text speed-up table for the end of a console log."""
    provs = _providers(results["records"])
    idx = _index(results["records"])
    lines = [f"{results['environment']['device']} | torch {results['environment']['torch']} | "
             f"commit {results['environment']['commit'][:12]}",
             f"{'case':36s} {'mode':8s} " + " ".join(f"{p:>16s}" for p in provs)]
    rows = _rows(results["records"])
    lines += [_summary_row(case, mode, provs, idx, "time_ms", "skip") for case, mode in rows]
    graph = [(c, m) for c, m in rows if any(idx.get((c, m, p), {}).get("graph_ms") for p in provs)]
    if graph:
        lines.append("GPU time under CUDA graph replay:")
    lines += [_summary_row(case, mode, provs, idx, "graph_ms", "–") for case, mode in graph]
    return "\n".join(lines)


def _summary_row(case, mode, provs, idx, field: str, missing: str) -> str:
    """One line of :func:`summary_table`: each provider's ``field`` time and speed-up."""
    cells = []
    for p in provs:
        r = idx.get((case, mode, p)) or {}
        sp = f" {r[SPEEDUP[field]]:.2f}x" if r.get(SPEEDUP[field]) else ""
        cells.append(f"{_fmt_ms(r[field]) + sp if r.get(field) else missing:>16s}")
    return f"{case:36s} {mode:8s} " + " ".join(cells)


# ----------------------------------------------------------------------------- plots
def _bar_plot(results: dict, path: str, field: str, skip_reference: bool, xlabel: str, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    records = [r for r in results["records"] if r.get(field)]
    if skip_reference:
        records = [r for r in records if r["provider"] != "reference"]
    kinds = [k for k in ("window", "semantic", "loss", "upsample", "norm", "model")
             if any(r["kind"] == k for r in records)]
    if not kinds:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, f"no {field} to plot", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    provs = _providers(records)
    values = [r[field] for r in records]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    if field == "speedup":
        lo, hi = min(lo, 0.5), max(hi, 2.0)
    rows_per_kind = {k: _rows([r for r in records if r["kind"] == k]) for k in kinds}
    heights = [max(2.2, 0.12 * len(rows) * len(provs) + 0.8) for rows in rows_per_kind.values()]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, sum(heights)),
                             gridspec_kw=dict(height_ratios=heights), squeeze=False)
    idx = _index(records)
    bar = 0.8 / len(provs)
    for ax, kind in zip(axes[:, 0], kinds):
        rows = rows_per_kind[kind]
        for j, p in enumerate(provs):
            ys, xs = [], []
            for i, (case, mode) in enumerate(rows):
                r = idx.get((case, mode, p))
                if r is not None:
                    ys.append(i + (j - (len(provs) - 1) / 2) * bar)
                    xs.append(r[field])
            if field == "speedup":  # bars grow from 1x, left (slower) or right (faster)
                ax.barh(ys, [x - 1 for x in xs], left=1, height=bar, color=COLORS.get(p), label=p)
            else:
                ax.barh(ys, xs, height=bar, color=COLORS.get(p), label=p)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{c.split('/', 1)[1]} {m}" for c, m in rows], fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first case on top, no empty margins
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" + ("x" if field == "speedup" else "")))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if field == "speedup":
            ax.xaxis.set_major_locator(FixedLocator([2.0 ** k for k in range(-6, 9)]))
            ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{kind}", fontsize=9, loc="left")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel(xlabel)
    env = results["environment"]
    fig.suptitle(f"{title}: {env['device']}, {results.get('settings', {}).get('dtype', '')}, "
                 f"commit {env['commit'][:10]}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / sum(heights)))  # room for the suptitle
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_speedup(results: dict, path: str) -> None:
    _bar_plot(results, path, "speedup", True, "speed-up over the eager reference (log)",
              "Speed-up per case and provider")


def plot_memory(results: dict, path: str) -> None:
    _bar_plot(results, path, "peak_mem_mb", False,
              "peak memory, MB (log; GPU allocator peak, CPU process RSS)", "Peak memory per provider")


# ----------------------------------------------------------------------------- CLI
def _run_identity(run: dict) -> dict:
    """What runs must share to be merged: device, torch, Triton, commit and dtype."""
    dtype = ((run.get("settings") or {}).get("dtype")
             or "/".join(sorted({r["dtype"] for r in run["records"]})))
    return dict({k: run["environment"].get(k) for k in ("device", "torch", "triton", "commit")},
                dtype=dtype)


def merge(paths: list[str]) -> dict:
    """Records of several results.json of one device, dtype, torch, Triton and commit (any
    difference is refused, naming the field) in one results dict (the first file's
    environment). Per case, mode and provider a measured record wins over a skipped one,
    and a later file over an earlier; speed-ups are recomputed by the caller."""
    runs = []
    for p in paths:
        with open(os.path.join(p, "results.json") if os.path.isdir(p) else p) as f:
            runs.append(json.load(f))
    first = _run_identity(runs[0])
    for path, run in zip(paths[1:], runs[1:]):
        for field, value in _run_identity(run).items():
            if value != first[field]:
                raise SystemExit(f"refusing to merge runs of different {field}: {first[field]!r} "
                                 f"({paths[0]}) and {value!r} ({path})")
    merged, chosen = dict(runs[0]), {}
    for run in runs:
        for rec in run["records"]:
            key = (rec["case"], rec["mode"], rec["provider"])
            if key not in chosen or rec["time_ms"] is not None or chosen[key]["time_ms"] is None:
                chosen[key] = rec
    merged["records"] = list(chosen.values())
    merged["merged_from"] = [dict(commit=r["environment"]["commit"], date=r["environment"]["date"])
                             for r in runs]
    return merged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="results folder(s) or results.json file(s)")
    ap.add_argument("--merge", metavar="OUT", help="merge the inputs into OUT/results.json first")
    args = ap.parse_args(argv)
    if args.merge:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from benchmarks.run import finalize, measured_matmul_rate
        results = merge(args.inputs)
        gbps = (results.get("peak_bandwidth") or {}).get("gbps")
        finalize(results["records"], gbps * 1e9 if gbps else None, measured_matmul_rate(results))
        os.makedirs(args.merge, exist_ok=True)
        with open(os.path.join(args.merge, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        out = args.merge
    else:
        path = args.inputs[0]
        out = path if os.path.isdir(path) else os.path.dirname(path) or "."
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
    write_report(results, out)
    print(f"wrote {out}/results.md, speedup.png, memory.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
