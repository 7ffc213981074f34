"""A run folder holds one run: another run there is refused unless it overwrites, and then
the earlier run's files go (side by side they passed for one run)."""
import warnings

import pytest
import torch

from semask.train.cli import checkpoint_file
from semask.train.trainer import train


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _quiet_train(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(*args, **kwargs)
    return res, [str(w.message) for w in caught]


def test_a_new_run_in_a_run_folder_is_refused_unless_it_overwrites(tmp_path, tiny_config):
    train(tiny_config(tmp_path, iters=2))
    (tmp_path / "eval_val_whole.json").write_text("{}")  # semask-eval's result for that model
    (tmp_path / "notes.txt").write_text("mine")
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="holds another run .*--overwrite replaces it"):
        train(tiny_config(tmp_path, iters=3))
    assert _files(tmp_path) == before
    _, said = _quiet_train(tiny_config(tmp_path, iters=3), stop_at=1, overwrite=True)
    assert any("removing the earlier run's files" in m and "model.safetensors" in m for m in said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "last_state.pt", "metrics.jsonl",
                                                          "notes.txt"]
    assert checkpoint_file(tmp_path) == tmp_path / "last.safetensors"


def test_a_folder_without_a_run_keeps_its_files(tmp_path, tiny_config):
    """Files with a run's names but no run (no state, weights or final model) are not a run."""
    (tmp_path / "eval.json").write_text("{}")
    (tmp_path / "curves.png").write_bytes(b"a user's picture")
    train(tiny_config(tmp_path, iters=2), stop_at=1)
    assert (tmp_path / "eval.json").read_text() == "{}" and (tmp_path / "curves.png").read_bytes() == b"a user's picture"


def test_resume_into_another_runs_folder_is_refused_unless_it_overwrites(tmp_path, tiny_config):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny_config(a, iters=3), stop_at=1)
    train(tiny_config(b, iters=2, seed=1))
    before = _files(b)
    with pytest.raises(ValueError, match=f"{b} holds another run"):
        train(tiny_config(b, iters=3), resume=str(a))
    assert _files(b) == before
    _quiet_train(tiny_config(b, iters=3), resume=str(a), stop_at=2, overwrite=True)
    assert sorted(p.name for p in b.iterdir()) == ["last.safetensors", "last_state.pt", "metrics.jsonl"]
    assert checkpoint_file(b) == b / "last.safetensors"


def test_overwrite_refuses_to_remove_its_own_pretrained_file(tmp_path, tiny_config):
    train(tiny_config(tmp_path, iters=1))
    with pytest.raises(ValueError, match="pretrained file .* is one of the earlier run's files"):
        train(tiny_config(tmp_path, iters=1, pretrained=str(tmp_path / "model.safetensors")), overwrite=True)
    assert (tmp_path / "model.safetensors").is_file()


def test_stop_at_that_never_comes_is_refused(tmp_path, tiny_config):
    for stop_at in (0, -3, 7):
        with pytest.raises(ValueError, match="stop_at must be between 1 and iters=6"):
            train(tiny_config(tmp_path / "x"), stop_at=stop_at)
    assert not (tmp_path / "x").exists()
    train(tiny_config(tmp_path, iters=4), stop_at=2)
    for stop_at in (1, 2, 5):
        with pytest.raises(ValueError, match="stop_at must be after the run's iteration 2"):
            train(tiny_config(tmp_path, iters=4), resume=str(tmp_path), stop_at=stop_at)
    assert torch.load(tmp_path / "last_state.pt", weights_only=True)["iteration"] == 2
