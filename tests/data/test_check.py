"""check_dataset and semask-check-data: every bad sample listed, class pixels counted by hand."""
import numpy as np
import pytest
from PIL import Image

from semask.data import SyntheticShapes
from semask.data.check import check_dataset
from semask.train.cli import check_data_main


def write_pair(root, split, stem, label, image_size=None):
    """images/<split>/<stem>.png (grey, the label's size unless given) and annotations/<split>/<stem>.png."""
    for sub in ("images", "annotations"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    h, w = image_size or label.shape[:2]
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / split / f"{stem}.png")
    Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")


@pytest.fixture(name="folder")
def folder_fixture(tmp_path):
    """3 classes; train: 2 good samples and 4 bad ones, val: 1 good sample."""
    root = tmp_path / "data"
    a = np.array([[0, 0, 1], [1, 255, 1]], np.uint8)      # class 0: 2 px, class 1: 3 px, 1 ignored
    b = np.array([[0, 0], [0, 0]], np.uint8)               # class 0: 4 px
    write_pair(root, "train", "a", a)
    write_pair(root, "train", "b", b)
    write_pair(root, "train", "c_value", np.array([[0, 7]], np.uint8))
    write_pair(root, "train", "d_size", b, image_size=(3, 3))
    write_pair(root, "train", "e_rgb", np.zeros((2, 2, 3), np.uint8))
    write_pair(root, "train", "f_broken", b)
    (root / "images" / "train" / "f_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    write_pair(root, "val", "v", np.array([[2, 2, 0]], np.uint8))
    return root


def test_check_lists_every_bad_sample_and_counts_the_good_ones(folder):
    from semask.data import custom_folder
    raw = custom_folder(folder, "images/train", "annotations/train", 3)
    summary = check_dataset(raw, 3, progress=False)
    assert summary.samples == 6
    assert [index for index, _ in summary.problems] == [2, 3, 4, 5]   # sorted pairs: a, b, c_value, ...
    messages = [m for _, m in summary.problems]
    assert "c_value.png has values [7] outside 0..2" in messages[0]
    assert "d_size.png is 2x2 but image" in messages[1]
    assert "e_rgb.png must be a single-channel PNG" in messages[2]
    assert "cannot read image" in messages[3] and "f_broken.png" in messages[3]
    assert summary.class_pixels.tolist() == [6, 3, 0]       # by hand from a and b
    assert summary.class_images.tolist() == [2, 1, 0]
    assert summary.ignored_pixels == 1
    assert "| 0 | 66.67% | 2 |" in summary.table()


def test_check_with_loader_workers_equals_in_process(folder):
    from semask.data import custom_folder
    raw = custom_folder(folder, "images/train", "annotations/train", 3)
    one, two = check_dataset(raw, 3, progress=False), check_dataset(raw, 3, num_workers=2, progress=False)
    assert one.problems == two.problems and one.ignored_pixels == two.ignored_pixels
    assert one.class_pixels.tolist() == two.class_pixels.tolist()


def test_synthetic_counts_equal_the_labels(tmp_path):
    raw = SyntheticShapes("val", 5, 0, (64, 80))
    labels = [raw[i][1] for i in range(5)]
    summary = check_dataset(raw, 6, progress=False)
    assert summary.problems == [] and summary.ignored_pixels == 0
    assert summary.class_pixels.tolist() == [sum(int((lab == c).sum()) for lab in labels) for c in range(6)]
    assert summary.class_images.tolist() == [sum(bool((lab == c).any()) for lab in labels) for c in range(6)]


def test_cli_names_the_bad_files_and_exits_1(folder, capsys):
    argv = ["--dataset", "folder", "--data-root", str(folder), "--num-classes", "3", "--progress", "false",
            "--class-names", "sky,road,car"]
    with pytest.raises(SystemExit, match="semask-check-data: 4 bad samples"):
        check_data_main(argv)
    out, err = capsys.readouterr()
    assert "folder train: 6 samples, 4 bad; 9 labelled pixels, 1 ignored (255)" in out
    assert "| road | 33.33% | 1 |" in out
    assert "classes without a labelled pixel in train: car" in out
    assert "folder val: 1 sample, 0 bad" in out and "| car | 66.67% | 1 |" in out
    assert "classes without a labelled pixel in val: road\n" in out
    assert sum(name in err for name in ("c_value", "d_size", "e_rgb", "f_broken")) == 4
    check_data_main([*argv, "--split", "val"])   # val alone reads: exit 0
    assert "every sample reads" in capsys.readouterr().out
    check_data_main([*argv, "--split", "val", "--reduce-zero-label", "true"])   # [2, 2, 0]: 0 ignored, 2 -> road
    out = capsys.readouterr().out
    assert "2 labelled pixels, 1 ignored (255, or 0: reduce_zero_label)" in out and "| road | 100.00% | 1 |" in out


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        check_data_main(["--dataset", "folder", "--data-root", str(tmp_path / "none"), "--num-classes", "3"])
    assert info.value.code == 2 and "folder not found" in capsys.readouterr().err


def test_a_bad_file_that_stops_training_points_to_the_check(tmp_path, capsys):
    from semask.train.cli import train_main
    root = tmp_path / "data"
    for stem in ("a", "b"):
        write_pair(root, "train", stem, np.array([[0, 9], [1, 1]], np.uint8).repeat(20, 0).repeat(20, 1))
    write_pair(root, "val", "v", np.zeros((40, 40), np.uint8))
    with pytest.warns(UserWarning, match="WITHOUT an ImageNet-pretrained backbone"), \
            pytest.raises(SystemExit, match=r"semask-train: error: label \S+\.png has values \[9\] outside 0\.\.2.*; "
                       "semask-check-data with the same config and options lists every bad file"):
        train_main(["--dataset", "folder", "--data-root", str(root), "--num-classes", "3", "--variant", "micro",
                    "--head-channels", "8", "--crop-size", "32,32", "--img-scale", "40,40", "--batch-size", "2",
                    "--iters", "2", "--progress", "false", "--pretrained", "none", "--out-dir", str(tmp_path / "run")])


def cut_past_first_idat(path):
    """``path`` (a PNG of several IDAT chunks) cut inside the second chunk's header."""
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"IDAT", data.index(b"IDAT") + 4)])


def test_files_pillow_fails_on_without_an_oserror_are_listed(tmp_path, monkeypatch):
    """A PNG cut off past its first IDAT chunk (Pillow: SyntaxError), a JPEG whose EXIF holds a
    malformed tag (struct.error in exif_transpose), an image too large to decode
    (DecompressionBombError): listed as unreadable, not a traceback."""
    import io
    from PIL import ImageFile
    from semask.data import custom_folder
    root = tmp_path / "data"
    write_pair(root, "train", "a", np.zeros((8, 8), np.uint8))
    write_pair(root, "train", "b_cut", np.zeros((16, 16), np.uint8))
    with monkeypatch.context() as patch:
        patch.setattr(ImageFile, "MAXBLOCK", 256)  # an IDAT chunk per 256 bytes
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)).save(
            root / "images" / "train" / "b_cut.png")
    cut_past_first_idat(root / "images" / "train" / "b_cut.png")
    write_pair(root, "train", "c_exif", np.zeros((4, 2), np.uint8))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"                     # rotated; Make ...
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 2)).save(jpeg, "JPEG", exif=exif.tobytes())
    (root / "images" / "train" / "c_exif.png").unlink()
    (root / "images" / "train" / "c_exif.jpg").write_bytes(   # ... read as ImageWidth, a string
        jpeg.getvalue().replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02"))
    raw = custom_folder(root, "images/train", "annotations/train", 3)
    summary = check_dataset(raw, 3, progress=False)
    assert [index for index, _ in summary.problems] == [1, 2]
    assert all(m.startswith("cannot read image") for _, m in summary.problems)
    assert "b_cut.png: broken PNG file" in summary.problems[0][1]
    assert summary.class_pixels.tolist() == [64, 0, 0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)        # 8 x 8 > 2 x 16
    summary = check_dataset(raw, 3, progress=False)
    assert [index for index, _ in summary.problems] == [0, 1, 2] and "a.png: Image size" in summary.problems[0][1]


def test_the_hint_comes_with_bad_files_only_also_from_loader_workers(tmp_path, capsys, monkeypatch):
    """semask-train stopped by an image Pillow raises SyntaxError on, in a DataLoader worker:
    one line naming it, with the hint; stopped by a missing data folder: no hint (the check
    would say the same)."""
    from PIL import ImageFile
    from semask.train.cli import train_main
    root = tmp_path / "data"
    for stem in ("a", "b"):
        write_pair(root, "train", stem, np.ones((40, 40), np.uint8))
        with monkeypatch.context() as patch:
            patch.setattr(ImageFile, "MAXBLOCK", 256)
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(
                root / "images" / "train" / f"{stem}.png")
        cut_past_first_idat(root / "images" / "train" / f"{stem}.png")
    write_pair(root, "val", "v", np.zeros((40, 40), np.uint8))
    argv = ["--dataset", "folder", "--num-classes", "3", "--variant", "micro", "--head-channels", "8",
            "--crop-size", "32,32", "--img-scale", "40,40", "--batch-size", "2", "--iters", "2", "--progress",
            "false", "--pretrained", "none", "--out-dir", str(tmp_path / "run"), "--num-workers", "1"]
    with pytest.warns(UserWarning, match="WITHOUT an ImageNet-pretrained backbone"), \
            pytest.raises(SystemExit, match=r"^semask-train: error: cannot read image \S+[ab]\.png: broken PNG file "
                          r"\(chunk b''\); semask-check-data with the same config and options lists every bad "
                          r"file$"):
        train_main([*argv, "--data-root", str(root)])
    with pytest.raises(SystemExit) as info:
        train_main([*argv, "--data-root", str(tmp_path / "none")])
    assert "folder not found" in str(info.value.code) and "semask-check-data" not in str(info.value.code)
