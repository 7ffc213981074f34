"""Inference modes of the recipe: whole image, sliding window, multi-scale + flip.

All take a normalised image [1, 3, H, W] and return class probabilities [1, K, h, w] at
``out_size`` (the label's size), like mmseg's ``inference`` (softmax of the logits;
multi-scale + flip averages the probabilities of every scale and flip).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.transforms import keep_ratio_size

MIN_SIZE = 32  # the model's smallest input


def logits_of(out) -> Tensor:
    """The logits of a model's output (a SegOutput, or a tensor of logits)."""
    return out.logits if hasattr(out, "logits") else out


def _logits(model, x: Tensor, pad_multiple: int | None = None) -> Tensor:
    """Logits [1, K, H, W] for x [1, 3, H, W], run as it is (mmseg's whole / slide
    inference: the backbone pads inside, and its coarse maps, of odd sizes, are upsampled
    onto the stride-4 grid). ``pad_multiple`` (e.g. 32, the backbone's total stride): x is
    zero-padded (zero = the mean colour after normalisation, like the training crops'
    padding) right / bottom to a multiple of it and the logits cropped back, so that every
    stage's map stays aligned with the pixels; not what the released models were scored
    with."""
    H, W = x.shape[-2:]
    if pad_multiple:
        x = F.pad(x, (0, (-W) % pad_multiple, 0, (-H) % pad_multiple))
    out = model(x)
    return logits_of(out).float()[:, :, :H, :W]


def _resize(x: Tensor, size, mode: str = "bilinear") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def scaled_size(h: int, w: int, test_scale=None, ratio: float = 1.0) -> tuple[int, int]:
    """Inference size: keep-ratio rescale to test_scale (long, short) * ratio, or (h, w) * ratio."""
    if test_scale is not None:
        nh, nw = keep_ratio_size(h, w, tuple(test_scale), ratio)
    else:
        nh, nw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    return max(nh, MIN_SIZE), max(nw, MIN_SIZE)


def slide_logits(model, x: Tensor, crop, stride, pad_multiple: int | None = None) -> Tensor:
    """Logits [1, K, H, W] averaged over overlapping crop windows (mmseg slide_inference:
    the last window in each direction is aligned to the border)."""
    _, _, H, W = x.shape
    ch, cw = min(crop[0], H), min(crop[1], W)
    sh, sw = stride
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    total, count = None, x.new_zeros(1, 1, H, W)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits = _logits(model, x[:, :, y1:y2, x1:x2], pad_multiple)
            if total is None:
                total = x.new_zeros(1, logits.shape[1], H, W)
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def single_scale_probs(model, image: Tensor, out_size, mode: str = "whole", test_scale=None,
                       ratio: float = 1.0, flip: bool = False, crop=(512, 512), stride=(341, 341),
                       pad_multiple: int | None = None) -> Tensor:
    x = _resize(image, scaled_size(*image.shape[-2:], test_scale, ratio))
    if flip:
        x = x.flip(-1)
    if mode == "slide":
        logits = slide_logits(model, x, crop, stride, pad_multiple)
    else:
        logits = _logits(model, x, pad_multiple)
    if flip:
        logits = logits.flip(-1)
    return _resize(logits, out_size).softmax(1)


@torch.no_grad()
def predict_probs(model, image: Tensor, out_size=None, mode: str = "whole", test_scale=None,
                  ms_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), crop=(512, 512), stride=(341, 341),
                  ms_base: str = "whole", pad_multiple: int | None = None) -> Tensor:
    """mode: ``whole`` | ``slide`` | ``ms_flip`` (every ratio, plain and flipped, each run
    as ``ms_base``) -> probabilities [1, K, *out_size]. ``pad_multiple``: see
    :func:`_logits` (None: as mmseg)."""
    out_size = tuple(out_size or image.shape[-2:])
    if mode in ("whole", "slide"):
        return single_scale_probs(model, image, out_size, mode, test_scale, 1.0, False, crop, stride,
                                  pad_multiple)
    if mode != "ms_flip":
        raise ValueError(f"unknown inference mode {mode!r}; choose whole, slide or ms_flip")
    probs = None
    for ratio in ms_ratios:
        for flip in (False, True):
            p = single_scale_probs(model, image, out_size, ms_base, test_scale, ratio, flip, crop, stride,
                                   pad_multiple)
            probs = p if probs is None else probs + p
    return probs / (2 * len(ms_ratios))


def rgb_image(image) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a file path, a PIL image (as displayed: its EXIF orientation
    applied) or an [H, W, 3] uint8 NumPy array / tensor (any strides: ``bgr[..., ::-1]``)."""
    from PIL import Image, ImageOps

    from ..data.folders import rgb_array
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return rgb_array(ImageOps.exif_transpose(im))
    if isinstance(image, Image.Image):
        return rgb_array(ImageOps.exif_transpose(image))
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = (f"{image.dtype} array {tuple(image.shape)}" if hasattr(image, "shape") and hasattr(image, "dtype")
                else type(image).__name__)
        raise TypeError(f"image must be a file path, a PIL image or an [H, W, 3] uint8 RGB array, got {what} "
                        "(a normalised float batch goes to model(x) directly)")
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def eval_mode(model):
    """``model`` (an nn.Module; anything else is left alone) in eval mode inside; after,
    each of its modules back in its own mode (a frozen BatchNorm of a training model
    stays frozen, which ``model.train()`` would undo)."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    if modes:
        model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def autocast_context(amp: str, device) -> contextlib.AbstractContextManager:
    """Inference autocast: ``amp`` none (fp32) | bf16 | fp16 on ``device``'s type."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


# predict's settings without a config: mmseg's test-time defaults with no resize
PREDICT_DEFAULTS = dict(mode="whole", test_scale=None, crop=(512, 512), stride=(341, 341),
                        ms_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), pad_multiple=None)


class _FromConfig:
    """predict's default for a setting: the config's value, PREDICT_DEFAULTS' without one."""

    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG = _FromConfig()
OFF_BY_NONE = ("test_scale", "pad_multiple")  # None turns these off; the others have no off


def _predict_settings(config, given: dict) -> dict:
    """PREDICT_DEFAULTS, then what ``config`` (TrainConfig, preset or JSON file) sets, then
    the arguments ``given``: those not FROM_CONFIG, and of mode, crop, stride and
    ms_ratios not None (test_scale / pad_multiple None: no resize / no padding)."""
    from .config import TrainConfig, load_preset
    settings = dict(PREDICT_DEFAULTS)
    if config is not None:
        cfg = config if isinstance(config, TrainConfig) else load_preset(str(config))
        settings.update(mode=cfg.eval_mode, test_scale=cfg.test_scale, crop=cfg.slide_crop,
                        stride=cfg.slide_stride, ms_ratios=cfg.ms_ratios, pad_multiple=cfg.eval_pad_multiple)
    settings.update({k: v for k, v in given.items()
                     if v is not FROM_CONFIG and (v is not None or k in OFF_BY_NONE)})
    return settings


def predict(model, image, config=None, *, mode=FROM_CONFIG, test_scale=FROM_CONFIG, crop=FROM_CONFIG,
            stride=FROM_CONFIG, ms_ratios=FROM_CONFIG, pad_multiple=FROM_CONFIG, probabilities: bool = False,
            device=None) -> Tensor:
    """Segment one RGB image (see :func:`rgb_image`: a path, a PIL image or [H, W, 3] uint8):
    ImageNet-normalised, then ``mode`` whole / slide (``crop``, ``stride``) / ms_flip
    (``ms_ratios``), rescaled keep-ratio to ``test_scale`` (long, short) first if given,
    each input zero-padded to a multiple of ``pad_multiple`` if given, the probabilities
    resized back to the image's size. Returns class ids [H, W] int64, or with
    ``probabilities`` [K, H, W] float32, on ``device`` (default: the model's; CPU for a
    callable without parameters), the image cast to the model's dtype.

    ``config`` (a TrainConfig, a preset name such as "ade20k_semask_tiny_fpn" or a JSON
    file) supplies what semask-infer takes from a run's config (eval_mode, test_scale: the
    ADE20K presets' (2048, 512), slide_crop, slide_stride, ms_ratios, eval_pad_multiple);
    arguments given win, ``test_scale=None`` / ``pad_multiple=None`` turning off a config's
    resize / padding (None for the others: as not given). Without it: PREDICT_DEFAULTS,
    the whole image at its own size, unpadded. ``model`` runs in eval mode; each of its
    modules' mode is restored after."""
    from ..data import eval_transforms
    from ..data.transforms import to_tv_tensors
    opts = _predict_settings(config, dict(mode=mode, test_scale=test_scale, crop=crop, stride=stride,
                                          ms_ratios=ms_ratios, pad_multiple=pad_multiple))
    rgb = rgb_image(image)
    params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    dtype = params.dtype if params is not None and params.is_floating_point() else torch.float32
    device = device if device is not None else params.device if params is not None else "cpu"
    x, _ = eval_transforms()(*to_tv_tensors(rgb, np.zeros(rgb.shape[:2], np.uint8)))
    with eval_mode(model):
        probs = predict_probs(model, x.as_subclass(Tensor)[None].to(device, dtype), rgb.shape[:2], opts["mode"],
                              opts["test_scale"], opts["ms_ratios"], _pair(opts["crop"]), _pair(opts["stride"]),
                              pad_multiple=opts["pad_multiple"])[0]
    return probs if probabilities else probs.argmax(0)
