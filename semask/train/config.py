"""Training configuration: one dataclass, JSON presets in ``configs/``, command-line overrides.

``load_config("ade20k_semask_tiny_fpn", lr=2e-4)`` or ``semask-train ade20k_semask_tiny_fpn --lr 2e-4``:
defaults of :class:`TrainConfig` <- preset JSON <- ``--field-name value`` overrides.
Lists are given comma-separated (or as JSON), ``none`` clears an optional field.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

# semask/configs in an installed wheel, else configs/ of the source checkout
_PACKAGE = Path(__file__).resolve().parents[1]
CONFIG_DIR = next((d for d in (_PACKAGE / "configs", _PACKAGE.parent / "configs") if d.is_dir()),
                  _PACKAGE.parent / "configs")
DEFAULT_PRESET = "synthetic_cpu"


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the synthetic CPU preset."""

    name: str = "synthetic_cpu"
    # data
    dataset: str = "synthetic"            # synthetic | ade20k | cityscapes | folder
    data_root: str | None = None
    num_classes: int = 6
    # dataset folder (your own data; semask.data.FolderLayout): image dir, label dir per split
    folder_train: list[str] = field(default_factory=lambda: ["images/train", "annotations/train"])
    folder_val: list[str] = field(default_factory=lambda: ["images/val", "annotations/val"])
    image_suffix: str | None = None
    label_suffix: str = ".png"
    reduce_zero_label: bool = False
    class_names: list[str] | None = None
    synthetic_train_size: int = 2000
    synthetic_val_size: int = 100
    synthetic_size: list[int] = field(default_factory=lambda: [96, 192])      # min, max image side
    crop_size: list[int] = field(default_factory=lambda: [128, 128])            # h, w
    img_scale: list[int] | None = field(default_factory=lambda: [256, 128])     # long, short edge
    ratio_range: list[float] = field(default_factory=lambda: [0.75, 1.5])
    ratio_choices: list[float] | None = None    # drawn from instead of U(ratio_range)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    num_workers: int = 0
    # model
    variant: str = "micro"                # micro | tiny | small | base | large
    semantic: bool = True
    head_channels: int = 64
    ohem_min_kept: int | None = None       # hard pixel mining on the main loss
    drop_path_rate: float = 0.1
    window_size: int | None = None
    fused: bool = False
    pretrained: str | None = None          # ImageNet Swin checkpoint for the backbone
    skip_mismatched: bool = False          # pretrained of another class count: its class tensors skipped
    pretrained_strict: bool = True         # false: pretrained tensors the model lacks / owns alone are allowed
    grad_checkpointing: list[int] = field(default_factory=list)   # backbone stages to recompute
    sync_bn: bool = True                   # SyncBatchNorm in the head under multi-GPU DDP
    compile: str | None = None             # torch.compile of the training forward: none | default | a backend
    cuda_graphs: bool = False              # replay forward + losses + backward (and eval) as CUDA graphs
    # optimisation
    iters: int = 3000
    batch_size: int = 8                    # per process and micro-step
    accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_iters: int = 50
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    grad_clip: float | None = None
    amp: str = "auto"                      # auto (bf16 on GPU when supported, else fp16) | bf16 | fp16 | none
    max_nonfinite: int = 5                 # stop after this many non-finite losses in a row
    # evaluation
    test_scale: list[int] | None = None    # keep-ratio (long, short) resize before inference
    eval_mode: str = "whole"               # whole | slide | ms_flip
    slide_crop: list[int] = field(default_factory=lambda: [512, 512])
    slide_stride: list[int] = field(default_factory=lambda: [341, 341])
    eval_pad_multiple: int | None = 32     # none: inputs run unpadded, as mmseg
    ms_ratios: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    eval_interval: int = 1000              # 0: evaluate at the end only
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/synthetic_cpu"
    log_interval: int = 25
    ckpt_interval: int = 500
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def describe(self) -> str:
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"  {k:<{width}} = {v!r}" for k, v in self.to_dict().items())


FIELD_HELP = {
    "name": "run name (stored in checkpoints)",
    "dataset": "synthetic | ade20k | cityscapes | folder (your own data: images and label PNGs of class ids, "
               "mmseg's CustomDataset layout; see the folder_* fields)",
    "data_root": "dataset folder (ADEChallengeData2016, the Cityscapes root or your folder); not used by synthetic",
    "num_classes": "number of classes (ADE20K 150, Cityscapes 19, synthetic 6; folder: the labels' 0..N-1)",
    "folder_train": "dataset folder: the training split's image folder,label folder under data_root "
                    "(subfolders are searched; an image's label has its relative path and stem)",
    "folder_val": "dataset folder: the validation split's image folder,label folder under data_root",
    "image_suffix": "dataset folder: the end of an image's file name, cut to give its stem (e.g. .jpg or "
                    "_leftImg8bit.png); none: any of .jpg .jpeg .png .bmp .tif .tiff .webp, less its extension",
    "label_suffix": "dataset folder: a label's file name is the image's stem + this (e.g. .png or "
                    "_gtFine_labelTrainIds.png)",
    "reduce_zero_label": "dataset folder: label 0 is ignored and k is class k - 1 (as ADE20K's); false: "
                         "labels are the class ids 0..N-1, 255 is ignored",
    "class_names": "dataset folder: num_classes names for the per-class tables (none: class_0, class_1, ...)",
    "synthetic_train_size": "synthetic training images (rendered once, then cached)",
    "synthetic_val_size": "synthetic validation images",
    "synthetic_size": "min,max side of the synthetic images",
    "crop_size": "h,w training crop",
    "img_scale": "long,short keep-ratio resize before the crop (none: of the image's own size, as mmseg's "
                 "img_scale=None; with ratio_range 1,1 no resize)",
    "ratio_range": "min,max random factor on img_scale (img_scale none: on the image's own size)",
    "ratio_choices": "random factors on img_scale, one drawn per image, instead of ratio_range "
                     "(the release's ADE20K list 0.5,0.75,1,1.25,1.5,1.75; none: ratio_range)",
    "cat_max_ratio": "crop retries while one class covers more than this share (1: off)",
    "photometric": "brightness / contrast / saturation / hue distortion (true/false)",
    "num_workers": "data-loader worker processes",
    "variant": "micro | tiny | small | base | large",
    "semantic": "SeMask layers (false: the plain Swin + FPN baseline)",
    "head_channels": "Semantic FPN channels (256 in the paper)",
    "ohem_min_kept": "online hard pixel mining on the main loss (mmseg OHEMPixelSampler): only "
                     "the N x batch non-ignored pixels of largest loss count (the release's "
                     "SeMask-L ADE20K config: 100000); none: off",
    "drop_path_rate": "stochastic depth rate of the backbone",
    "window_size": "attention window (none: the variant's 7 or 12)",
    "fused": "fused attention kernels (true: the best backend for the device; SEMASK_BACKEND picks one)",
    "pretrained": "ImageNet Swin (or SeMask) checkpoint for the model; none: from scratch",
    "skip_mismatched": "with a pretrained SeMask checkpoint of another class count (fine-tuning an "
                       "ADE20K model on other data): keep its class-dependent tensors (classifier, "
                       "semantic layers' class projections) at their init instead of refusing it",
    "pretrained_strict": "false: allow tensors only one side has: the model loads the pretrained "
                         "tensors it owns and reports the rest (a SeMask checkpoint into --semantic "
                         "false; a checkpoint lacking some of the model's tensors, which keep their "
                         "init); tensors of another shape are still refused; true refuses such a file",
    "grad_checkpointing": "backbone stages to recompute in backward, e.g. 0,1,2,3",
    "sync_bn": "SyncBatchNorm in the head under multi-GPU DDP",
    "compile": "torch.compile the training forward: none (eager), default (inductor) or a "
               "backend name such as aot_eager; the loss (fused kernel) and evaluation stay eager",
    "cuda_graphs": "capture the training forward, losses and backward once and replay them as "
                   "CUDA graphs (GPU; fixed crop and batch; not with DDP, --compile, gradient "
                   "checkpointing or accum_steps > 1): removes the host time of a step; "
                   "evaluation forwards replay CUDA graphs too",
    "iters": "optimizer steps",
    "batch_size": "images per process and micro-step",
    "accum_steps": "micro-steps accumulated per optimizer step",
    "lr": "AdamW peak learning rate",
    "weight_decay": "AdamW weight decay (none on names containing norm, relative_position_bias_table or absolute_pos_embed, as the release)",
    "betas": "AdamW betas",
    "warmup_iters": "linear warmup steps",
    "warmup_ratio": "lr factor at step 0 of the warmup",
    "poly_power": "power of the poly decay",
    "min_lr": "lr floor of the poly decay",
    "grad_clip": "max gradient norm (none: no clipping)",
    "amp": "GPU autocast: auto (bf16 if supported, else fp16) | bf16 | fp16 | none; CPU: fp32",
    "max_nonfinite": "stop after this many non-finite losses in a row (each is skipped)",
    "test_scale": "long,short keep-ratio resize at evaluation (none: the image's own size)",
    "eval_mode": "whole | slide | ms_flip",
    "slide_crop": "h,w window of slide mode",
    "slide_stride": "h,w stride of slide mode",
    "ms_ratios": "scales of ms_flip mode",
    "eval_pad_multiple": "zero-pad each inference input right / bottom to a multiple of N and crop "
                         "the logits, keeping every stage's map aligned with the pixels (none: "
                         "unpadded, as mmseg scored the released models; the ADE20K and Cityscapes "
                         "presets). The synthetic preset's micro model scores 0.80 mIoU with 32, "
                         "0.70 without",
    "eval_interval": "evaluate every N iterations (0: at the end only)",
    "seed": "seed of weights, data order, augmentation and synthetic data",
    "device": "auto | cpu | cuda | cuda:N",
    "out_dir": "folder for checkpoints, metrics.jsonl, eval.json / eval.md, curves.png",
    "log_interval": "iterations between metrics.jsonl records (their losses: the mean over the "
                    "interval's finite steps, as mmcv's log buffer)",
    "ckpt_interval": "iterations between checkpoints (0: at the end only)",
    "progress": "tqdm progress bars",
}


def _field_types() -> dict[str, object]:
    return typing.get_type_hints(TrainConfig)


def _strip_optional(tp):
    """(inner type, optional?) for ``X | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def parse_value(name: str, text: str):
    """Parse a command-line string for field ``name`` to its declared type."""
    tp, optional = _strip_optional(_field_types()[name])
    if optional and text.lower() in ("none", "null", ""):
        return None
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp)
        items = json.loads(text) if text.strip().startswith("[") else [t for t in text.split(",") if t.strip()]
        return [_scalar(name, elem, str(i)) for i in items]
    return _scalar(name, tp, text)


def _scalar(name: str, tp, text: str):
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{name.replace('_', '-')}: expected true/false, got {text!r}")
    try:
        return tp(text)
    except ValueError as exc:
        raise ValueError(f"--{name.replace('_', '-')}: expected {tp.__name__}, got {text!r}") from exc


CHOICES = dict(dataset=("synthetic", "ade20k", "cityscapes", "folder"), eval_mode=("whole", "slide", "ms_flip"),
               amp=("auto", "bf16", "fp16", "none"))
PAIRS = ("synthetic_size", "crop_size", "img_scale", "ratio_range", "betas", "test_scale", "slide_crop",
         "slide_stride")  # two numbers each (or none where optional)
AT_LEAST_ONE = ("num_classes", "synthetic_train_size", "synthetic_val_size", "iters", "batch_size",
                "accum_steps", "log_interval", "head_channels")
AT_LEAST_ONE_OR_NONE = ("eval_pad_multiple", "ohem_min_kept", "window_size")
MIN_CROP = 32  # the backbone's total stride: a smaller input has no stage-4 token
NUM_STAGES = 4  # of every Swin variant
AT_LEAST_ZERO = ("num_workers", "warmup_iters", "max_nonfinite", "eval_interval", "ckpt_interval")
FOLDER_FIELDS = ("folder_train", "folder_val", "image_suffix", "label_suffix", "reduce_zero_label", "class_names")


def _folder_errors(cfg: TrainConfig) -> list[str]:
    """The folder dataset's fields: set only for it (elsewhere they would be ignored), and whole."""
    if cfg.dataset != "folder":
        defaults = TrainConfig()
        changed = [k for k in FOLDER_FIELDS if getattr(cfg, k) != getattr(defaults, k)]
        return [f"{', '.join(changed)}: settings of dataset folder, not of {cfg.dataset}"] if changed else []
    errors = [f"{k} must be an image folder and a label folder, got {getattr(cfg, k)!r}"
              for k in ("folder_train", "folder_val")
              if len(getattr(cfg, k)) != 2 or not all(d.strip() for d in getattr(cfg, k))]
    if not cfg.label_suffix or cfg.image_suffix == "":
        errors.append("label_suffix and image_suffix must not be empty (image_suffix none: any image extension)")
    if cfg.class_names is not None and len(set(cfg.class_names)) != cfg.num_classes:  # tables key by name
        errors.append(f"class_names must be num_classes={cfg.num_classes} distinct names, got {cfg.class_names!r}")
    return errors


def _type_error(name: str, value, declared) -> str | None:
    """Why ``value`` (from JSON or Python) does not fit field ``name``'s ``declared`` type: a
    JSON "false" is a string, and would switch a bool option on."""
    tp, optional = _strip_optional(declared)
    if value is None:
        return None if optional else f"{name} must not be none"
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            return f"{name} must be a list, got {value!r}"
        (tp,), items = typing.get_args(tp), value
    else:
        items = [value]
    fits = {bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}[tp]
    return None if all(fits(v) for v in items) else f"{name} must be {tp.__name__}, got {value!r}"


def _device_error(device: str) -> str | None:
    """The name's error (a config may be written on a machine without the GPU it names)."""
    from .distributed import parse_device
    try:
        parse_device(device)
    except ValueError as exc:
        return str(exc)
    return None


def config_errors(cfg: TrainConfig) -> list[str]:
    """What is wrong with ``cfg`` (empty: nothing), so that a run fails before it trains."""
    from ..models import VARIANTS
    declared = _field_types()
    errors = [e for e in (_type_error(name, getattr(cfg, name), tp) for name, tp in declared.items()) if e]
    if errors:  # the checks below assume the declared types
        return errors
    choices = dict(CHOICES, variant=tuple(VARIANTS))
    errors = [f"{k} must be one of {', '.join(v)}, got {getattr(cfg, k)!r}"
              for k, v in choices.items() if getattr(cfg, k) not in v]
    ranges = {  # field: (holds, what it must be)
        "lr": (cfg.lr >= 0, "at least 0"), "weight_decay": (cfg.weight_decay >= 0, "at least 0"),
        "min_lr": (0 <= cfg.min_lr <= cfg.lr, "between 0 and lr"),
        "warmup_ratio": (0 <= cfg.warmup_ratio <= 1, "between 0 and 1"),
        "poly_power": (cfg.poly_power >= 0, "at least 0"),
        "grad_clip": (cfg.grad_clip is None or cfg.grad_clip > 0, "positive or none (a negative norm "
                      "limit flips the gradient)"),
        "betas": (all(0 <= b < 1 for b in cfg.betas), "in [0, 1)"),
        "drop_path_rate": (0 <= cfg.drop_path_rate < 1, "in [0, 1)"),
        "cat_max_ratio": (0 < cfg.cat_max_ratio <= 1, "in (0, 1]"),
        "ms_ratios": (bool(cfg.ms_ratios) and all(r > 0 for r in cfg.ms_ratios), "positive numbers"),
        "slide_stride": (all(s <= c for s, c in zip(cfg.slide_stride, cfg.slide_crop)),
                         "at most slide_crop (else pixels between windows get no score)"),
        "synthetic_size": (list(cfg.synthetic_size) == sorted(cfg.synthetic_size), "min, max"),
        "crop_size": (all(x >= MIN_CROP for x in cfg.crop_size), f"at least {MIN_CROP} a side (the "
                      "backbone's total stride)"),
        "slide_crop": (cfg.eval_pad_multiple is not None or all(x >= MIN_CROP for x in cfg.slide_crop),
                       f"at least {MIN_CROP} a side when eval_pad_multiple is none"),
        "grad_checkpointing": (all(0 <= s < NUM_STAGES for s in cfg.grad_checkpointing),
                               f"stage indices 0 to {NUM_STAGES - 1}"),
        "ratio_range": (list(cfg.ratio_range) == sorted(cfg.ratio_range), "low, high")}
    errors += [f"{k} must be {what}, got {getattr(cfg, k)!r}" for k, (holds, what) in ranges.items()
               if not holds]
    errors += [e for e in [_device_error(cfg.device)] if e]
    for k in PAIRS:
        value = getattr(cfg, k)
        if value is not None and (len(value) != 2 or not all(x > 0 for x in value)):
            errors.append(f"{k} must be two positive numbers, got {value!r}")
    if cfg.ratio_choices is not None and (not cfg.ratio_choices or not all(x > 0 for x in cfg.ratio_choices)):
        errors.append(f"ratio_choices must be positive numbers, got {cfg.ratio_choices!r}")
    errors += [f"{k} must be at least 1, got {getattr(cfg, k)!r}" for k in AT_LEAST_ONE
               if getattr(cfg, k) < 1]
    errors += [f"{k} must be at least 1 or none, got {getattr(cfg, k)!r}" for k in AT_LEAST_ONE_OR_NONE
               if getattr(cfg, k) is not None and getattr(cfg, k) < 1]
    errors += [f"{k} must be at least 0, got {getattr(cfg, k)!r}" for k in AT_LEAST_ZERO
               if getattr(cfg, k) < 0]
    return errors + _folder_errors(cfg)


def from_dict(values: dict, where: str = "config") -> TrainConfig:
    """Build a config and check its values; keys starting with "_" are comments and ignored."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: a config is a JSON object of fields, got {type(values).__name__}")
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}")
    cfg = TrainConfig(**values)
    errors = config_errors(cfg)
    if errors:
        raise ValueError(f"{where}: " + "; ".join(errors))
    return cfg


def preset_names() -> list[str]:
    """Names of the JSON presets in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json")) if CONFIG_DIR.is_dir() else []


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.json"
    if candidate.is_file():
        return candidate
    raise ValueError(f"unknown config {name_or_path!r}: not a .json file and not a preset in {CONFIG_DIR} "
                     f"(presets: {', '.join(preset_names()) or 'none found'})")


def load_preset(name_or_path: str) -> TrainConfig:
    path = resolve_preset(name_or_path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON config ({exc})") from exc
    return from_dict(values, str(path))


def apply_overrides(cfg: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """``{"lr": "2e-4"}`` (strings from the command line) -> new config."""
    values = cfg.to_dict()
    for key, text in overrides.items():
        name = key.replace("-", "_")
        if name not in values:
            raise ValueError(f"unknown option --{key}")
        values[name] = parse_value(name, text)
    return from_dict(values)


def add_config_arguments(parser) -> None:
    """One ``--field-name VALUE`` option per config field (default: keep the preset's; the
    help shows the dataclass default)."""
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f"cfg_{f.name}", default=None,
                            metavar="VALUE", help=f"{FIELD_HELP[f.name]} (default {default!r})")


def command_line_overrides(args) -> dict[str, str]:
    """{field: text} of the ``--field`` options given on the command line."""
    return {k[len("cfg_"):]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def config_from_args(args) -> TrainConfig:
    """Preset (``args.config``, default synthetic_cpu) + the ``--field`` options given."""
    cfg = load_preset(args.config) if args.config else TrainConfig()
    return apply_overrides(cfg, command_line_overrides(args))


def load_config(preset: str | None = None, **overrides) -> TrainConfig:
    """Preset (default: the dataclass defaults = synthetic_cpu) with Python-valued overrides."""
    cfg = load_preset(preset) if preset else TrainConfig()
    return from_dict({**cfg.to_dict(), **overrides})
