"""Readers for the ADE20K and Cityscapes folder layouts, and for a folder of your own data.

ADE20K (ADEChallengeData2016)::

    root/images/{training,validation}/*.jpg
    root/annotations/{training,validation}/*.png    0 = other (ignored), 1..150 = classes

``reduce_zero_label`` (the recipe): 0 -> 255, k -> k - 1, so training sees 0..149.

Cityscapes::

    root/leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<name>_gtFine_labelTrainIds.png   0..18, 255

The ``*_labelTrainIds.png`` files are made from the released ``*_labelIds.png`` by
cityscapesscripts' ``createTrainIdLabelImgs``; a folder that only has labelIds gets an
error saying so.

Your own data (``custom_folder``, mmseg's CustomDataset layout)::

    root/<image dir>/[subfolders/]<stem><image suffix>
    root/<label dir>/[subfolders/]<stem><label suffix>      0..K-1 and 255 (ignore)

with an image and a label folder per split (``images/train`` and ``annotations/train`` by
default); ``reduce_zero_label`` reads 0 as ignore and k as class k - 1, as ADE20K.

Every problem with a sample (missing label, image / label size mismatch, label values
outside the class range) raises :class:`DataError` naming the file; one found on reading the
sample's files, :class:`SampleError`.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ADE20K_SPLITS = {"train": "training", "val": "validation"}
CITYSCAPES_SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# images of a custom folder without an image suffix: the extensions Pillow reads that
# segmentation datasets ship
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose applies
# what Pillow raises on a bad file besides OSError: a broken PNG chunk (a PNG cut off past its
# first IDAT chunk), a malformed EXIF block, an image too large to decode
READ_ERRORS = (OSError, SyntaxError, struct.error, Image.DecompressionBombError)

# The 150 ADE20K (SceneParsing) class names in label order 1..150 (0 = other), as the
# dataset's objectInfo150 and mmseg's ADE20KDataset name them
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")


def rgb_array(im: Image.Image) -> np.ndarray:
    """[H, W, 3] uint8 of an image of any mode. 16-bit greyscale keeps its high byte, as
    OpenCV's colour read (mmcv.imread, the release's loader) does; PIL's RGB conversion
    would clip it at 255."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.array(im.convert("RGB"))


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file."""


class SampleError(DataError):
    """A sample's image or label, read, is unreadable or malformed (what semask-check-data lists)."""


class SegmentationFolder:
    """(image path, label path) pairs -> (image [H, W, 3] uint8, label [H, W] uint8, name).

    Images are read as displayed (EXIF orientation applied). Labels are checked on read:
    same size as the image, values in 0..num_classes-1 or 255 (in the file: 1..num_classes,
    0 or 255 with ``reduce_zero_label``); 16-bit label PNGs are checked before the cast.
    """

    ignore_index = 255

    def __init__(self, pairs: list[tuple[Path, Path]], num_classes: int, reduce_zero_label: bool = False,
                 classes: tuple[str, ...] | None = None):
        if not pairs:
            raise DataError("no samples found")
        # class ids are stored in uint8 with 255 = ignore; reduce_zero_label stores class c as c + 1
        most = self.ignore_index - int(reduce_zero_label)
        if not 1 <= num_classes <= most:
            raise DataError(f"num_classes={num_classes}: labels read from folders hold 1..{most} classes "
                            f"({self.ignore_index} is the ignore index"
                            + (", class c is stored as c + 1)" if reduce_zero_label else ")"))
        self.pairs, self.num_classes, self.reduce_zero_label = pairs, num_classes, reduce_zero_label
        self.classes = classes or tuple(f"class_{i}" for i in range(num_classes))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, label_path = self.pairs[index]
        try:
            with Image.open(image_path) as im:
                # as displayed (EXIF orientation), as OpenCV's colour read in the release's
                # loader and semask-infer
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                image = rgb_array(ImageOps.exif_transpose(im))
        except READ_ERRORS as exc:
            raise SampleError(f"cannot read image {image_path}: {exc}") from exc
        try:
            with Image.open(label_path) as im:
                label = np.array(im)
        except READ_ERRORS as exc:
            raise SampleError(f"cannot read label {label_path}: {exc}") from exc
        if label.ndim != 2:
            raise SampleError(f"label {label_path} must be a single-channel PNG of class ids, "
                              f"got shape {label.shape} (mode {im.mode})")
        if label.shape != image.shape[:2]:
            raise SampleError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} but image "
                              f"{image_path} is {image.shape[1]}x{image.shape[0]} (W x H)"
                              + (f", as displayed: its EXIF orientation {orientation} is applied"
                                 if orientation != 1 else ""))
        raw = label.astype(np.int64)  # 16-bit PNGs hold values past 255: checked before any cast
        ignored = (raw == self.ignore_index) | ((raw == 0) if self.reduce_zero_label else False)
        label = np.where(ignored, self.ignore_index, raw - 1 if self.reduce_zero_label else raw)
        bad = ((label < 0) | (label >= self.num_classes)) & ~ignored
        if bad.any():
            first = int(self.reduce_zero_label)
            raise SampleError(f"label {label_path} has values {np.unique(raw[bad])[:8].tolist()} outside "
                              f"{first}..{self.num_classes - 1 + first} (and {self.ignore_index} = ignore"
                              + (", 0 = other: reduce_zero_label)" if self.reduce_zero_label else ")"))
        return image, label.astype(np.uint8), image_path.stem


def is_hidden(path: Path) -> bool:
    """A hidden file (.DS_Store, macOS's ._x.jpg copies of resource forks) is no sample."""
    return path.name.startswith(".")


def _files(folder: Path, skip: Path | None = None) -> list[Path]:
    """The files under ``folder``, sorted, as mmcv.scandir lists them: symlinked subfolders
    followed (each real folder once), hidden files (.DS_Store, macOS's ._x.jpg) left out;
    nothing under ``skip`` (a label folder inside the image folder)."""
    found, visited = [], set()
    for parent, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in visited or (skip is not None and real == os.path.realpath(skip)):
            dirs.clear()
            continue
        visited.add(real)
        found += [p for p in (Path(parent, n) for n in names) if not is_hidden(p) and p.is_file()]
    return sorted(found)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}")
    return path


def ade20k(root: str | Path, split: str = "train", num_classes: int = 150) -> SegmentationFolder:
    """ADEChallengeData2016 reader (reduce_zero_label)."""
    if split not in ADE20K_SPLITS:
        raise ValueError(f"unknown ADE20K split {split!r}; choose one of {', '.join(ADE20K_SPLITS)}")
    root = Path(root)
    sub = ADE20K_SPLITS[split]
    image_dir = _require_dir(root / "images" / sub, "ADE20K images")
    label_dir = _require_dir(root / "annotations" / sub, "ADE20K annotations")
    pairs, seen = [], {}
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p)):
        if image.stem in seen:  # both would pair with the one <stem>.png: a sample counted twice
            raise DataError(f"images {seen[image.stem].name} and {image.name} in {image_dir} share the "
                            f"label {image.stem}.png: keep one of them")
        seen[image.stem] = image
        label = label_dir / (image.stem + ".png")
        if not label.is_file():
            raise DataError(f"missing label for image {image}: expected {label}")
        pairs.append((image, label))
    if not pairs:
        raise DataError(f"no images (*.jpg / *.png) in {image_dir}")
    classes = ADE20K_CLASSES if num_classes == len(ADE20K_CLASSES) else None
    return SegmentationFolder(pairs, num_classes, reduce_zero_label=True, classes=classes)


def cityscapes(root: str | Path, split: str = "train") -> SegmentationFolder:
    """Cityscapes leftImg8bit + gtFine *_labelTrainIds.png reader (19 classes)."""
    if split not in CITYSCAPES_SPLITS:
        raise ValueError(f"unknown Cityscapes split {split!r}; choose one of {', '.join(CITYSCAPES_SPLITS)}")
    root = Path(root)
    image_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes leftImg8bit")
    label_dir = _require_dir(root / "gtFine" / split, "Cityscapes gtFine")
    images = sorted(p for p in image_dir.glob("*/*_leftImg8bit.png") if not is_hidden(p))
    if not images:
        raise DataError(f"no *_leftImg8bit.png images in {image_dir}/<city>/")
    if not any(label_dir.glob("*/*_gtFine_labelTrainIds.png")) and any(label_dir.glob("*/*_gtFine_labelIds.png")):
        raise DataError(f"{label_dir} has *_gtFine_labelIds.png but no *_gtFine_labelTrainIds.png: "
                        "convert them first with cityscapesscripts "
                        "(CITYSCAPES_DATASET=<root> csCreateTrainIdLabelImgs); training uses the 19 train ids")
    pairs = []
    for image in images:
        stem = image.name[: -len("_leftImg8bit.png")]
        label = label_dir / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        if not label.is_file():
            ids = label.with_name(f"{stem}_gtFine_labelIds.png")
            raise DataError(f"missing label for image {image}: expected {label}"
                            + (f" ({ids.name} is there: convert every labelIds file with cityscapesscripts' "
                               "csCreateTrainIdLabelImgs)" if ids.is_file() else ""))
        pairs.append((image, label))
    return SegmentationFolder(pairs, len(CITYSCAPES_CLASSES), classes=CITYSCAPES_CLASSES)


@dataclass(frozen=True)
class FolderLayout:
    """Where a custom folder keeps each split and how its files are named (:func:`custom_folder`)."""

    # split name -> (image dir, label dir), under the data root
    splits: dict = field(default_factory=lambda: {s: (f"images/{s}", f"annotations/{s}") for s in ("train", "val")})
    image_suffix: str | None = None
    label_suffix: str = ".png"
    reduce_zero_label: bool = False
    classes: tuple[str, ...] | None = None

    def read(self, root: str | Path, split: str, num_classes: int) -> SegmentationFolder:
        if split not in self.splits:
            raise ValueError(f"the folder dataset has the splits {', '.join(self.splits)}, not {split!r}")
        image_dir, label_dir = self.splits[split]
        return custom_folder(root, image_dir, label_dir, num_classes, image_suffix=self.image_suffix,
                             label_suffix=self.label_suffix, reduce_zero_label=self.reduce_zero_label,
                             classes=self.classes)


def custom_folder(root: str | Path, image_dir: str, label_dir: str, num_classes: int, *,
                  image_suffix: str | None = None, label_suffix: str = ".png", reduce_zero_label: bool = False,
                  classes: tuple[str, ...] | None = None) -> SegmentationFolder:
    """A folder of your own data, paired as mmseg's CustomDataset pairs ``img_suffix`` and
    ``seg_map_suffix``: every image under ``root/image_dir`` (subfolders included: :func:`_files`) with
    ``root/label_dir/<same subfolder>/<stem><label_suffix>``. ``stem`` is the file name less
    ``image_suffix`` (e.g. "_leftImg8bit.png"); without one, less its extension, any of
    ``FOLDER_IMAGE_SUFFIXES``. ``classes``: names of the ``num_classes`` classes (tables)."""
    root = Path(root)
    images = _require_dir(root / image_dir, "image")
    labels = _require_dir(root / label_dir, "label")
    if classes is not None and len(classes) != num_classes:
        raise DataError(f"{len(classes)} class names for num_classes={num_classes}")
    if not label_suffix:
        raise DataError("label_suffix is empty: it ends a label's file name, e.g. .png")
    shared = images.resolve() == labels.resolve()
    if shared and (image_suffix is None or image_suffix == label_suffix):
        raise DataError(f"images and labels share the folder {images}: set an image suffix other than the "
                        f"label suffix {label_suffix!r} (e.g. .jpg), so that labels are not read as images")

    def stem_of(path: Path) -> str | None:
        # a label beside the images; a name ending in both suffixes has the longer one
        if shared and path.name.endswith(label_suffix) and len(label_suffix) > len(image_suffix):
            return None
        if image_suffix is None:
            return path.stem if path.suffix.lower() in FOLDER_IMAGE_SUFFIXES else None
        stem = path.name[: -len(image_suffix)] if path.name.endswith(image_suffix) else ""
        return stem or None  # a file named just the suffix has no stem

    pairs, seen = [], {}
    for image in _files(images, skip=None if shared else labels):
        stem = stem_of(image)
        if stem is None:
            continue
        label = labels / image.parent.relative_to(images) / (stem + label_suffix)
        if label in seen:  # both would pair with one label: a sample counted twice
            raise DataError(f"images {seen[label].name} and {image.name} in {image.parent} share the label "
                            f"{label.name}: keep one of them, or set an image suffix")
        seen[label] = image
        if not label.is_file():
            raise DataError(f"missing label for image {image}: expected {label}")
        pairs.append((image, label))
    if not pairs:
        wanted = f"*{image_suffix}" if image_suffix else " / ".join(f"*{s}" for s in FOLDER_IMAGE_SUFFIXES)
        raise DataError(f"no images ({wanted}) in {images} or its subfolders")
    return SegmentationFolder(pairs, num_classes, reduce_zero_label, tuple(classes) if classes else None)
