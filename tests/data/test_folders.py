"""ADE20K / Cityscapes readers on generated fixture folders, and their bad-data errors."""
import numpy as np
import pytest
from PIL import Image

from semask.data import DataError, ade20k, cityscapes
from semask.data.folders import rgb_array


def test_ade20k_loads_with_reduce_zero_label(ade_root):
    train, val = ade20k(ade_root, "train"), ade20k(ade_root, "val")
    assert (len(train), len(val)) == (3, 2)
    raw = np.asarray(Image.open(ade_root / "annotations" / "training" / "ADE_training_00000001.png"))
    image, label, name = train[1]
    assert name == "ADE_training_00000001"
    assert image.shape == (41, 50, 3) and image.dtype == np.uint8 and label.shape == (41, 50)
    assert label[0, :4].tolist() == [255, 0, 149, 74]          # 0 -> ignore, k -> k - 1
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    np.testing.assert_array_equal(label, expected)
    # class names in label order (objectInfo150): 1 wall, 8 bed, 150 flag
    assert (train.classes[0], train.classes[7], train.classes[149]) == ("wall", "bed", "flag")
    assert len(set(train.classes)) == 150


def test_cityscapes_loads_train_ids(cityscapes_root):
    train = cityscapes(cityscapes_root, "train")
    assert len(train) == 3 and len(train.classes) == 19
    image, label, name = train[2]
    assert name == "bochum_000000_000019_leftImg8bit"
    assert image.shape == (32, 64, 3) and label[0, :3].tolist() == [255, 0, 18]
    assert len(cityscapes(cityscapes_root, "val")) == 1


def test_cityscapes_with_only_label_ids_says_how_to_convert(cityscapes_root):
    for p in (cityscapes_root / "gtFine").rglob("*_labelTrainIds.png"):
        p.rename(p.with_name(p.name.replace("labelTrainIds", "labelIds")))
    with pytest.raises(DataError, match="labelTrainIds.*createTrainIdLabelImgs|csCreateTrainIdLabelImgs"):
        cityscapes(cityscapes_root, "train")


def test_missing_label_names_the_image(ade_root):
    (ade_root / "annotations" / "training" / "ADE_training_00000002.png").unlink()
    with pytest.raises(DataError, match="missing label for image .*ADE_training_00000002.jpg"):
        ade20k(ade_root, "train")


def test_size_mismatch_names_the_files(ade_root, write_pair):
    label = np.ones((10, 12), np.uint8)
    write_pair(ade_root / "images" / "training" / "ADE_training_00000000.jpg",
               ade_root / "annotations" / "training" / "ADE_training_00000000.png", label, image_size=(11, 12))
    with pytest.raises(DataError, match=r"ADE_training_00000000.png is 12x10 but image .*ADE_training_00000000.jpg is 12x11"):
        ade20k(ade_root, "train")[0]


def test_size_mismatch_of_an_image_without_exif_orientation_says_nothing_of_one(ade_root, write_pair):
    """The EXIF note is for images turned as displayed (orientation != 1): a plain JPEG's
    mismatch ends with the sizes."""
    write_pair(ade_root / "images" / "training" / "ADE_training_00000000.jpg",
               ade_root / "annotations" / "training" / "ADE_training_00000000.png",
               np.ones((10, 12), np.uint8), image_size=(11, 12))
    with pytest.raises(DataError) as exc:
        ade20k(ade_root, "train")[0]
    assert str(exc.value).endswith("ADE_training_00000000.jpg is 12x11 (W x H)")
    assert "EXIF" not in str(exc.value)


def test_label_values_out_of_range_name_the_file(ade_root, cityscapes_root, write_pair):
    label = np.full((8, 8), 151, np.uint8)    # -> 150 after reduce_zero_label: outside 0..149
    write_pair(ade_root / "images" / "validation" / "ADE_validation_00000001.jpg",
               ade_root / "annotations" / "validation" / "ADE_validation_00000001.png", label)
    with pytest.raises(DataError, match=r"ADE_validation_00000001.png has values \[151\] outside 1..150"):
        ade20k(ade_root, "val")[1]
    bad = next((cityscapes_root / "gtFine" / "val").rglob("*.png"))
    Image.fromarray(np.full((32, 64), 19, np.uint8)).save(bad)
    with pytest.raises(DataError, match=rf"{bad.name} has values \[19\] outside 0..18"):
        cityscapes(cityscapes_root, "val")[0]


def test_rgb_label_and_missing_folder(ade_root, tmp_path):
    lp = ade_root / "annotations" / "training" / "ADE_training_00000000.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(lp)
    with pytest.raises(DataError, match="ADE_training_00000000.png must be a single-channel"):
        ade20k(ade_root, "train")[0]
    with pytest.raises(DataError, match="ADE20K images folder not found"):
        ade20k(tmp_path / "nowhere", "train")


def test_rgb_array_of_16_bit_grey_keeps_the_high_byte(tmp_path):
    """OpenCV's colour read (the release's loader) shifts 16-bit values right by 8; PIL's
    RGB conversion would clip them at 255."""
    grey = np.array([[0, 255, 256 * 27 + 200], [256 * 200, 65535, 1000]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        rgb = rgb_array(im)
    want = np.array([[0, 0, 27], [200, 255, 3]], np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert (rgb == want[..., None]).all()
    colour = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(rgb_array(Image.fromarray(colour)), colour)


def test_16_bit_labels_past_255_are_refused_not_wrapped(ade_root):
    """A 16-bit label PNG: 256 would become the ignore index after reduce_zero_label and
    257 / 300 would wrap to 0 / 43 in uint8; they are errors. Valid 16-bit ids read as is."""
    path = ade_root / "annotations" / "training" / "ADE_training_00000000.png"
    label = np.asarray(Image.open(path)).astype(np.uint16)
    Image.fromarray(label).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(ade20k(ade_root, "train")[0][1],
                                  np.where(label == 0, 255, label.astype(np.int64) - 1))
    label[3, :3] = [256, 257, 300]
    Image.fromarray(label).save(path)
    with pytest.raises(DataError, match=r"ADE_training_00000000.png has values \[256, 257, 300\] outside 1..150"):
        ade20k(ade_root, "train")[0]
    with pytest.raises(DataError, match="num_classes=255: labels read from folders hold 1..254 classes"):
        ade20k(ade_root, "train", num_classes=255)


def test_image_with_exif_orientation_is_read_as_displayed(ade_root, tmp_path):
    """EXIF orientation 6 (displayed turned 90 degrees clockwise), as semask-infer and the
    release's OpenCV read show it; the label is of the displayed size."""
    image_path = ade_root / "images" / "training" / "ADE_training_00000000.jpg"
    stored = np.random.default_rng(3).integers(0, 256, (36, 52, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(image_path, exif=exif)
    decoded = np.asarray(Image.open(image_path).convert("RGB"))   # stored orientation
    label_path = ade_root / "annotations" / "training" / "ADE_training_00000000.png"
    Image.fromarray(np.ones((36, 52), np.uint8)).save(label_path)   # of the stored size: said so
    with pytest.raises(DataError, match="is 52x36 but image .* is 36x52 .*as displayed: its EXIF orientation 6"):
        ade20k(ade_root, "train")[0]
    Image.fromarray(np.ones((52, 36), np.uint8)).save(label_path)
    image, label, _ = ade20k(ade_root, "train")[0]
    assert image.shape == (52, 36, 3) and label.shape == (52, 36)
    np.testing.assert_array_equal(image, np.rot90(decoded, k=-1))


def test_two_images_of_one_stem_are_refused(ade_root, write_pair):
    """x.jpg and x.png would both pair with x.png (one sample counted twice)."""
    label = np.ones((40, 50), np.uint8)
    write_pair(ade_root / "images" / "training" / "ADE_training_00000001.png",
               ade_root / "annotations" / "training" / "ADE_training_00000001.png", label)
    with pytest.raises(DataError, match="ADE_training_00000001.jpg and ADE_training_00000001.png .* share the label"):
        ade20k(ade_root, "train")


def test_partly_converted_cityscapes_names_the_conversion(cityscapes_root):
    label = next((cityscapes_root / "gtFine" / "train").rglob("*_labelTrainIds.png"))
    label.rename(label.with_name(label.name.replace("labelTrainIds", "labelIds")))
    with pytest.raises(DataError, match="missing label .*labelIds.png is there: convert .*csCreateTrainIdLabelImgs"):
        cityscapes(cityscapes_root, "train")


def test_hidden_files_are_no_samples(ade_root, cityscapes_root):
    """macOS leaves ._<name> files beside copied ones: ADE20K and Cityscapes readers skip them."""
    junk = [ade_root / "images" / "training" / "._ADE_training_00000000.jpg",
            cityscapes_root / "leftImg8bit" / "train" / "aachen" / "._aachen_000000_000019_leftImg8bit.png"]
    for path in junk:
        path.write_bytes(b"\0\5\26\7")
    assert len(ade20k(ade_root, "train")) == 3 and len(cityscapes(cityscapes_root, "train")) == 3
