"""semask-train / semask-eval / semask-infer end to end on a tiny synthetic run."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from semask.models import save_checkpoint
from semask.train.cli import eval_main, infer_main, palette, train_main
from semask.train.config import load_config
from semask.train.trainer import build_model


class Scored(Exception):
    """Raised by a stubbed evaluate: it was handed the model, nothing to score."""


TINY = ["--variant", "micro", "--head-channels", "8", "--crop-size", "64,64", "--img-scale", "96,64",
        "--synthetic-size", "64,80", "--synthetic-train-size", "8", "--synthetic-val-size", "2",
        "--batch-size", "2", "--iters", "2", "--warmup-iters", "1", "--num-workers", "0",
        "--progress", "false", "--log-interval", "1"]


@pytest.mark.slow
def test_train_eval_infer(tmp_path, capsys):
    run = tmp_path / "run"
    train_main(["synthetic_cpu", *TINY, "--out-dir", str(run)])
    printed = capsys.readouterr().out
    assert "config:" in printed and "head_channels        = 8" in printed
    assert "val mIoU" in printed and "constant-class baseline" in printed
    for name in ("model.safetensors", "last.safetensors", "last_state.pt", "eval.json", "eval.md",
                 "metrics.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    trained = json.loads((run / "eval.json").read_text())

    eval_main([str(run), "--mode", "ms_flip", "--ms-ratios", "1.0", "--out", str(tmp_path / "ev.json")])
    ms = json.loads((tmp_path / "ev.json").read_text())
    assert ms["mode"] == "ms_flip" and set(ms["IoU"]) == {"background", "disk", "square", "triangle", "ring", "checker"}
    assert ms["pixels"] == trained["pixels"]
    assert (tmp_path / "ev.md").read_text().startswith("| class | IoU |")
    eval_main([str(run / "model.safetensors")])                # default output: next to the weights
    whole = json.loads((run / "eval_val_whole.json").read_text())
    eval_main([str(run), "--split", "train", "--mode", "slide", "--slide-crop", "48,48", "--slide-stride", "32,32"])
    assert json.loads((run / "eval_train_slide.json").read_text())["mode"] == "slide"
    assert whole["confusion"] == trained["confusion"]      # same weights, same data, same mode

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 56), (70, 33)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    single = tmp_path / "single.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(single)
    rotated = tmp_path / "rotated.jpg"   # stored 36 x 52, shown 52 x 36 (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)).save(rotated, exif=exif)
    infer_main([str(run), str(images), str(single), str(rotated), "--out-dir", str(tmp_path / "pred")])
    for stem, size in (("im0", (40, 56)), ("im1", (70, 33)), ("single", (48, 48)), ("rotated", (52, 36))):
        ids = Image.open(tmp_path / "pred" / f"{stem}.png")
        assert ids.mode == "P" and ids.getpalette()[3:6] == palette(6)[1].tolist()
        label = np.asarray(ids)
        overlay = np.asarray(Image.open(tmp_path / "pred" / f"{stem}_overlay.png"))
        assert label.shape == size and label.max() < 6 and overlay.shape == (*size, 3)


def _usage_error(capsys, argv, match):
    """train_main(argv) stops as argparse does, with ``match`` in its message."""
    with pytest.raises(SystemExit) as exc:
        train_main(argv)
    assert exc.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_resume_without_checkpoint_and_bad_config(tmp_path, capsys):
    _usage_error(capsys, [*TINY, "--out-dir", str(tmp_path / "none"), "--resume"], "nothing to resume")
    _usage_error(capsys, ["nope"], "unknown config 'nope'")
    for option, value, match in (("--eval-mode", "foo", "eval_mode must be one of whole"),
                                 ("--log-interval", "0", "log_interval must be at least 1"),
                                 ("--crop-size", "64", "crop_size must be two positive numbers"),
                                 ("--amp", "xyz", "amp must be one of auto")):
        _usage_error(capsys, [*TINY, option, value, "--out-dir", str(tmp_path / "bad")], match)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    run = tmp_path / "cut"
    run.mkdir()
    (run / "last_state.pt").write_bytes(b"PK\x03\x04 cut short")  # a state file the kill cut short
    _usage_error(capsys, [*TINY, "--out-dir", str(run), "--resume"], "not a readable training state file")
    (run / "last.safetensors").write_bytes(b"{}")
    _usage_error(capsys, [*TINY, "--resume", str(run / "last.safetensors")], "not a readable training state")
    with pytest.raises(SystemExit):
        eval_main([str(tmp_path / "missing.safetensors")])
    assert "checkpoint not found" in capsys.readouterr().err


def test_eval_passes_num_workers_on(tmp_path, monkeypatch):
    from semask.train import evaluate as evaluate_module
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8, num_workers=3)
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), path, {"config": cfg.to_json()})
    given = []

    def record(*args, **kwargs):
        given.append(kwargs["num_workers"])
        raise Scored  # enough: nothing to score

    monkeypatch.setattr(evaluate_module, "evaluate", record)
    for argv, workers in (([], 3), (["--num-workers", "1"], 1)):
        with pytest.raises(Scored):
            eval_main([str(path), *argv])
        assert given.pop() == workers


@pytest.mark.parametrize("argv,message", [
    (["--mode", "slide", "--slide-crop", "64,64", "--slide-stride", "200,200"], "slide_stride must be at most"),
    (["--slide-crop", "64"], "slide_crop must be two positive numbers"),
    (["--slide-stride", "0,0"], "slide_stride must be two positive numbers"),
    (["--pad-multiple", "-5"], "eval_pad_multiple must be at least 1 or none"),
    (["--mode", "ms_flip", "--ms-ratios", "0,-1"], "ms_ratios must be positive numbers"),
    (["--config", "CFG7"], "the model has 7 classes but synthetic has 6"),
    (["--config", "PLAIN"], "does not fit the --config's model (variant micro, semantic False, 6 classes): "
                            "checkpoint has tensors this model does not own (another architecture?):\n  "
                            "backbone.layers.0.semantic_layer.")])
def test_eval_refuses_bad_options_before_scoring(tmp_path, monkeypatch, capsys, argv, message):
    """Options that would score pixels no window covers (0/0), crop instead of pad, or
    score a model against another class count or architecture (a SeMask file with a plain
    Swin config, which loading only the shared tensors would score): a usage error naming
    the value, no output."""
    from semask.train import evaluate as evaluate_module
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), path, {"config": cfg.to_json()})
    given = {"CFG7": dict(num_classes=7), "PLAIN": dict(semantic=False)}
    for name, changes in given.items():
        if name in argv:  # an official-style file (weights only of cfg's model) with another config
            other = load_config("synthetic_cpu", variant="micro", head_channels=8, **changes)
            (tmp_path / "other.json").write_text(other.to_json())
            path = tmp_path / "official.pth"
            torch.save({"state_dict": build_model(cfg, 7 if name == "CFG7" else 6).state_dict()}, path)
            argv = [str(tmp_path / "other.json") if a == name else a for a in argv]
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(SystemExit):
        eval_main([str(path), *argv, "--out", str(tmp_path / "ev.json")])
    err = capsys.readouterr().err
    assert message in err and "strict=False" not in err and not (tmp_path / "ev.json").exists()


def test_eval_and_infer_run_under_the_autocast_amp_names(tmp_path, capsys):
    """--amp bf16 / fp16: every forward of semask-eval and semask-infer runs under autocast
    of that dtype (seen by a global forward hook), none under no autocast; the eval JSON
    records it and the bf16 score stays near the fp32 one."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8, synthetic_val_size=2,
                      synthetic_size=(64, 80), progress=False)
    torch.manual_seed(3)
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), path, {"config": cfg.to_json()})
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(tmp_path / "im.png")
    seen = []

    def record(module, args):
        if module.__class__.__name__ == "SeMaskSwin":
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        scores = {}
        for amp, dtype in (("none", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            eval_main([str(path), "--amp", amp, "--device", "cpu", "--out", str(tmp_path / f"{amp}.json")])
            scores[amp] = json.loads((tmp_path / f"{amp}.json").read_text())
            assert scores[amp]["amp"] == amp and seen and set(seen) == {dtype}, (amp, seen)
            seen.clear()
            infer_main([str(path), str(tmp_path / "im.png"), "--amp", amp, "--device", "cpu",
                        "--out-dir", str(tmp_path / amp)])
            assert seen and set(seen) == {dtype}, (amp, seen)
            seen.clear()
    finally:
        hook.remove()
    capsys.readouterr()
    assert abs(scores["bf16"]["aAcc"] - scores["none"]["aAcc"]) < 0.05


def test_eval_and_infer_take_an_official_checkpoint_with_its_config(tmp_path, capsys):
    """An official mmseg SeMask .pth holds no config: refused without --config, naming it;
    with --config it scores exactly as the same weights in our format with a stored config."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8, synthetic_val_size=2,
                      synthetic_size=(64, 80), progress=False)
    config = tmp_path / "micro.json"
    config.write_text(cfg.to_json())
    torch.manual_seed(3)
    model = build_model(cfg, cfg.num_classes).eval()
    ours, official = tmp_path / "ours.safetensors", tmp_path / "semask_official.pth"
    save_checkpoint(model, ours, {"config": cfg.to_json()})
    torch.save({"meta": {"iter": 80000}, "state_dict": model.state_dict()}, official)
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(tmp_path / "im.png")
    for main, extra in ((eval_main, []), (infer_main, [str(tmp_path / "im.png")])):
        with pytest.raises(SystemExit):
            main([str(official), *extra, "--out-dir" if main is infer_main else "--out", str(tmp_path / "x")])
        assert "stores no training config" in capsys.readouterr().err and not (tmp_path / "x").exists()
    backbone = tmp_path / "backbone_only.pth"  # loads into the backbone; the head would stay at its init
    torch.save({"model": {k[len("backbone."):]: v for k, v in model.state_dict().items()
                          if k.startswith("backbone.")}}, backbone)
    not_a_config = tmp_path / "list.json"
    not_a_config.write_text("[1, 2]")
    for path, cfg_file, match in ((backbone, config, "is not a whole model"),
                                  (official, not_a_config, "a config is a JSON object")):
        with pytest.raises(SystemExit):
            eval_main([str(path), "--config", str(cfg_file), "--out", str(tmp_path / "x")])
        assert match in capsys.readouterr().err and not (tmp_path / "x").exists()
    eval_main([str(ours), "--out", str(tmp_path / "ours.json")])
    eval_main([str(official), "--config", str(config), "--out", str(tmp_path / "official.json")])
    assert "checkpoint (semask_mmseg)" in capsys.readouterr().out
    scored = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ours", "official")]
    assert scored[0]["pixels"] > 0 and scored[1]["confusion"] == scored[0]["confusion"]
    infer_main([str(official), str(tmp_path / "im.png"), "--config", str(config), "--out-dir", str(tmp_path / "pred")])
    assert np.asarray(Image.open(tmp_path / "pred" / "im.png")).shape == (40, 56)


def test_palette_distinct():
    colours = palette(150)
    assert len({tuple(c) for c in colours}) == 150


@pytest.mark.parametrize("main, expected", [
    (train_main, ["synthetic_cpu", "ade20k_semask_tiny_fpn", "--resume", "torchrun", "--lr", "AdamW peak learning rate",
                  "--pretrained", "ImageNet Swin", "--eval-mode", "whole | slide | ms_flip"]),
    (eval_main, ["mIoU, mAcc, per-class IoU and accuracy, pixel accuracy", "--mode {whole,slide,ms_flip}", "--data-root", "--split",
                "official mmseg SeMask .pth", "--num-workers"]),
    (infer_main, ["_overlay.png", "--out-dir", "--alpha", "--mode", "official mmseg SeMask .pth"]),
])
def test_help_texts(main, expected, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())          # undo argparse's line wrapping
    for phrase in expected:
        assert phrase in text, phrase


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "semask.train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: semask-train"), proc.stderr[-2000:]


@pytest.mark.slow
def test_resume_takes_the_stored_config_and_may_move_the_run(tmp_path, capsys):
    """A bare --resume continues with the run's own config (here 4 iterations, not the
    preset's 3000); --field options override it (named when they change it); --out-dir
    moves the run, history included."""
    run, moved = tmp_path / "run", tmp_path / "moved"
    train_main([*TINY, "--iters", "4", "--out-dir", str(run), "--stop-at", "2"])
    capsys.readouterr()
    train_main(["--out-dir", str(run), "--resume", "--progress", "false", "--log-interval", "2"])
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "with its stored config, overridden by" in x)
    given, writes = line.split("overridden by ")[1].split("; writing to ")
    # --out-dir and --progress equal the stored values: not named as overrides
    assert given == "--log-interval" and writes == str(run)
    assert "iters                = 4" in printed
    logged = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[:3] == [1, 2, 4] and json.loads((run / "eval.json").read_text())["iteration"] == 4
    train_main(["--resume", str(run), "--out-dir", str(moved), "--iters", "5"])
    logged = [json.loads(line)["iter"] for line in (moved / "metrics.jsonl").read_text().splitlines()]
    assert [i for i in logged if i < 5] == [1, 2, 4, 4] and (moved / "model.safetensors").is_file()


def test_infer_refuses_inputs_that_would_overwrite_each_other(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / sub / "x.png")
    with pytest.raises(SystemExit):
        infer_main([str(tmp_path / "missing-run"), str(tmp_path / "a"), str(tmp_path / "b"),
                    "--out-dir", str(tmp_path / "pred")])
    assert "a/x.png" in capsys.readouterr().err and not (tmp_path / "pred").exists()


def test_infer_refuses_outputs_that_clash_or_overwrite_inputs(tmp_path, capsys):
    """a.png and a_overlay.jpg would both write a_overlay.png; --out-dir = the input folder
    would replace a.png by its class map. Both refused before anything is read or written."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a_overlay.jpg")
    with pytest.raises(SystemExit):
        infer_main([str(tmp_path / "missing-run"), str(tmp_path / "a.png"), str(tmp_path / "a_overlay.jpg"),
                    "--out-dir", str(tmp_path / "pred")])
    assert "a_overlay.jpg" in capsys.readouterr().err and not (tmp_path / "pred").exists()
    with pytest.raises(SystemExit):
        infer_main([str(tmp_path / "missing-run"), str(tmp_path / "a.png"), "--out-dir", str(tmp_path)])
    assert "overwrite inputs" in capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (8, 8, 3)


def test_eval_and_infer_name_a_truncated_checkpoint(tmp_path, capsys):
    """A model.safetensors cut short (a copy interrupted): a usage error naming the file,
    not the safetensors library's header error."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), path, {"config": cfg.to_json()})
    path.write_bytes(path.read_bytes()[:100])
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(tmp_path / "im.png")
    for main, extra in ((eval_main, ["--out", str(tmp_path / "x")]),
                        (infer_main, [str(tmp_path / "im.png"), "--out-dir", str(tmp_path / "x")])):
        with pytest.raises(SystemExit):
            main([str(path), *extra])
        assert f"could not read checkpoint {path}: it is corrupt" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_eval_of_a_file_with_another_class_count_lists_the_shapes(tmp_path, monkeypatch, capsys):
    """A 6-class weights file with a 7-class --config: the usage error lists each class
    tensor with its two shapes (checkpoint 6 vs model 7), as load_checkpoint does, and
    names no option (loading part of it would score another model)."""
    from semask.train import evaluate as evaluate_module
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    path = tmp_path / "official.pth"
    torch.save({"state_dict": build_model(cfg, 6).state_dict()}, path)
    (tmp_path / "seven.json").write_text(load_config("synthetic_cpu", variant="micro", head_channels=8,
                                                     num_classes=7).to_json())
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(SystemExit):
        eval_main([str(path), "--config", str(tmp_path / "seven.json"), "--out", str(tmp_path / "ev.json")])
    err = capsys.readouterr().err
    assert ("does not fit the --config's model (variant micro, semantic True, 7 classes): checkpoint was "
            "trained for another number of classes:\n  ") in err, err
    assert re.search(r"\n  \S+: checkpoint \(6, \d+.*\) vs model \(7, \d+", err), err
    assert "skip_mismatched" not in err and not (tmp_path / "ev.json").exists()


def test_infer_in_one_process_segments_every_input(tmp_path, capsys):
    """Outside torchrun (one process: rank 0 of 1) semask-infer's share is every image:
    a folder of 3 writes 3 id maps and 3 overlays, each named once."""
    cfg = load_config("synthetic_cpu", variant="micro", head_channels=8)
    path = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), path, {"config": cfg.to_json()})
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((33, 40, 3), 60 * i, np.uint8)).save(images / f"im{i}.png")
    infer_main([str(path), str(images), "--device", "cpu", "--out-dir", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"im{i}{s}.png" for i in range(3) for s in ("", "_overlay"))
    out = capsys.readouterr().out
    assert all(out.count(f"im{i}.png -> ") == 1 for i in range(3)), out
