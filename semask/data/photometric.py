"""mmseg's ``PhotoMetricDistortion`` (the SeMask recipe's colour augmentation) on uint8 tensors.

Each op is applied with probability 0.5, in this order (mmseg 0.x, which the released
SeMask code uses; each op clips to 0..255 and truncates to uint8, as there):

1. brightness: x + beta, beta ~ U(-32, 32);
2. contrast: x * alpha, alpha ~ U(0.5, 1.5), here or after 4 (one coin flip decides);
3. saturation: S * alpha in HSV, alpha ~ U(0.5, 1.5), S clipped to full saturation;
4. hue: H + d in OpenCV's 8-bit hue units of 2 degrees, d an integer in [-18, 17].

HSV here is the float hexcone model OpenCV uses (V = max, S = (V - min) / V, H from the
max channel), without OpenCV's rounding of H, S, V to 8 bits between the steps. Masks pass
through untouched.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """[3, H, W] RGB float 0..255 -> [3, H, W] (hue in degrees 0..360, saturation 0..1,
    value 0..255)."""
    r, g, b = rgb.unbind(0)
    v, _ = rgb.max(0)
    c = v - rgb.min(0)[0]
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = c.clamp_min(1e-12)
    h = torch.where(v == r, torch.remainder((g - b) / safe, 6.0),
                    torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = torch.where(c > 0, 60.0 * h, torch.zeros_like(h))
    return torch.stack([h, s, v])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`: [3, H, W] -> RGB float 0..255."""
    h, s, v = hsv.unbind(0)
    c = v * s
    sector = torch.remainder(h, 360.0) / 60.0
    x = c * (1 - (torch.remainder(sector, 2.0) - 1).abs())
    z = torch.zeros_like(c)
    index = sector.floor().long().clamp(0, 5)
    # (r, g, b) - m per sector of 60 degrees
    table = torch.stack([torch.stack(t) for t in ((c, x, z), (x, c, z), (z, c, x),
                                                   (z, x, c), (x, z, c), (c, z, x))])
    rgb = table.gather(0, index[None, None].expand(1, 3, *index.shape))[0]
    return rgb + (v - c)


def _to_uint8(x: Tensor) -> Tensor:
    """Clip to 0..255 and truncate, as ``np.clip(...).astype(np.uint8)``."""
    return x.clamp(0, 255).to(torch.uint8)


class PhotoMetricDistortion:
    """(image uint8 [3, H, W], mask) -> (distorted image, mask); see the module docstring."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(0, 2, ()))

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(()))

    @staticmethod
    def _integer(lo: int, hi: int) -> int:
        """Uniform in [lo, hi), as ``np.random.randint``."""
        return int(torch.randint(lo, hi, ()))

    def _contrast(self, img: Tensor) -> Tensor:
        if self._coin():
            img = _to_uint8(img.float() * self._uniform(*self.contrast_range))
        return img

    def __call__(self, image: Tensor, mask: Tensor):
        img = image.as_subclass(Tensor)
        if self._coin():
            d = self.brightness_delta
            img = _to_uint8(img.float() + self._uniform(-d, d))
        contrast_first = self._coin()
        if contrast_first:
            img = self._contrast(img)
        if self._coin():
            hsv = rgb_to_hsv(img.float())
            hsv[1] = (hsv[1] * self._uniform(*self.saturation_range)).clamp(0, 1)
            img = _to_uint8(hsv_to_rgb(hsv).round())
        if self._coin():
            hsv = rgb_to_hsv(img.float())
            hsv[0] = hsv[0] + 2.0 * self._integer(-self.hue_delta, self.hue_delta)
            img = _to_uint8(hsv_to_rgb(hsv).round())
        if not contrast_first:
            img = self._contrast(img)
        return (tv_tensors.wrap(img, like=image) if isinstance(image, tv_tensors.TVTensor)
                else img), mask
