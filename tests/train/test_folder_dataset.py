"""dataset folder end to end: a folder copy of the synthetic data trains and scores as the synthetic data."""
import json

import numpy as np
import pytest
from PIL import Image

from semask.data import SYNTHETIC_CLASSES, SyntheticShapes
from semask.train.cli import eval_main
from semask.train.config import load_config
from semask.train.plot import read_metrics
from semask.train.trainer import train


def _write_copy(raw, image_dir, label_dir):
    """raw's items as PNG pairs (lossless), the first half in a/, the rest in b/ (sorted order kept)."""
    for i in range(len(raw)):
        image, label, _ = raw[i]
        sub = "a" if i < len(raw) // 2 else "b"
        for folder in (image_dir / sub, label_dir / sub):
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_dir / sub / f"{i:04d}_img.png")
        Image.fromarray(label).save(label_dir / sub / f"{i:04d}_label.png")


def test_folder_copy_of_the_synthetic_data_trains_step_for_step(tmp_path, tiny_config, capsys):
    synthetic = tiny_config(tmp_path / "synthetic")
    root = tmp_path / "data"
    for split, size, dirs in (("train", synthetic.synthetic_train_size, ("tr/img", "tr/lab")),
                              ("val", synthetic.synthetic_val_size, ("va/img", "va/lab"))):
        _write_copy(SyntheticShapes(split, size, synthetic.seed, tuple(synthetic.synthetic_size)),
                    root / dirs[0], root / dirs[1])
    names = [f"thing {c}" for c in SYNTHETIC_CLASSES]
    folder = tiny_config(tmp_path / "folder", dataset="folder", data_root=str(root), folder_train=["tr/img", "tr/lab"],
                         folder_val=["va/img", "va/lab"], image_suffix="_img.png", label_suffix="_label.png",
                         class_names=names)
    a = train(synthetic)
    with pytest.warns(UserWarning, match="WITHOUT an ImageNet-pretrained backbone"):   # real data
        b = train(folder)
    losses = [[(r["iter"], r["loss"]) for r in read_metrics(cfg_dir / "metrics.jsonl") if "loss" in r]
              for cfg_dir in (tmp_path / "synthetic", tmp_path / "folder")]
    assert len(losses[0]) == 6 and losses[0] == losses[1]    # same samples, same augmentation draws
    assert a["mIoU"] == b["mIoU"]
    stored = json.loads((tmp_path / "folder" / "eval.json").read_text())
    assert list(stored["IoU"]) == names
    capsys.readouterr()
    moved = root.rename(tmp_path / "moved")   # the data elsewhere now: --data-root finds it
    eval_main([str(tmp_path / "folder"), "--split", "train", "--data-root", str(moved),
               "--out", str(tmp_path / "train.json")])
    assert "folder train, whole: mIoU" in capsys.readouterr().out
    scored = json.loads((tmp_path / "train.json").read_text())
    assert scored["dataset"] == "folder" and list(scored["IoU"]) == names


@pytest.mark.parametrize("values, message", [
    (dict(dataset="ade20k", reduce_zero_label=True, class_names=None),
     "reduce_zero_label: settings of dataset folder, not of ade20k"),
    (dict(image_suffix=".jpg", folder_val=["a", "b"]),
     "folder_val, image_suffix: settings of dataset folder, not of synthetic"),
    (dict(dataset="folder", folder_train=["images"]),
     r"folder_train must be an image folder and a label folder, got \['images'\]"),
    (dict(dataset="folder", folder_val=["a", " "]), "folder_val must be an image folder and a label folder"),
    (dict(dataset="folder", label_suffix=""), "label_suffix and image_suffix must not be empty"),
    (dict(dataset="folder", image_suffix=""), "label_suffix and image_suffix must not be empty"),
    (dict(dataset="folder", num_classes=3, class_names=["a", "b"]), "class_names must be num_classes=3 distinct names"),
    (dict(dataset="folder", num_classes=2, class_names=["a", "a"]), "class_names must be num_classes=2 distinct names"),
])
def test_folder_settings_are_checked(values, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, **values)


def test_folder_settings_from_the_command_line():
    from semask.train.config import parse_value
    assert parse_value("folder_train", "images/training,annotations/training") == ["images/training",
                                                                                   "annotations/training"]
    assert parse_value("class_names", "road,sky") == ["road", "sky"] and parse_value("image_suffix", "none") is None
    assert parse_value("reduce_zero_label", "true") is True
    cfg = load_config("ade20k_semask_tiny_fpn", dataset="folder", num_classes=2, class_names=["road", "sky"])
    assert cfg.folder_train == ["images/train", "annotations/train"] and cfg.label_suffix == ".png"


def test_eval_of_the_test_split_of_a_folder_dataset_is_a_usage_error(tmp_path, tiny_config, capsys):
    from semask.models import save_checkpoint
    from semask.train.trainer import build_model
    cfg = tiny_config(tmp_path / "run", dataset="folder", data_root=str(tmp_path))
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), path, {"config": cfg.to_json()})
    with pytest.raises(SystemExit):
        eval_main([str(path), "--split", "test"])
    assert "the folder dataset has the splits train, val, not 'test'" in capsys.readouterr().err


def test_class_names_may_change_on_resume_the_folders_may_not():
    from semask.train.trainer import config_changes
    stored = dict(class_names=["a", "b"], reduce_zero_label=False, folder_val=["i", "l"])
    now = dict(class_names=["road", "sky"], reduce_zero_label=True, folder_val=["i", "l"])
    assert config_changes(stored, now) == {"reduce_zero_label": (False, True)}
