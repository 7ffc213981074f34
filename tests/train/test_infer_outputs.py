"""semask-infer outputs: the palette of its class-id PNGs and its overlays."""
import numpy as np
import pytest
from PIL import Image

from semask.models import save_checkpoint
from semask.train.cli import infer_main, palette
from semask.train.config import load_config
from semask.train.trainer import build_model


def test_palette_is_the_pascal_colour_map_from_its_second_entry():
    # PASCAL VOC colours 1..6 (class k gets VOC colour k + 1), by hand
    assert palette(6).tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
                                   [128, 0, 128], [0, 128, 128]]
    assert palette(9)[7].tolist() == [64, 0, 0]  # VOC colour 8


def test_infer_overlay_blends_with_alpha(tmp_path):
    """overlay = (1 - alpha) * image + alpha * colour of the predicted class (alpha 0.25)."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), ckpt, {"config": cfg.to_json()})
    rgb = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    infer_main([str(ckpt), str(tmp_path / "im.png"), "--out-dir", str(tmp_path / "out"), "--alpha", "0.25",
                "--device", "cpu"])
    ids = np.asarray(Image.open(tmp_path / "out" / "im.png"))
    overlay = np.asarray(Image.open(tmp_path / "out" / "im_overlay.png")).astype(np.int64)
    colours = np.array([[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128]])
    want = (0.75 * rgb + 0.25 * colours[ids]).astype(np.int64)
    assert np.abs(overlay - want).max() <= 1


def test_infer_of_a_folder_leaves_hidden_files_out(tmp_path, capsys):
    """macOS's ._x.png beside x.png is no image: a folder of one image gives one output pair
    and exit 0 (it was counted unreadable, exit 1)."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), ckpt, {"config": cfg.to_json()})
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(tmp_path / "in" / "x.png")
    (tmp_path / "in" / "._x.png").write_bytes(b"\0\5\26\7")
    infer_main([str(ckpt), str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png", "x_overlay.png"]


def test_infer_skips_a_png_pillow_raises_syntaxerror_on(tmp_path, capsys, monkeypatch):
    """A PNG cut off past its first IDAT chunk (Pillow: SyntaxError, not OSError) is named and
    skipped (exit 1), the readable one written; it was a traceback."""
    from PIL import ImageFile
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), ckpt, {"config": cfg.to_json()})
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(tmp_path / "in" / "good.png")
    with monkeypatch.context() as patch:
        patch.setattr(ImageFile, "MAXBLOCK", 256)  # an IDAT chunk per 256 bytes
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 36, 3), np.uint8)).save(tmp_path / "in" / "cut.png")
    data = (tmp_path / "in" / "cut.png").read_bytes()
    (tmp_path / "in" / "cut.png").write_bytes(data[:data.index(b"IDAT", data.index(b"IDAT") + 4)])
    with pytest.raises(SystemExit, match="1 of 2 inputs were not readable images: .*cut.png"):
        infer_main([str(ckpt), str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert "cut.png: skipped, not a readable image (broken PNG file" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png", "good_overlay.png"]
