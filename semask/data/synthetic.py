"""A procedural segmentation dataset: textured shapes on textured backgrounds.

Every sample is rendered from ``(seed, split, index)`` alone (NumPy PCG64), so the data
set needs no download and no disk, and is identical on every machine and worker.

Classes (``SYNTHETIC_CLASSES``) and how they look:

    0 background  flat or smooth gradient (+ faint noise)
    1 disk        flat                      (vs. a flat background: only the outline)
    2 square      stripes, rotated
    3 triangle    speckle noise
    4 ring        dots, with a hole         (the hole shows what lies beneath)
    5 checker     ellipse, checkerboard

Every colour (objects and background, both colours of a texture) is drawn from the same
distribution, so no single pixel tells the class: it takes a neighbourhood (texture) or
the outline (the interior of a flat disk looks exactly like a flat background). Objects
have random sizes, positions and overlap (later ones occlude earlier ones); image sizes
vary per sample.
"""
from __future__ import annotations

import numpy as np

SYNTHETIC_CLASSES = ("background", "disk", "square", "triangle", "ring", "checker")
SPLITS = {"train": 0, "val": 1, "test": 2}
TEXTURES = {1: "flat", 2: "stripes", 3: "noise", 4: "dots", 5: "checker"}


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _contrasting(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    """A random colour at least 120 (Euclidean, RGB 0-255) away from c."""
    while True:
        d = _colour(rng)
        if np.linalg.norm(d - c) >= 120:
            return d


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, kind: str) -> np.ndarray:
    """[H, W, 3] float texture of one object or the background."""
    H, W = yy.shape
    c1 = _colour(rng)
    if kind == "flat":
        return np.broadcast_to(c1, (H, W, 3)).copy()
    if kind == "noise":
        return np.clip(c1 + rng.normal(0, 40, size=(H, W, 3)), 0, 255)
    c2 = _contrasting(rng, c1)
    period = rng.uniform(5, 10)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        sel = (np.floor(phase) % 2).astype(bool)
    elif kind == "dots":
        sel = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= (0.3 * period) ** 2
    elif kind == "checker":
        sel = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) / max(H, W)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return np.where(sel[..., None], c1, c2)


def _shape_mask(cls: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean [H, W] footprint of an object of class ``cls`` centred at (cy, cx), size r."""
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # disk
        return dy ** 2 + dx ** 2 <= r ** 2
    if cls == 4:  # ring: the hole shows whatever lies beneath
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (r * rng.uniform(0.45, 0.65)) ** 2)
    angle = rng.uniform(0, 2 * np.pi)
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if cls == 2:  # square, side 1.6 r
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if cls == 3:  # equilateral triangle inscribed in the circle of radius r
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            inside &= np.cos(a) * u + np.sin(a) * v <= r / 2
        return inside
    if cls == 5:  # ellipse
        aspect = rng.uniform(0.5, 1.0)
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1
    raise ValueError(f"no shape for class {cls}")


def render_sample(seed: int, split: str, index: int, size_range: tuple[int, int] = (96, 192),
                  min_objects: int = 3, max_objects: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """-> (image [H, W, 3] uint8, label [H, W] uint8 in 0..5); H, W uniform in size_range."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    H, W = (int(s) for s in rng.integers(size_range[0], size_range[1] + 1, size=2))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    image = _texture(rng, yy, xx, str(rng.choice(["flat", "gradient"])))
    label = np.zeros((H, W), np.uint8)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        r = rng.uniform(0.12, 0.32) * min(H, W)
        cy, cx = rng.uniform(0, 1) * H, rng.uniform(0, 1) * W
        mask = _shape_mask(cls, rng, yy, xx, cy, cx, r)
        kind = TEXTURES[cls]
        image = np.where(mask[..., None], _texture(rng, yy, xx, kind), image)
        label[mask] = cls
    image = image + rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticShapes:
    """Map-style dataset of :func:`render_sample`; item -> (image [H, W, 3] uint8, label
    [H, W] uint8, name). ``cache``: keep rendered samples in memory (renders once)."""

    classes = SYNTHETIC_CLASSES
    ignore_index = 255

    def __init__(self, split: str = "train", length: int = 2000, seed: int = 0,
                 size_range: tuple[int, int] = (96, 192), cache: bool = True):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if length < 1:
            raise ValueError(f"synthetic dataset length must be positive, got {length}")
        self.split, self.length, self.seed = split, length, seed
        self.size_range = tuple(size_range)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        if self._cache is not None and index in self._cache:
            image, label = self._cache[index]
        else:
            image, label = render_sample(self.seed, self.split, index, self.size_range)
            if self._cache is not None:
                self._cache[index] = (image, label)
        return image, label, f"synthetic_{self.split}_{index:06d}"
