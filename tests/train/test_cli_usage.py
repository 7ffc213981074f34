"""What the command lines do with run folders, copied runs, bad inputs and unusual models."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from semask.models import save_checkpoint
from semask.models.checkpoint import CLASS_DEPENDENT
from semask.ops.backend import requested_backend
from semask.train import evaluate as evaluate_module
from semask.train.cli import class_id_image, eval_main, infer_main, palette, train_main
from semask.train.config import load_config, load_preset
from semask.train.optim import build_optimizer, build_scheduler
from semask.train.state import save_training_state
from semask.train.trainer import build_model

from test_cli import TINY, Scored


def _micro(**overrides):
    return load_config("synthetic_cpu", **{**dict(variant="micro", head_channels=8, synthetic_val_size=2,
                                                   synthetic_size=(64, 80), progress=False), **overrides})


def _save(model, path, cfg, iteration):
    save_checkpoint(model, path, {"config": cfg.to_json(), "iteration": iteration})


def _exit(main, argv, capsys, code=2) -> str:
    """main(argv) stops: a usage error (exit 2), or ``code=1``: sys.exit(message); what it said."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    if code == 2:
        assert exc.value.code == 2
        return capsys.readouterr().err
    assert isinstance(exc.value.code, str)  # sys.exit(message) exits with status 1
    return capsys.readouterr().err + exc.value.code


def test_eval_of_a_run_folder_takes_its_newest_weights(tmp_path, monkeypatch, capsys):
    """A finished run resumed for more iterations and killed: model.safetensors (iteration
    3) is older than last.safetensors (5), which is scored and named with its iteration; on
    a tie the finished model is."""
    cfg = _micro()
    torch.manual_seed(0)
    old, new = build_model(cfg, 6), build_model(cfg, 6)
    _save(old, tmp_path / "model.safetensors", cfg, 3)
    _save(new, tmp_path / "last.safetensors", cfg, 5)
    scored = []

    def record(model, *args, **kwargs):
        scored.append(model.state_dict())
        raise Scored  # enough: the model it was given

    monkeypatch.setattr(evaluate_module, "evaluate", record)
    with pytest.raises(Scored):
        eval_main([str(tmp_path)])
    assert f"model: {tmp_path / 'last.safetensors'}, iteration 5" in capsys.readouterr().out
    assert all(torch.equal(scored[0][k], v) for k, v in new.state_dict().items())
    assert not all(torch.equal(scored[0][k], v) for k, v in old.state_dict().items())
    _save(new, tmp_path / "model.safetensors", cfg, 5)
    with pytest.raises(Scored):
        eval_main([str(tmp_path)])
    assert f"model: {tmp_path / 'model.safetensors'}, iteration 5" in capsys.readouterr().out


def test_eval_and_infer_take_a_runs_state_file(tmp_path, capsys):
    """last_state.pt holds the config and the weights: eval and infer read both from it
    and score as its weights file does."""
    cfg = _micro()
    torch.manual_seed(1)
    model = build_model(cfg, 6)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = build_scheduler(optimizer, 10, 1, 0.1, 1.0, 0.0, cfg.lr)
    save_training_state(tmp_path, model, optimizer, scheduler, None, 7, cfg.to_dict())
    eval_main([str(tmp_path / "last_state.pt"), "--out", str(tmp_path / "state.json")])
    assert f"model: {tmp_path / 'last_state.pt'}, iteration 7" in capsys.readouterr().out
    eval_main([str(tmp_path / "last.safetensors"), "--out", str(tmp_path / "weights.json")])
    results = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("state", "weights")]
    assert results[0]["pixels"] > 0 and results[0]["confusion"] == results[1]["confusion"]
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(tmp_path / "im.png")
    infer_main([str(tmp_path / "last_state.pt"), str(tmp_path / "im.png"), "--out-dir", str(tmp_path / "p")])
    assert np.asarray(Image.open(tmp_path / "p" / "im.png")).shape == (40, 56)


@pytest.mark.slow
def test_resume_of_a_copied_run_writes_into_the_copy(tmp_path, capsys):
    """--resume <copy> continues in the copy, not in the out_dir the run was started with,
    which stays as it was."""
    run, copy = tmp_path / "run", tmp_path / "copy"
    train_main([*TINY, "--iters", "3", "--out-dir", str(run), "--stop-at", "2"])
    shutil.copytree(run, copy)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    train_main(["--resume", str(copy)])
    assert f"writing to {copy}" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert json.loads((copy / "eval.json").read_text())["iteration"] == 3
    assert [json.loads(x)["iter"] for x in (copy / "metrics.jsonl").read_text().splitlines()][:3] == [1, 2, 3]


@pytest.mark.parametrize("option,value,message", [
    ("--head-channels", "0", "head_channels must be at least 1"),
    ("--window-size", "0", "window_size must be at least 1 or none"),
    ("--crop-size", "16,64", "crop_size must be at least 32 a side")])
def test_train_refuses_model_sizes_that_cannot_run(tmp_path, capsys, option, value, message):
    assert message in _exit(train_main, [*TINY, option, value, "--out-dir", str(tmp_path / "r")], capsys)
    assert not (tmp_path / "r").exists()


def test_train_errors_inside_the_run_are_messages(tmp_path, capsys):
    """A missing data folder or pretrained file, or a GPU the machine lacks, stop the run
    with one line naming the problem (exit 1), not a traceback."""
    err = _exit(train_main, [*TINY, "--dataset", "ade20k", "--num-classes", "150", "--data-root",
                             str(tmp_path / "no_ade"), "--out-dir", str(tmp_path / "r")], capsys, code=1)
    assert err.startswith("semask-train: error: ") and "no_ade" in err and "Traceback" not in err
    err = _exit(train_main, [*TINY, "--pretrained", str(tmp_path / "none.pth"), "--out-dir",
                             str(tmp_path / "r")], capsys, code=1)
    assert "checkpoint not found" in err and "none.pth" in err
    if not torch.cuda.is_available():
        err = _exit(train_main, [*TINY, "--device", "cuda", "--out-dir", str(tmp_path / "r")], capsys, code=1)
        assert "no CUDA GPU is available" in err


def _class_tensor(key: str) -> bool:
    return any(c in key for c in CLASS_DEPENDENT)


@pytest.mark.slow
def test_pretrained_of_another_class_count_and_a_resume_without_it(tmp_path, capsys):
    """A 7-class SeMask checkpoint fine-tunes a 6-class model only with --skip-mismatched:
    every other parameter starts from it (lr 0 keeps them), the class tensors from their
    init. A resume needs no pretrained file: the weights come from the run's state."""
    cfg7 = _micro(num_classes=7)
    torch.manual_seed(5)
    source = build_model(cfg7, 7)
    pretrained = tmp_path / "ade_model.pth"
    torch.save({"state_dict": source.state_dict()}, pretrained)
    argv = [*TINY, "--pretrained", str(pretrained), "--lr", "0", "--min-lr", "0", "--iters", "2"]
    err = _exit(train_main, [*argv, "--out-dir", str(tmp_path / "r")], capsys, code=1)
    assert "another number of classes" in err
    run = tmp_path / "run"
    train_main([*argv, "--skip-mismatched", "true", "--out-dir", str(run), "--stop-at", "1"])
    assert "skipped (" in capsys.readouterr().out
    pretrained.unlink()
    train_main(["--resume", str(run)])
    from safetensors.torch import load_file
    trained = load_file(run / "model.safetensors")
    params = dict(source.named_parameters())
    shared = [k for k in params if not _class_tensor(k)]
    assert len(shared) > 100 and all(torch.equal(trained[k], params[k].detach()) for k in shared)
    assert any(_class_tensor(k) and trained[k].shape[0] == 6 for k in trained)


def test_semask_checkpoint_into_plain_swin_with_pretrained_strict_false(tmp_path, capsys):
    """A SeMask checkpoint holds semantic layers a plain Swin (--semantic false) lacks: the
    run is refused with the option that allows it, which then loads every shared tensor
    (lr 0 keeps them) and names the semantic layers as unexpected."""
    torch.manual_seed(3)
    source = build_model(_micro(), 6)
    pretrained = tmp_path / "semask.pth"
    torch.save({"state_dict": source.state_dict()}, pretrained)
    argv = [*TINY, "--semantic", "false", "--pretrained", str(pretrained), "--lr", "0", "--min-lr", "0",
            "--iters", "1", "--eval-interval", "0"]
    err = _exit(train_main, [*argv, "--out-dir", str(tmp_path / "refused")], capsys, code=1)
    assert f"--pretrained {pretrained}" in err and "does not own" in err
    assert "--pretrained-strict false skips them" in err and "semantic_layer" in err
    run = tmp_path / "run"
    train_main([*argv, "--pretrained-strict", "false", "--out-dir", str(run)])
    assert "unexpected (" in capsys.readouterr().out
    from safetensors.torch import load_file
    trained = load_file(run / "model.safetensors")
    own = {k: v for k, v in source.state_dict().items() if ".semantic_layer." not in k}
    assert trained.keys() == own.keys()
    assert all(torch.equal(trained[k], own[k]) for k in trained if not k.endswith(("running_mean", "running_var",
                                                                                    "num_batches_tracked")))


def test_infer_goes_on_past_an_unreadable_image(tmp_path, capsys):
    cfg = _micro()
    _save(build_model(cfg, 6), tmp_path / "m.safetensors", cfg, 1)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(images / "a.png")
    (images / "b.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((33, 47, 3), 20, np.uint8)).save(images / "c.png")
    err = _exit(infer_main, [str(tmp_path / "m.safetensors"), str(images), "--out-dir", str(tmp_path / "p")],
                capsys, code=1)
    assert "b.jpg: skipped" in err and "1 of 3 inputs were not readable" in err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a.png", "a_overlay.png", "c.png",
                                                                 "c_overlay.png"]
    assert "input not found" in _exit(infer_main, [str(tmp_path / "m.safetensors"), str(tmp_path / "no.png")],
                                      capsys)


@pytest.mark.parametrize("device", ["nvidia", "cuda:7", "meta"])
def test_bad_devices_are_usage_errors(tmp_path, capsys, device):
    from semask.__main__ import main as summary_main
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    for main, argv in ((eval_main, [str(tmp_path / "m.safetensors")]),
                       (infer_main, [str(tmp_path / "m.safetensors"), str(tmp_path)]),
                       (summary_main, ["--model", "semask_swin_tiny_fpn"])):
        err = _exit(main, [*argv, "--device", device], capsys)
        assert f"--device: device {device!r}" in err or f"got {device!r}" in err


@pytest.mark.parametrize("num_classes", [150, 300])
def test_class_id_images_keep_every_id(tmp_path, num_classes):
    """Up to 256 classes a palette PNG, beyond a 16-bit one: read back, the pixel values
    are the ids (a uint8 image wrapped class 300 to 44)."""
    pred = np.arange(num_classes).repeat(3).reshape(num_classes, 3)[::-1].copy()
    class_id_image(pred, palette(num_classes)).save(tmp_path / "ids.png")
    back = Image.open(tmp_path / "ids.png")
    assert back.mode == ("P" if num_classes <= 256 else "I;16")
    assert np.array_equal(np.asarray(back).astype(np.int64), pred)


def test_config_and_backend_messages_name_their_source(tmp_path, monkeypatch):
    broken = tmp_path / "broken.json"
    broken.write_text('{"lr": 0.1,}')
    with pytest.raises(ValueError, match=f"{broken}: not a JSON config"):
        load_preset(str(broken))
    monkeypatch.setenv("SEMASK_BACKEND", "fast")
    with pytest.raises(ValueError, match="SEMASK_BACKEND='fast': unknown backend"):
        requested_backend(True)


def test_eval_refuses_split_and_out_it_cannot_use_before_scoring(tmp_path, monkeypatch, capsys):
    cfg = _micro()
    _save(build_model(cfg, 6), tmp_path / "m.safetensors", cfg, 1)
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("scored"))
    assert "invalid choice: 'validation'" in _exit(eval_main, [str(tmp_path / "m.safetensors"), "--split",
                                                               "validation"], capsys)
    (tmp_path / "taken.json").mkdir()
    err = _exit(eval_main, [str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "taken.json")], capsys)
    assert f"--out: cannot write {tmp_path / 'taken.json'}" in err
    # the table goes next to the JSON as .md: "res.md" wrote both to one file
    assert "--out must name a .json file" in _exit(eval_main, [str(tmp_path / "m.safetensors"), "--out",
                                                              str(tmp_path / "res.md")], capsys)
    assert not (tmp_path / "res.md").exists()


def test_eval_records_what_it_scored_and_takes_the_train_split_whole(tmp_path, monkeypatch, capsys):
    """The JSON names the checkpoint, iteration, split and padding; --split train scores the
    synthetic training set (synthetic_train_size images), not a val-sized part of it."""
    cfg = _micro(synthetic_train_size=5, synthetic_val_size=2)
    _save(build_model(cfg, 6), tmp_path / "m.safetensors", cfg, 4)
    real = evaluate_module.evaluate
    sizes = []
    monkeypatch.setattr(evaluate_module, "evaluate", lambda m, raw, *a, **k: sizes.append(len(raw)) or real(m, raw, *a, **k))
    eval_main([str(tmp_path / "m.safetensors"), "--split", "train", "--out", str(tmp_path / "r.json")])
    res = json.loads((tmp_path / "r.json").read_text())
    assert sizes == [5]
    assert (res["checkpoint"], res["iteration"], res["split"], res["pad_multiple"]) == (
        str(tmp_path / "m.safetensors"), 4, "train", 32)


def test_resume_refuses_a_config_it_would_ignore(tmp_path, capsys):
    err = _exit(train_main, ["ade20k_semask_tiny_fpn", "--resume", str(tmp_path)], capsys)
    assert "--resume continues with the run's stored config, not ade20k_semask_tiny_fpn" in err


@pytest.mark.parametrize("option,value,message", [
    ("--slide-crop", "16,16", "slide_crop must be at least 32 a side when eval_pad_multiple is none"),
    ("--grad-checkpointing", "7,-1", "grad_checkpointing must be stage indices 0 to 3")])
def test_train_refuses_settings_that_fail_only_at_the_end(tmp_path, capsys, option, value, message):
    argv = [*TINY, "--eval-pad-multiple", "none", "--slide-stride", "16,16", option, value]
    assert message in _exit(train_main, [*argv, "--out-dir", str(tmp_path / "r")], capsys)
    assert "config file not found: nope.json" in _exit(train_main, ["nope.json"], capsys)


def test_evaluate_refuses_labels_without_a_labelled_pixel(ade_fixture):
    """All-ignored labels (ADE 0 = other, as the Cityscapes test split): no mIoU to give,
    not NaN written as a result."""
    from semask.data import build_raw_dataset
    from semask.data.folders import DataError
    for label in (ade_fixture / "annotations" / "validation").iterdir():
        Image.fromarray(np.zeros((48, 60), np.uint8)).save(label)
    raw = build_raw_dataset("ade20k", "val", str(ade_fixture), 150)
    model = build_model(_micro(num_classes=150), 150)
    with pytest.raises(DataError, match="the 2 labels hold no labelled pixel"):
        evaluate_module.evaluate(model, raw, 150, "cpu")


def test_eval_infer_and_summary_say_backend_errors_in_a_line(tmp_path, monkeypatch, capsys):
    """A model trained fused, scored where its backend cannot run: a message, no traceback."""
    from semask.__main__ import main as summary_main
    cfg = _micro(fused=True)
    _save(build_model(cfg, 6), tmp_path / "m.safetensors", cfg, 1)
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(tmp_path / "im.png")
    monkeypatch.setenv("SEMASK_BACKEND", "cuda")
    if torch.cuda.is_available():
        pytest.skip("the cuda backend may run here")
    for main, argv in ((eval_main, ["--out", str(tmp_path / "e.json")]),
                       (infer_main, [str(tmp_path / "im.png"), "--out-dir", str(tmp_path / "p")])):
        err = _exit(main, [str(tmp_path / "m.safetensors"), *argv, "--device", "cpu"], capsys, code=1)
        assert "error:" in err and "cuda" in err and "Traceback" not in err
    monkeypatch.setenv("SEMASK_BACKEND", "bogus")
    err = _exit(summary_main, ["--fused", "--size", "32", "32", "--device", "cpu"], capsys, code=1)
    assert "SEMASK_BACKEND='bogus': unknown backend" in err
    assert "--num-classes must be at least 2" in _exit(summary_main, ["--num-classes", "1"], capsys)


def test_infer_reads_every_pillow_format_and_skips_oversized_images(tmp_path, monkeypatch, capsys):
    cfg = _micro()
    _save(build_model(cfg, 6), tmp_path / "m.safetensors", cfg, 1)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.webp", "b.bmp", "c.tif", "d.png"):
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(images / name)
    Image.fromarray(np.full((60, 60, 3), 9, np.uint8)).save(images / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1300)  # 3600 pixels: over twice the limit
    err = _exit(infer_main, [str(tmp_path / "m.safetensors"), str(images), "--out-dir", str(tmp_path / "p")],
                capsys, code=1)
    assert "huge.png: skipped" in err and "1 of 5 inputs" in err
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if "overlay" not in p.name) == [
        "a.png", "b.png", "c.png", "d.png"]
    (tmp_path / "afile").write_text("")
    assert "--out-dir" in _exit(infer_main, [str(tmp_path / "m.safetensors"), str(images), "--out-dir",
                                             str(tmp_path / "afile")], capsys)
    assert "no images in the given folders" in _exit(infer_main, [str(tmp_path / "m.safetensors"),
                                                                  str(tmp_path / "p" / "..")], capsys)


def test_state_files_load_and_name_their_problems(tmp_path, capsys):
    """A folder holding only last_state.pt is scored from it; a truncated one says so (not
    'no config'); as --pretrained it is reported as a training state."""
    from semask import load_checkpoint
    cfg = _micro()
    model = build_model(cfg, 6)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = build_scheduler(optimizer, 10, 1, 0.1, 1.0, 0.0, cfg.lr)
    save_training_state(tmp_path, model, optimizer, scheduler, None, 3, cfg.to_dict())
    (tmp_path / "last.safetensors").unlink()
    eval_main([str(tmp_path), "--out", str(tmp_path / "e.json")])
    assert f"model: {tmp_path / 'last_state.pt'}, iteration 3" in capsys.readouterr().out
    assert load_checkpoint(build_model(cfg, 6), tmp_path / "last_state.pt").source == "semask_training_state"
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "last_state.pt").write_bytes((tmp_path / "last_state.pt").read_bytes()[:5000])
    assert "not a readable training state file" in _exit(eval_main, [str(cut)], capsys)


def test_data_loader_worker_errors_and_ctrl_c_are_one_line(tmp_path, ade_fixture, monkeypatch, capsys):
    """A bad label read in a DataLoader worker: its message, not the worker's traceback.
    Ctrl-C: exit status 130 and a line saying whether a checkpoint resumes the run."""
    Image.fromarray(np.full((48, 60), 200, np.uint8)).save(ade_fixture / "annotations" / "validation" / "1.png")
    cfg = _micro(dataset="ade20k", data_root=str(ade_fixture), num_classes=150, num_workers=1)
    path = tmp_path / "m.safetensors"
    _save(build_model(cfg, 150), path, cfg, 1)
    said = _exit(eval_main, [str(path)], capsys, code=1)
    assert "1.png has values [200] outside 1..150" in said
    assert "Traceback" not in said and "DataLoader worker" not in said

    from semask.train import trainer
    real_train = trainer.train

    def interrupted(cfg, **kwargs):
        if kwargs.get("stop_at") is None:
            real_train(cfg, stop_at=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    out = tmp_path / "run"
    for argv, wanted in ((["--stop-at", "1"], "no checkpoint was written"),
                         ([], f"{out} holds the checkpoint of iteration 2: continue with semask-train --resume {out}")):
        with pytest.raises(SystemExit) as exc:
            train_main([*TINY, "--iters", "3", "--out-dir", str(out), *argv])
        assert exc.value.code == 130 and wanted in capsys.readouterr().err
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "evaluate", ctrl_c)
    with pytest.raises(SystemExit) as exc:
        eval_main([str(out)])
    assert exc.value.code == 130 and "semask-eval: interrupted" in capsys.readouterr().err


def test_worker_errors_keep_their_whole_message_and_ctrl_c_names_the_resume(tmp_path, monkeypatch, capsys):
    """error_line: the original message of an error raised in a DataLoader worker, all its
    lines (not only the last, nor cut at a "word: "); other errors as they are. Ctrl-C in a
    resume into another folder before its first checkpoint: the command that starts it
    again. Under torchrun only rank 0 says it."""
    from torch.utils.data import DataLoader
    from semask.data import DataError
    from semask.train.cli import error_line

    message = "label x.png is bad:\n  values [300]\nhint: check the file"

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise DataError(message)

    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(caught.value) and error_line(caught.value) == message
    assert error_line(ValueError("a: b")) == "a: b"

    from semask.train import trainer
    train_main([*TINY, "--out-dir", str(tmp_path / "a")])
    capsys.readouterr()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", ctrl_c)
    argv = ["--resume", str(tmp_path / "a"), "--out-dir", str(tmp_path / "b"), "--iters", "4"]
    with pytest.raises(SystemExit) as exc:
        train_main(argv)
    wanted = (f"no checkpoint was written in {tmp_path / 'b'}: semask-train --resume "
              f"{tmp_path / 'a' / 'last_state.pt'} --out-dir {tmp_path / 'b'} starts over")
    assert exc.value.code == 130 and wanted in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exc:
        train_main(argv)
    assert exc.value.code == 130 and "interrupted" not in capsys.readouterr().err


def test_error_line_of_a_chained_worker_error_is_the_last_raised():
    """A worker error raised from another of its type: the worker's traceback shows both
    (the cause first); the message is that of the error raised last, the one re-raised.
    torch's ExceptionWrapper is what a DataLoader worker sends and the loader re-raises
    (built here in-process: no worker to start and stop)."""
    from torch._utils import ExceptionWrapper
    from semask.data import DataError
    from semask.train.cli import error_line

    try:
        try:
            raise DataError("cannot decode x.png")
        except DataError as exc:
            raise DataError("label x.png is unreadable") from exc
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as caught:
        wrapped.reraise()
    text = str(caught.value)
    assert "Original Traceback" in text and text.index("cannot decode x.png") < text.index("is unreadable")
    assert error_line(caught.value) == "label x.png is unreadable"


def test_ctrl_c_of_eval_and_infer_is_said_by_rank_0_only(monkeypatch, capsys):
    """interruptible (semask-eval / -infer): status 130 on every rank; the line only where
    RANK is unset or 0 (torchrun's other ranks would each repeat it)."""
    from semask.train.cli import interruptible

    @interruptible("semask-x")
    def main(argv=None):
        raise KeyboardInterrupt

    for rank, said in ((None, True), ("0", True), ("", True), ("1", False)):
        if rank is None:
            monkeypatch.delenv("RANK", raising=False)
        else:
            monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            main([])
        assert exc.value.code == 130
        assert ("semask-x: interrupted" in capsys.readouterr().err) == said, rank


def test_ctrl_c_in_a_resume_into_another_folder_after_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Resumed from a into b and stopped after b's first checkpoint (iteration 2): b's own
    checkpoint continues the run, not a restart from a."""
    from semask.train import trainer
    a, b = tmp_path / "a", tmp_path / "b"
    train_main([*TINY, "--out-dir", str(a), "--stop-at", "1"])   # a checkpoint of iteration 1, no evaluation
    capsys.readouterr()
    real_train = trainer.train

    def interrupted(cfg, **kwargs):
        real_train(cfg, resume=kwargs["resume"], stop_at=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exc:
        train_main(["--resume", str(a), "--out-dir", str(b), "--iters", "4"])
    err = capsys.readouterr().err
    assert exc.value.code == 130
    assert f"{b} holds the checkpoint of iteration 2: continue with semask-train --resume {b}" in err
    assert "no checkpoint was written" not in err
