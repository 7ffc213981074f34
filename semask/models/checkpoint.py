"""Loading official Swin / SeMask checkpoints and saving our own (safetensors).

Accepted inputs of :func:`load_checkpoint`:
  * official SeMask mmseg checkpoints (``{"state_dict": {"backbone.*", "decode_head.*"}}``),
  * official Swin ImageNet checkpoints (``{"model": {...}}``, backbone keys without
    prefix; ``attn_mask``, ``norm.*`` and ``head.*`` are dropped) -> into the backbone,
  * timm Swin state dicts and mmseg's own Swin layout (``stages.*``, ``attn.w_msa``,
    ``ffn.layers``: the pretrained files mmseg's swin2mmseg converter writes; bare or under
    ``backbone.``) -> renamed to the official layout,
  * bare state dicts (full model, or backbone keys without prefix),
  * our safetensors files.
Relative position bias tables of another window size are resized bicubically over the
(2w-1) x (2w-1) grid (as the official Swin does for fine-tuning at another window).
"""
from __future__ import annotations

import itertools
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COMPUTED_SUFFIXES = ("relative_position_index", "attn_mask")  # recomputed, never loaded
OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BatchNorm counter: unused with a fixed momentum
CLASS_DEPENDENT = ("decode_head.conv_seg.", ".mlp_cls_q.", ".mlp_cls_k.")
IMAGENET_DROPPED_PREFIXES = ("head.", "norm.")  # classifier and final norm of Swin ImageNet
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
MODEL_PREFIXES = ("backbone.", "decode_head.")  # the keys of a whole model
DOWNSAMPLE_KEY = re.compile(r"layers\.(\d+)\.downsample\.")  # patch merging of a backbone-only dict
# The plain Swin tensors, which a backbone-only checkpoint (Swin ImageNet) must all hold
SWIN_KEY = re.compile(r"backbone\.(patch_embed\.|layers\.\d+\.(blocks|downsample)\.)")
# patch merging's tensors over its 4C input channels
MERGE_CHANNELS = re.compile(r"backbone\.layers\.\d+\.downsample\.(reduction\.weight|norm\.(weight|bias))$")
# mmseg's SwinTransformer (mmseg.models.backbones.swin): its own names, and those -> the
# official ones (mmseg's swin2mmseg converter's renames, reversed)
MMSEG_PREFIXES = ("backbone.stages.", "backbone.patch_embed.projection.")
MMSEG_RENAMES = (("backbone.stages.", "backbone.layers."), (".attn.w_msa.", ".attn."),
                 (".ffn.layers.0.0.", ".mlp.fc1."), (".ffn.layers.1.", ".mlp.fc2."),
                 ("backbone.patch_embed.projection.", "backbone.patch_embed.proj."))


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model as asked (``problem``, with the model's
    ``keys`` concerned; ``lines``: how the message lists them, default the keys) but loads
    with the keyword ``option`` of :func:`load_checkpoint` (``strict=False``,
    ``skip_mismatched=True``), which ``effect``. Callers re-raise it with their own
    ``problem`` prefix and ``option`` spelling (None: no option fits their use)."""

    def __init__(self, problem: str, option: str | None, effect: str, keys: list[str],
                 lines: list[str] | None = None):
        self.problem, self.option, self.effect, self.keys, self.lines = problem, option, effect, keys, lines
        shown = lines or keys
        super().__init__(problem + (f"; {option} {effect}" if option else "") + ":\n  " + "\n  ".join(shown[:10])
                         + (f"\n  ... and {len(shown) - 10} more" if len(shown) > 10 else ""))

    def __reduce__(self):  # pickle / copy (a DataLoader worker or another process re-raising it)
        return type(self), (self.problem, self.option, self.effect, self.keys, self.lines)


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did, key by key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)  # index / mask buffers the model builds

    def __str__(self) -> str:
        lines = [f"checkpoint ({self.source}): {len(self.loaded)} tensors loaded"]
        if self.recomputed:
            lines[0] += f" ({len(self.recomputed)} index / mask buffers not read: the model computes them)"
        for name in ("missing", "unexpected", "converted", "dropped", "skipped"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")
                lines.append(f"  {name} ({len(keys)}): {shown}")
        return "\n".join(lines)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """Read a checkpoint file -> (flat state dict, source kind)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if _is_safetensors(path):  # whatever the suffix: save_checkpoint writes safetensors
            from safetensors.torch import load_file
            return load_file(str(path)), "safetensors"
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise ValueError(f"checkpoint {path} holds objects torch.load(weights_only=True) "
                             f"refuses (e.g. numpy scalars in mmcv 'meta'); if you trust it, "
                             f"re-save its state dict or allowlist them with torch.serialization"
                             f".add_safe_globals ({exc})") from exc
        raise ValueError(f"could not read checkpoint {path}: it is corrupt or not a PyTorch "
                         f"/ safetensors file ({type(exc).__name__}: {exc})") from exc
    return unwrap_state_dict(raw, str(path))


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then its JSON header."""
    with path.open("rb") as f:
        head = f.read(9)
    return (len(head) == 9 and head[8:9] == b"{"
            and int.from_bytes(head[:8], "little") < path.stat().st_size)


def unwrap_state_dict(raw, where: str = "checkpoint") -> tuple[dict[str, Tensor], str]:
    """Find the state dict inside an mmseg / Swin ImageNet / bare checkpoint object."""
    if isinstance(raw, dict):
        if isinstance(raw.get("model"), dict) and {"iteration", "optimizer"} <= set(raw):
            return dict(raw["model"]), "semask_training_state"  # semask-train's last_state.pt
        for key, source in (("state_dict", "semask_mmseg"), ("model", "swin_imagenet")):
            if isinstance(raw.get(key), dict):
                return dict(raw[key]), source
        if raw and all(isinstance(v, Tensor) for v in raw.values()):
            return dict(raw), "state_dict"
    keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
    raise ValueError(f"{where}: no state dict found (expected 'state_dict', 'model' or a "
                     f"dict of tensors; found {keys})")


def _window_grid(rows: int) -> bool:
    """Whether a bias table of ``rows`` rows is a (2w - 1) x (2w - 1) grid of some window w."""
    side = math.isqrt(rows)
    return side * side == rows and side % 2 == 1


def resize_relative_position_table(table: Tensor, window: int) -> Tensor:
    """[(2w'-1)^2, heads] -> [(2w-1)^2, heads] by bicubic interpolation on the grid."""
    old = int(round(table.shape[0] ** 0.5))
    new = 2 * window - 1
    grid = table.float().T.reshape(1, -1, old, old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(-1, new * new).T.contiguous().to(table.dtype)


def strip_wrapper_prefixes(key: str) -> str:
    """``key`` without the prefixes DDP and torch.compile add (``module._orig_mod.x`` -> x)."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.DataParallel,
                                                nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _from_timm_layout(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """A timm (>= 0.9) Swin state dict puts patch merging at the start of stages 1..3
    (``layers.{i}.downsample``), the official layout at the end of stages 0..2: renumbered
    to the official one (the merged channel order is the same). -> (dict, renamed keys);
    other dicts unchanged."""
    stages = {int(m.group(1)) for k in sd if (m := DOWNSAMPLE_KEY.match(k))}
    if not stages or 0 in stages:
        return sd, []
    out, renamed = {}, []
    for key, value in sd.items():
        m = DOWNSAMPLE_KEY.match(key)
        if m:
            key = f"layers.{int(m.group(1)) - 1}.downsample." + key[m.end():]
            renamed.append("backbone." + key)
        out[key] = value
    return out, renamed


def unfold_to_cat_order(value: Tensor) -> Tensor:
    """Patch merging's 4C input channels (last dim: reduction weight [out, 4C], norm [4C])
    from mmseg's nn.Unfold order, c * 4 + 2 * dy + dx, to the official concatenation
    x0..x3 = (dy, dx) (0, 0), (1, 0), (0, 1), (1, 1), j * C + c: the inverse of mmseg's
    correct_unfold_reduction_order / correct_unfold_norm_order (swin2mmseg)."""
    *lead, channels = value.shape
    per_offset = value.reshape(*lead, channels // 4, 4).transpose(-1, -2)  # [..., 2 * dy + dx, c]
    return per_offset[..., [0, 2, 1, 3], :].reshape(*lead, channels)


def _from_mmseg_layout(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """mmseg's Swin keys (``backbone.``-prefixed here) -> the official layout, patch merging
    tensors reordered (:func:`unfold_to_cat_order`). -> (dict, converted keys); other dicts
    unchanged."""
    if not any(k.startswith(MMSEG_PREFIXES[0]) for k in sd):
        return sd, []
    out, converted = {}, []
    for key, value in sd.items():
        new = key
        if key.startswith(MMSEG_PREFIXES):  # official names (a merge among them) stay as they are
            for old, official in MMSEG_RENAMES:
                new = new.replace(old, official)
            if MERGE_CHANNELS.match(new):
                value = unfold_to_cat_order(value)
            converted.append(new)
        if new in out:
            raise ValueError(f"checkpoint holds {new} twice: in mmseg's Swin layout and in the official one")
        out[new] = value
    return out, converted


def _strip_owner_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A whole model saved as an attribute of another module (a Lightning module's
    ``model.``, say): the prefix every key shares is dropped when the keys under it are a
    whole model's (``backbone.*`` / ``decode_head.*``); other dicts unchanged."""
    heads = {k.split(".", 1)[0] + "." for k in sd}
    if len(heads) != 1 or heads & set(MODEL_PREFIXES):
        return sd
    stripped = {k.split(".", 1)[1]: v for k, v in sd.items() if "." in k}
    full = len(stripped) == len(sd) and any(k.startswith(MODEL_PREFIXES) for k in stripped)
    return stripped if full else sd


def _normalise_keys(sd: dict[str, Tensor], source: str, report: LoadReport) -> dict[str, Tensor]:
    """Strip DDP / compile / owner-module prefixes, map backbone-only dicts (official or
    timm Swin layout) under ``backbone.``, drop computed keys, rename mmseg's Swin layout."""
    sd = _strip_owner_prefix({strip_wrapper_prefixes(k): v for k, v in sd.items()})
    full_model = any(k.startswith(MODEL_PREFIXES) for k in sd)
    if not full_model:
        sd, renamed = _from_timm_layout(sd)
        if renamed:
            report.converted += renamed
            source = "timm_swin"
    out = {}
    for key, value in sd.items():
        if not full_model:
            if key.startswith(IMAGENET_DROPPED_PREFIXES):
                report.dropped.append(key)
                continue
            key = "backbone." + key
        if key.endswith(COMPUTED_SUFFIXES):
            report.recomputed.append(key)
            continue
        out[key] = value
    out, converted = _from_mmseg_layout(out)
    if converted:
        report.converted += converted
        source = "mmseg_swin"  # a bare pretrained file or an mmseg model file
    report.source = source if full_model or source == "swin_imagenet" else source + " (backbone)"
    return out


def load_checkpoint(model: nn.Module, path_or_state_dict, *, skip_mismatched: bool = False,
                    strict: bool = True) -> LoadReport:
    """Load weights into ``model`` (a :class:`~semask.SeMaskSwin`, also wrapped by DDP or
    torch.compile) and report key by key.

    Full-model checkpoints must cover every parameter and hold no other (``strict``);
    backbone-only ones (Swin ImageNet) must hold every Swin tensor of the backbone
    (``strict``: patch embedding, blocks, patch merging), and what they lack (semantic
    layers, norms, head) is reported as missing. ``strict=False`` loads what matches and
    reports the rest as missing / unexpected (SeMask weights into a plain Swin, say). A
    checkpoint with no tensor of the model raises. A shape
    mismatch raises, except for class-dependent tensors with ``skip_mismatched=True``
    (they keep their init) and relative position tables of another window size (resized).
    Nothing is written into the model unless the whole check passes.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        sd, source = read_checkpoint(path_or_state_dict)
    else:
        sd, source = unwrap_state_dict(path_or_state_dict)
    report = LoadReport(source)
    sd = _normalise_keys(sd, source, report)
    full_model = not report.source.endswith("(backbone)") and source != "swin_imagenet"
    model = unwrap_model(model)
    own = model.state_dict()
    to_load, problems, class_problems = {}, [], []
    for key, value in sd.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            if (key.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]
                    and _window_grid(value.shape[0])):
                window = (int(round(target.shape[0] ** 0.5)) + 1) // 2
                value = resize_relative_position_table(value, window)
                if key not in report.converted:  # renamed from mmseg's layout already
                    report.converted.append(key)
            elif any(c in key for c in CLASS_DEPENDENT):
                class_problems.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
                report.skipped.append(key)
                continue
            else:
                problems.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
                continue
        to_load[key] = value.to(target.dtype)
    report.missing = [k for k in own if k not in to_load and k not in report.skipped
                      and not k.endswith(COMPUTED_SUFFIXES + OPTIONAL_SUFFIXES)]
    if problems:
        raise ValueError("checkpoint does not match this architecture (variant / window / "
                         "semantic layers?):\n  " + "\n  ".join(problems[:10]))
    if class_problems and not skip_mismatched:
        raise CheckpointMismatch("checkpoint was trained for another number of classes", "skip_mismatched=True",
                                 "keeps these tensors freshly initialised", report.skipped, class_problems)
    if strict and report.unexpected:
        raise CheckpointMismatch("checkpoint has tensors this model does not own (another architecture?)",
                                 "strict=False", "skips them", report.unexpected)
    if not to_load:
        raise ValueError(f"checkpoint ({report.source}) holds no tensor of this model "
                         f"({len(sd)} tensors after dropping {len(report.dropped) + len(report.recomputed)})")
    lacking = report.missing if full_model else [k for k in report.missing if SWIN_KEY.match(k)]
    if strict and lacking:
        what = "tensors of this model" if full_model else "Swin backbone tensors (another variant?)"
        raise CheckpointMismatch(f"checkpoint lacks {len(lacking)} {what}", "strict=False",
                                 "leaves them at their init", lacking)
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the model's weights (of the model inside DDP or torch.compile) as safetensors,
    atomically (:func:`write_atomically`)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = unwrap_model(model).state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": "semask", **{k: str(v) for k, v in (metadata or {}).items()}}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a new file next to ``path``, then rename it to ``path``: a failure
    leaves no partial file and any old ``path`` untouched. The file gets the permissions
    ``open`` gives (0666 less the umask), where ``tempfile.mkstemp`` and safetensors 0.8's
    writer give 0600. The file and the rename are flushed to disk."""
    for attempt in itertools.count():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{attempt}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = os.stat(tmp).st_mode  # as the umask made it
        write(str(tmp))
        os.chmod(tmp, mode)
        _fsync(tmp)  # the data on disk before the rename makes it the file (a crash or power loss)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)  # and the rename itself
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync(path, folder: bool = False) -> None:
    """Flush a file's data (or a folder's entries, where the system allows it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:  # folders cannot be opened on Windows
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)
