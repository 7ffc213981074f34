"""Benchmark cases (real stage shapes) and the bytes model of ``shared/PERF_MODEL.md``.

A window-attention case is one attention call of one Swin block at a stage's shape:
qkv [B, Hp, Wp, 3C] of the zero-padded map -> out [B, Hp, Wp, C]. A semantic case is one
semantic-layer attention call: q, k [B, Hp, Wp, K], v [B, Hp, Wp, C]. A loss case is one
of the model's two losses: stride-4 logits [B, K, h, w] upsampled to the labels [B, H, W]
and cross-entropy (sum over pixels; fwd_bwd: with the logits' gradient). An upsample case
is one bilinear x2 upsampling of the FPN head or the semantic decoder: x [B, C, h, w] ->
[B, C, 2h, 2w] (NCHW, as the head's maps). A norm case is one LayerNorm of a Swin block
at a stage's shape: x [B, H, W, C] -> [B, H, W, C]. A model case is a
whole SeMask-Swin FPN: inference (mode ``fwd``) or one training step (mode ``fwd_bwd``:
forward, loss, backward and the trainer's AdamW step).

Bytes model (the fewest bytes a fused kernel must move; PERF_MODEL.md):
    window   fwd: read q, k, v, write out              T * 4C * e
             bwd: read qkv, out, dout, lse; write dqkv  T * 8C * e + T * heads * 4
    semantic fwd: read q, k, v, write out              T * (2K + 2C) * e
             bwd: read q, k, v, out, dout, lse; write dq, dk, dv   T * (4K + 4C) * e + T * 4
    loss     fwd: read logits and int64 labels          B*K*h*w * e + B*H*W * 8
             fwd_bwd: also write the logits' gradient   + B*K*h*w * e
    upsample fwd: read x, write y                      5 * B*C*h*w * e
             fwd_bwd: also read dy, write dx            + 5 * B*C*h*w * e
    norm     fwd: read x, write y                      2 * T*C * e
             fwd_bwd: also read x, dy, write dx;        + 3 * T*C * e + T * 16
                      stats written and read back
T = B * Hp * Wp tokens (padding included), e = bytes per element; the float32 log-sum-exp
(and a LayerNorm's mean and rstd) is written by the forward when a backward follows. The
small bias table is left out.

The floor of a case is the larger of its bytes at the peak bandwidth and its FLOPs at the
measured matmul rate (:func:`floor_time_s`): memory- or compute-bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from semask.models.semask import VARIANTS, default_semantic_windowed

ARCH = {"swin_t": "tiny", "swin_s": "small", "swin_b": "base", "swin_l": "large"}
SEMASK_ARCH = {"semask_t": "tiny", "semask_s": "small", "semask_b": "base", "semask_l": "large"}
MODES = ("fwd", "fwd_bwd")
KINDS = ("window", "semantic", "loss", "upsample", "norm", "model")
NO_MATMUL = ("loss", "upsample", "norm")  # op kinds whose FLOP count is 0 (no matmul to count)
ADE_CLASSES = 150


def stage_sizes(img: int, stages: int = 4) -> list[int]:
    """Feature-map side per stage: patch 4 (rounded up), then halving (rounded up)."""
    side = math.ceil(img / 4)
    sizes = []
    for _ in range(stages):
        sizes.append(side)
        side = math.ceil(side / 2)
    return sizes


def padded(side: int, window: int) -> int:
    return math.ceil(side / window) * window


@dataclass
class Case:
    """One benchmark case (one mode); ``params`` holds the op's shape arguments."""

    name: str
    kind: str
    mode: str
    batch: int
    params: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}|{self.mode}"

    def shape(self) -> str:
        p = self.params
        if self.kind == "window":
            return (f"qkv {self.batch}x{p['Hp']}x{p['Wp']}x{3 * p['C']}, heads {p['heads']}, "
                    f"window {p['window']}, shift {p['shift']}")
        if self.kind == "semantic":
            mode = f"window {p['window']}" if p["window"] else "global"
            return (f"q,k {self.batch}x{p['Hp']}x{p['Wp']}x{p['K']}, v {self.batch}x{p['Hp']}x"
                    f"{p['Wp']}x{p['C']}, {mode}")
        if self.kind == "loss":
            return f"logits {self.batch}x{p['K']}x{p['h']}x{p['w']} -> labels {p['H']}x{p['W']}"
        if self.kind == "upsample":
            return f"x {self.batch}x{p['C']}x{p['h']}x{p['w']} -> {2 * p['h']}x{2 * p['w']}"
        if self.kind == "norm":
            return f"x {self.batch}x{p['Hp']}x{p['Wp']}x{p['C']}"
        return f"images {self.batch}x3x{p['img']}x{p['img']}, K {p['K']}"

    def tokens(self) -> int:
        return self.batch * self.params["Hp"] * self.params["Wp"]


def window_case(arch: str, img: int, stage: int, shifted: bool, mode: str, batch: int) -> Case:
    v = VARIANTS[ARCH[arch]]
    side = stage_sizes(img)[stage]
    w = v.window
    p = dict(arch=arch, img=img, stage=stage, H=side, W=side, Hp=padded(side, w), Wp=padded(side, w),
             C=v.embed_dim * 2 ** stage, heads=v.num_heads[stage], window=w,
             shift=w // 2 if shifted else 0)
    name = f"window/{arch}-{img}/s{stage}/{'sw' if shifted else 'w'}"
    return Case(name, "window", mode, batch, p)


def semantic_case(arch: str, img: int, stage: int, mode: str, batch: int,
                  num_classes: int = ADE_CLASSES, windowed: bool | None = None) -> Case:
    """``windowed`` None follows the released rule (``default_semantic_windowed``)."""
    v = VARIANTS[SEMASK_ARCH[arch]]
    if windowed is None:
        windowed = default_semantic_windowed(v.embed_dim, num_classes)[stage]
    side = stage_sizes(img)[stage]
    w = v.window if windowed else 0
    hp = padded(side, w) if w else side
    p = dict(arch=arch, img=img, stage=stage, H=side, W=side, Hp=hp, Wp=hp,
             C=v.embed_dim * 2 ** stage, K=num_classes, window=w)
    name = f"semantic/{arch}-{img}/s{stage}/{f'win{w}' if w else 'global'}"
    return Case(name, "semantic", mode, batch, p)


# (classes, label height, label width) of the loss cases: ADE20K 512 crops, Cityscapes 512x1024
LOSS_DATASETS = {"ade20k": (ADE_CLASSES, 512, 512), "cityscapes": (19, 512, 1024)}


def loss_case(dataset: str, mode: str, batch: int, size: tuple[int, int] | None = None) -> Case:
    """The decode loss of a SeMask-Swin FPN model on ``dataset``'s crops (or ``size``):
    logits at stride 4."""
    K, H, W = LOSS_DATASETS[dataset]
    H, W = size or (H, W)
    p = dict(K=K, H=H, W=W, h=math.ceil(H / 4), w=math.ceil(W / 4), img=H)
    return Case(f"loss/{dataset}-{H}x{W}", "loss", mode, batch, p)


# (channels, stage) of the x2 upsamplings of a SeMask-T FPN at ADE20K: the head's 256-channel
# maps, the decoder's 150-class priors; stage 1 (stride 8 -> 4) is the largest
UPSAMPLES = {"fpn": 256, "decoder": ADE_CLASSES}


def upsample_case(where: str, img: int, stage: int, mode: str, batch: int) -> Case:
    """The x2 upsampling of ``where`` ("fpn" or "decoder") from stage ``stage``'s map."""
    side = stage_sizes(img)[stage]
    p = dict(C=UPSAMPLES[where], h=side, w=side, img=img, stage=stage)
    return Case(f"upsample/{where}-{img}/s{stage}", "upsample", mode, batch, p)


def norm_case(arch: str, img: int, stage: int, mode: str, batch: int) -> Case:
    """A LayerNorm of a Swin block (norm1 / norm2) at stage ``stage``'s map."""
    side = stage_sizes(img)[stage]
    p = dict(arch=arch, img=img, stage=stage, Hp=side, Wp=side,
             C=VARIANTS[ARCH[arch]].embed_dim * 2 ** stage)
    return Case(f"norm/{arch}-{img}/s{stage}", "norm", mode, batch, p)


def model_case(model: str, img: int, mode: str, batch: int, num_classes: int = ADE_CLASSES) -> Case:
    return Case(f"model/{model}-{img}", "model", mode, batch, dict(model=model, img=img, K=num_classes))


def element_size(dtype_name: str) -> int:
    return {"fp32": 4, "bf16": 2, "fp16": 2}[dtype_name]


def bytes_moved(case: Case, dtype_name: str) -> int | None:
    """Fewest bytes the op must move for ``case`` (None for model cases)."""
    if case.kind == "model":
        return None
    if case.kind == "loss":
        p, e = case.params, element_size(dtype_name)
        logits = case.batch * p["K"] * p["h"] * p["w"] * e
        labels = case.batch * p["H"] * p["W"] * 8
        return logits + labels if case.mode == "fwd" else 2 * logits + labels
    if case.kind == "upsample":
        p = case.params
        x = case.batch * p["C"] * p["h"] * p["w"] * element_size(dtype_name)
        return 5 * x if case.mode == "fwd" else 10 * x
    e, T, p = element_size(dtype_name), case.tokens(), case.params
    if case.kind == "norm":
        return 2 * T * p["C"] * e if case.mode == "fwd" else 5 * T * p["C"] * e + 16 * T
    if case.kind == "window":
        fwd, lse, bwd = T * 4 * p["C"] * e, T * p["heads"] * 4, T * 8 * p["C"] * e + T * p["heads"] * 4
    else:
        K, C = p["K"], p["C"]
        fwd, lse, bwd = T * (2 * K + 2 * C) * e, T * 4, T * (4 * K + 4 * C) * e + T * 4
    return fwd if case.mode == "fwd" else fwd + lse + bwd


def attention_flops(case: Case) -> int:
    """FLOPs of the reference's attention matmuls (2 per multiply-add): fwd 2, fwd_bwd 6;
    0 for loss and upsample cases (FlopCounterMode counts no matmul there)."""
    if case.kind in NO_MATMUL:
        return 0
    p, T = case.params, case.tokens()
    if case.kind == "window":
        fwd = 4 * T * p["window"] ** 2 * p["C"]
    else:
        n = p["window"] ** 2 if p["window"] else p["Hp"] * p["Wp"]
        fwd = 2 * T * n * (p["K"] + p["C"])
    return fwd if case.mode == "fwd" else 3 * fwd


# ----------------------------------------------------------------------------- case lists
WINDOW_ARCHS = ("swin_t", "swin_b")
SEMANTIC_ARCHS = ("semask_t", "semask_b")
MODELS = ("semask_swin_tiny_fpn", "semask_swin_small_fpn", "semask_swin_base_fpn",
          "semask_swin_large_fpn")
MODEL_BATCH = {"semask_swin_tiny_fpn": 16}  # the others: 8 (eager Swin-L at 16 would not fit)


def full_cases(batch: int, model_batch: int | None) -> list[Case]:
    """GPU run, most important first (a time budget cuts from the end): 512 inputs before
    224, shifted before unshifted, Swin-T before Swin-B, then semantic, then models."""
    cases: list[Case] = []
    for img in (512, 224):
        for arch in WINDOW_ARCHS:
            for shifted in (True, False):
                for stage in range(4):
                    for mode in MODES:
                        cases.append(window_case(arch, img, stage, shifted, mode, batch))
        if img == 512:
            for arch in SEMANTIC_ARCHS:
                for stage in range(4):
                    for mode in MODES:
                        cases.append(semantic_case(arch, img, stage, mode, batch))
            for stage in (2, 3):  # global attention at SeMask-B's shapes too (a per-stage option)
                for mode in MODES:
                    cases.append(semantic_case("semask_b", img, stage, mode, batch, windowed=False))
            for dataset in LOSS_DATASETS:
                for mode in MODES:
                    cases.append(loss_case(dataset, mode, batch))
            for where in UPSAMPLES:
                for stage in (1, 2):
                    for mode in MODES:
                        cases.append(upsample_case(where, img, stage, mode, batch))
            for stage in range(4):
                for mode in MODES:
                    cases.append(norm_case("swin_t", img, stage, mode, batch))
            for model in MODELS:
                b = model_batch or MODEL_BATCH.get(model, 8)
                for mode in MODES:
                    cases.append(model_case(model, 512, mode, b))
    return _priority(cases)


def _priority(cases: list[Case]) -> list[Case]:
    """Put the cases the goals of issue 4 name first (Swin-T 512 shifted, SeMask-T 512,
    the ADE20K loss and the SeMask-T model), keeping the rest in order."""
    def rank(c: Case) -> int:
        if c.kind == "window" and c.params["arch"] == "swin_t" and c.params["img"] == 512:
            return 0
        if c.kind == "semantic" and c.params["arch"] == "semask_t":
            return 1
        if c.kind == "model" and c.params["model"] == "semask_swin_tiny_fpn" or \
                c.kind == "loss" and c.name.startswith("loss/ade20k"):
            return 2
        return 3
    return sorted(cases, key=rank)  # stable


def quick_cases(batch: int | None) -> list[Case]:
    """CPU smoke run: a few real stage shapes at batch 1, SeMask-T FPN at 224."""
    b = batch or 1
    cases = []
    for mode in MODES:
        cases += [window_case("swin_t", 224, 2, True, mode, b),
                  window_case("swin_b", 224, 3, True, mode, b),
                  window_case("swin_t", 224, 0, False, mode, b),
                  semantic_case("semask_t", 224, 1, mode, b),
                  semantic_case("semask_t", 224, 3, mode, b),
                  loss_case("ade20k", mode, b, size=(64, 64)),
                  upsample_case("decoder", 224, 2, mode, b),
                  norm_case("swin_t", 224, 1, mode, b),
                  model_case("semask_swin_tiny_fpn", 224, mode, b)]
    return cases


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """Keep the cases whose name contains any of ``patterns`` (all when None)."""
    if not patterns:
        return cases
    return [c for c in cases if any(p in c.name for p in patterns)]


def floor_time_s(nbytes: int | None, flops: int | None, bandwidth: float | None,
                 matmul_rate: float | None) -> tuple[float | None, str | None]:
    """(fewest seconds, "memory" | "compute"): the larger of ``nbytes`` at ``bandwidth``
    (bytes/s) and ``flops`` at ``matmul_rate`` (FLOP/s); a part without its figure or rate
    is left out; (None, None) when neither is known."""
    bounds = {"memory": nbytes / bandwidth if nbytes and bandwidth else 0.0,
              "compute": flops / matmul_rate if flops and matmul_rate else 0.0}
    bound = max(bounds, key=bounds.get)
    return (bounds[bound], bound) if bounds[bound] else (None, None)


# ----------------------------------------------------------------------------- perf model
# Bandwidth of the floor (bytes/s), by the short names of PERF_MODEL.md: the device-to-device
# copy measured on the lent machines (bytes read + written per second), about 90% of the HBM
# bandwidth of NVIDIA's datasheets (H100 SXM5 80 GB: 3.35 TB/s; H200: 4.8 TB/s).
PEAK_BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}
# exact torch.cuda.get_device_name() of those GPUs; others (datasheets: H100 PCIe 2.0 TB/s,
# H100 NVL 3.9 TB/s, GH200 4.0 or 4.9 TB/s; H200 NVL, not measured here) use the copy
# bandwidth measured in the run
DEVICE_NAMES = {"NVIDIA H100 80GB HBM3": "H100", "NVIDIA H200": "H200"}


def floor_bandwidth(device_name: str, measured_gbps: float | None) -> tuple[float | None, str]:
    """(bytes/s of the floor, its source): PERF_MODEL.md's figure for a GPU of
    :data:`DEVICE_NAMES` (exact name), else the copy bandwidth measured in the run."""
    short = DEVICE_NAMES.get(device_name.strip())
    if short:
        return PEAK_BANDWIDTH[short], f"PERF_MODEL.md ({short}: measured d2d copy)"
    if measured_gbps:
        return measured_gbps * 1e9, "measured here (d2d copy; device not in the table)"
    return None, "none (device not in the table, nothing measured)"


def perf_model_rows(dtype_name: str = "bf16") -> list[dict]:
    """Per image, forward, all blocks: bytes and FLOPs of window attention (Swin-T/B at
    224 and 512) and semantic attention (SeMask-T/B at 512), per stage and in total."""
    rows = []
    for arch, img in (("swin_t", 224), ("swin_t", 512), ("swin_b", 224), ("swin_b", 512)):
        depths = VARIANTS[ARCH[arch]].depths
        stages = [window_case(arch, img, s, False, "fwd", 1) for s in range(4)]
        rows.append(_perf_row("window", f"{arch}-{img}", stages, depths, dtype_name))
    for arch in SEMANTIC_ARCHS:
        stages = [semantic_case(arch, 512, s, "fwd", 1) for s in range(4)]
        rows.append(_perf_row("semantic", f"{arch}-512", stages, (1, 1, 1, 1), dtype_name))
    return rows


def _perf_row(kind, name, stages, depths, dtype_name):
    per_stage = [dict(stage=c.params["stage"], side=c.params["H"], padded=c.params["Hp"],
                      C=c.params["C"], bytes=d * bytes_moved(c, dtype_name),
                      flops=d * attention_flops(c)) for c, d in zip(stages, depths)]
    total_bytes = sum(s["bytes"] for s in per_stage)
    total_flops = sum(s["flops"] for s in per_stage)
    return dict(kind=kind, name=name, bytes=total_bytes, flops=total_flops,
                intensity=total_flops / total_bytes,
                floor_us={dev: total_bytes / bw * 1e6 for dev, bw in PEAK_BANDWIDTH.items()},
                stages=per_stage)
