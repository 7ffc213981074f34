"""custom_folder / FolderLayout: your own data in mmseg's CustomDataset layout."""
import numpy as np
import pytest

from semask.data import DataError, FolderLayout, build_raw_dataset, custom_folder


def _labels(rng, n, k, shape=(24, 30)):
    return [rng.integers(0, k, shape, dtype=np.uint8) for _ in range(n)]


def test_pairs_subfolders_by_suffix_and_reads_the_ids(tmp_path, write_pair):
    # a Cityscapes-like tree: the suffixes name the pairs, cities are subfolders
    rng = np.random.default_rng(0)
    written = {}
    for city, n in (("aachen", 2), ("bonn", 1)):
        for i, label in enumerate(_labels(rng, n, 4)):
            label[0, :2] = [255, 3]
            stem = f"{city}_{i}"
            write_pair(tmp_path / "img" / city / f"{stem}_leftImg8bit.png",
                       tmp_path / "gt" / city / f"{stem}_gtFine_labelTrainIds.png", label, rng=rng)
            written[stem] = label
    (tmp_path / "img" / "aachen" / "notes.txt").write_text("not an image")
    (tmp_path / "img" / "aachen" / "preview.png").write_bytes(b"")   # not the image suffix: left out
    data = custom_folder(tmp_path, "img", "gt", 4, image_suffix="_leftImg8bit.png",
                         label_suffix="_gtFine_labelTrainIds.png")
    assert [(i.relative_to(tmp_path).as_posix(), lab.relative_to(tmp_path).as_posix()) for i, lab in data.pairs] == [
        ("img/aachen/aachen_0_leftImg8bit.png", "gt/aachen/aachen_0_gtFine_labelTrainIds.png"),
        ("img/aachen/aachen_1_leftImg8bit.png", "gt/aachen/aachen_1_gtFine_labelTrainIds.png"),
        ("img/bonn/bonn_0_leftImg8bit.png", "gt/bonn/bonn_0_gtFine_labelTrainIds.png")]
    for image, label, name in (data[i] for i in range(len(data))):
        assert image.shape == (24, 30, 3) and np.array_equal(label, written[name.removesuffix("_leftImg8bit")])
    assert data.classes == ("class_0", "class_1", "class_2", "class_3")


def test_without_an_image_suffix_any_image_extension_pairs_by_stem(tmp_path, write_pair):
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.JPEG", "c.bmp", "d.tif", "e.webp"):
        stem = name.split(".")[0]
        write_pair(tmp_path / "images" / "train" / name, tmp_path / "annotations" / "train" / f"{stem}.png",
                   _labels(rng, 1, 3)[0], rng=rng)
    (tmp_path / "images" / "train" / "Thumbs.db").write_bytes(b"\0")
    data = build_raw_dataset("folder", "train", str(tmp_path), 3)     # the default layout
    assert [i.name for i, _ in data.pairs] == ["a.jpg", "b.JPEG", "c.bmp", "d.tif", "e.webp"]
    assert all(lab.name == i.name.split(".")[0] + ".png" for i, lab in data.pairs)
    assert data[2][0].shape == (24, 30, 3)


def test_reduce_zero_label_by_hand(tmp_path, write_pair):
    label = np.array([[0, 1, 3], [255, 2, 1]], np.uint8)
    write_pair(tmp_path / "i" / "x.jpg", tmp_path / "l" / "x.png", label)
    data = custom_folder(tmp_path, "i", "l", 3, reduce_zero_label=True, classes=("a", "b", "c"))
    assert data[0][1].tolist() == [[255, 0, 2], [255, 1, 0]] and data.classes == ("a", "b", "c")
    with pytest.raises(DataError, match=r"x\.png has values \[3\] outside 0\.\.2"):
        custom_folder(tmp_path, "i", "l", 3)[0]
    layout = FolderLayout({"train": ("i", "l")}, reduce_zero_label=True)   # the layout passes it on
    assert layout.read(tmp_path, "train", 3)[0][1].tolist() == [[255, 0, 2], [255, 1, 0]]


def test_images_and_labels_in_one_folder(tmp_path, write_pair):
    label = np.ones((8, 9), np.uint8)
    write_pair(tmp_path / "d" / "x.png", tmp_path / "d" / "x_mask.png", label)
    write_pair(tmp_path / "d" / "y.png", tmp_path / "d" / "y_mask.png", label)
    data = custom_folder(tmp_path, "d", "d", 2, image_suffix=".png", label_suffix="_mask.png")
    assert [(i.name, lab.name) for i, lab in data.pairs] == [("x.png", "x_mask.png"), ("y.png", "y_mask.png")]
    for suffix in (None, "_mask.png"):   # labels would be read as images
        with pytest.raises(DataError, match="images and labels share the folder .*set an image suffix"):
            custom_folder(tmp_path, "d", "d", 2, image_suffix=suffix, label_suffix="_mask.png")
    (tmp_path / "link").symlink_to(tmp_path / "d", target_is_directory=True)   # one folder, two names
    with pytest.raises(DataError, match="images and labels share the folder"):
        custom_folder(tmp_path, "d", "link", 2, label_suffix="_mask.png")
    # the image suffix ends in the label suffix: x_img.png is an image, x.png its label
    write_pair(tmp_path / "e" / "x_img.png", tmp_path / "e" / "x.png", label)
    data = custom_folder(tmp_path, "e", "e", 2, image_suffix="_img.png", label_suffix=".png")
    assert [(i.name, lab.name) for i, lab in data.pairs] == [("x_img.png", "x.png")]


def test_hidden_files_symlinks_and_a_label_folder_inside_the_images(tmp_path, write_pair):
    # as mmcv.scandir: macOS's .DS_Store and ._x files are not images, symlinked subfolders are read
    label = np.array([[0, 1], [2, 1]], np.uint8)
    write_pair(tmp_path / "train" / "a.jpg", tmp_path / "train" / "masks" / "a.png", label)
    write_pair(tmp_path / "elsewhere" / "b.jpg", tmp_path / "train" / "masks" / "city" / "b.png", label[::-1])
    (tmp_path / "train" / "city").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "train" / "again").symlink_to(tmp_path / "train", target_is_directory=True)   # a loop: read once
    (tmp_path / "train" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")                    # a broken link
    for junk in ("train/._a.jpg", "train/masks/._a.png", "train/.DS_Store"):
        (tmp_path / junk).write_bytes(b"\0\5\26\7")
    data = custom_folder(tmp_path, "train", "train/masks", 3)   # the masks are not read as images
    assert [(i.relative_to(tmp_path).as_posix(), lab.relative_to(tmp_path).as_posix()) for i, lab in data.pairs] == [
        ("train/a.jpg", "train/masks/a.png"), ("train/city/b.jpg", "train/masks/city/b.png")]
    assert [data[i][1].tolist() for i in range(2)] == [[[0, 1], [2, 1]], [[2, 1], [0, 1]]]


def test_bad_folders_are_named(tmp_path, write_pair):
    label = np.zeros((8, 9), np.uint8)
    write_pair(tmp_path / "i" / "x.jpg", tmp_path / "l" / "x.png", label)
    with pytest.raises(DataError, match="label folder not found: .*nolabels"):
        custom_folder(tmp_path, "i", "nolabels", 2)
    with pytest.raises(DataError, match=r"no images \(\*\.tif\) in .*i or its subfolders"):
        custom_folder(tmp_path, "i", "l", 2, image_suffix=".tif")
    with pytest.raises(DataError, match="label_suffix is empty"):
        custom_folder(tmp_path, "i", "l", 2, label_suffix="")
    with pytest.raises(DataError, match="3 class names for num_classes=2"):
        custom_folder(tmp_path, "i", "l", 2, classes=("a", "b", "c"))
    write_pair(tmp_path / "i" / "sub" / "y.jpg", tmp_path / "l" / "y.png", label)   # not in l/sub/
    with pytest.raises(DataError, match=r"missing label for image .*sub.y\.jpg: expected .*l.sub.y\.png"):
        custom_folder(tmp_path, "i", "l", 2)
    (tmp_path / "i" / "sub" / "y.jpg").unlink()
    write_pair(tmp_path / "i" / "x.png", tmp_path / "l" / "x.png", label)
    with pytest.raises(DataError, match="images x.jpg and x.png in .* share the label x.png"):
        custom_folder(tmp_path, "i", "l", 2)


def test_layout_splits(tmp_path, write_pair):
    label = np.zeros((8, 9), np.uint8)
    write_pair(tmp_path / "images" / "training" / "t.jpg", tmp_path / "annotations" / "training" / "t.png", label)
    write_pair(tmp_path / "images" / "validation" / "v.jpg", tmp_path / "annotations" / "validation" / "v.png", label)
    layout = FolderLayout({"train": ("images/training", "annotations/training"),
                           "val": ("images/validation", "annotations/validation")})
    assert [i.name for i, _ in layout.read(tmp_path, "val", 2).pairs] == ["v.jpg"]
    assert [i.name for i, _ in build_raw_dataset("folder", "train", str(tmp_path), 2, layout=layout).pairs] == ["t.jpg"]
    with pytest.raises(ValueError, match="the folder dataset has the splits train, val, not 'test'"):
        layout.read(tmp_path, "test", 2)
    with pytest.raises(DataError, match="image folder not found: .*images.train"):   # the default layout
        build_raw_dataset("folder", "train", str(tmp_path), 2)
    write_pair(tmp_path / "images" / "val" / "w.jpg", tmp_path / "annotations" / "val" / "w.png", label)
    assert [i.name for i, _ in build_raw_dataset("folder", "val", str(tmp_path), 2).pairs] == ["w.jpg"]
