"""Joint image / label augmentation of the SeMask (mmseg) recipe on torchvision.transforms.v2.

Samples flow as ``(tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8/long [H, W])``;
v2 resizes masks with nearest neighbour and leaves them alone in colour ops and
Normalize. Where v2 has the op we use it (RandomHorizontalFlip, ToDtype, Normalize,
functional resize / crop / pad); the recipe-specific rules that v2 lacks are small
callables built on v2.functional:

* :class:`RandomResize` - mmseg ``Resize(img_scale=(long, short), ratio_range)`` with
  keep_ratio: scale = min(int(long*r) / long_side, int(short*r) / short_side), r ~
  U(ratio_range) or drawn from a list of ratios.
* :class:`CatMaxRatioCrop` - mmseg ``RandomCrop(cat_max_ratio)``: up to 10 tries for a
  crop where no class covers more than ``cat_max_ratio`` of the labelled pixels.
* :class:`~.photometric.PhotoMetricDistortion` - mmseg ``PhotoMetricDistortion`` (additive
  brightness, multiplicative contrast, HSV saturation and hue; torchvision's ColorJitter
  scales brightness and blends contrast and saturation instead).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .photometric import PhotoMetricDistortion

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 (mmseg img_norm_cfg)
IMAGENET_STD = (58.395, 57.12, 57.375)
IGNORE_INDEX = 255


def keep_ratio_size(h: int, w: int, scale: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    """Output (h, w) of mmseg's keep-ratio rescale to ``scale`` (long, short edge) * ratio:
    the scaled edges are truncated to ints first (mmseg ``Resize`` and ``MultiScaleFlipAug``:
    ``int(img_scale[i] * ratio)``), then factor = min(long / long side, short / short side)
    and the sides round half up (mmcv ``rescale_size``)."""
    long_edge, short_edge = int(max(scale) * ratio), int(min(scale) * ratio)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


class RandomResize:
    """Keep-ratio resize to ``scale`` (long, short) times a random r: r ~ U(ratio_range),
    or drawn from ``choices`` when given (mmseg ``Resize`` with a tuple ``ratio_range`` /
    with a list, as the release's ADE20K configs ``[0.5, 0.75, ..., 1.75]``). ``scale``
    None: the image's own size (mmseg ``Resize(img_scale=None, ratio_range)``)."""

    def __init__(self, scale: tuple[int, int] | None, ratio_range: tuple[float, float],
                 choices: tuple[float, ...] | None = None):
        self.scale, self.ratio_range = scale and tuple(scale), tuple(ratio_range)
        self.choices = tuple(choices) if choices else None

    def __call__(self, image: Tensor, mask: Tensor):
        if self.choices:
            ratio = self.choices[int(torch.randint(len(self.choices), ()))]
        else:
            lo, hi = self.ratio_range
            ratio = lo + (hi - lo) * float(torch.rand(()))
        h, w = image.shape[-2:]
        size = list(keep_ratio_size(h, w, self.scale or (max(h, w), min(h, w)), ratio))
        # bilinear without antialiasing, as mmcv.imrescale (cv2 INTER_LINEAR) in the recipe
        return TF.resize(image, size, antialias=False), TF.resize(mask, size)


class CatMaxRatioCrop:
    """Random crop of at most ``size`` (h, w); retries (10x) while one class exceeds
    ``cat_max_ratio`` of the crop's non-ignored pixels (1.0 disables the check)."""

    def __init__(self, size: tuple[int, int], cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
        self.size, self.cat_max_ratio, self.ignore_index = tuple(size), cat_max_ratio, ignore_index

    def _offsets(self, h: int, w: int) -> tuple[int, int]:
        top = int(torch.randint(0, max(h - self.size[0], 0) + 1, ()))
        left = int(torch.randint(0, max(w - self.size[1], 0) + 1, ()))
        return top, left

    def __call__(self, image: Tensor, mask: Tensor):
        h, w = image.shape[-2:]
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        top, left = self._offsets(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                crop = mask[top:top + ch, left:left + cw]
                counts = torch.bincount(crop[crop != self.ignore_index].flatten().long())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = self._offsets(h, w)
        return TF.crop(image, top, left, ch, cw), TF.crop(mask, top, left, ch, cw)


class PadTo:
    """Pad right / bottom up to ``size`` (h, w): image with 0, label with 255."""

    def __init__(self, size: tuple[int, int], ignore_index: int = IGNORE_INDEX):
        self.size, self.ignore_index = tuple(size), ignore_index

    def __call__(self, image: Tensor, mask: Tensor):
        h, w = image.shape[-2:]
        pad = [0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0)]  # left, top, right, bottom
        if pad[2] == 0 and pad[3] == 0:
            return image, mask
        return TF.pad(image, pad, fill=0), TF.pad(mask, pad, fill=self.ignore_index)


def normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Transform:
    """uint8 image -> float32 (still 0-255) -> (x - mean) / std; masks pass through."""
    return v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),
                       v2.Normalize(mean, std)])


class JointCompose:
    """Apply ``(image, mask) -> (image, mask)`` callables (v2 transforms included) in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, mask: Tensor):
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return "JointCompose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


def train_transforms(crop_size: tuple[int, int], img_scale: tuple[int, int] | None,
                     ratio_range: tuple[float, float], cat_max_ratio: float = 0.75,
                     flip_prob: float = 0.5, photometric: bool = True,
                     ratio_choices: tuple[float, ...] | None = None) -> JointCompose:
    """Resize (ratio) -> crop (cat_max_ratio) -> flip -> photometric -> normalize -> pad 255.
    ``img_scale`` None: the ratio scales the image's own size (ratio_range (1, 1): no
    resize). ``ratio_choices``: draw the resize ratio from these instead of U(ratio_range)."""
    steps = []
    if img_scale is not None or ratio_choices or tuple(ratio_range) != (1, 1):  # else: no resize
        steps.append(RandomResize(img_scale, ratio_range, ratio_choices))
    steps.append(CatMaxRatioCrop(crop_size, cat_max_ratio))
    steps.append(v2.RandomHorizontalFlip(flip_prob))
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [normalize(), PadTo(crop_size)]
    return JointCompose(steps)


def eval_transforms() -> JointCompose:
    """Normalize only: evaluation resizes inside the inference functions and scores at the
    label's original size."""
    return JointCompose([normalize()])


def to_tv_tensors(image, label) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """NumPy [H, W, 3] uint8 + [H, W] -> (Image [3, H, W] uint8, Mask [H, W] long)."""
    img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    mask = tv_tensors.Mask(torch.from_numpy(label).long())
    return img, mask
