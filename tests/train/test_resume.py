"""--resume continues exactly: on CPU the loss curve after resuming equals an uninterrupted run."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from semask.models.semask import SeMaskSwin
from semask.train.optim import poly_warmup_factor
from semask.train.plot import read_metrics
from semask.train.state import STATE_NAME, read_metadata
from semask.train.trainer import NonFiniteLossError, train


def _losses(out_dir):
    return [(r["iter"], r["loss"], r["lr"]) for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, tiny_config):
    # dropout, drop path, accumulation and a data-loader worker all take part
    kw = dict(accum_steps=2, num_workers=1)
    full = train(tiny_config(tmp_path / "full", **kw))
    assert train(tiny_config(tmp_path / "split", **kw), stop_at=3) == {}
    state = torch.load(tmp_path / "split" / STATE_NAME, weights_only=True)   # plain tensors / containers
    assert state["iteration"] == 3 and json.loads(state["config"])["accum_steps"] == 2
    assert read_metadata(tmp_path / "split" / "last.safetensors")["iteration"] == "3"
    assert set(state["model"]) == set(SeMaskSwin("micro", num_classes=6, head_channels=8).state_dict())
    # as if killed after logging iterations 4, 5 and writing the state of iteration 3 but
    # not yet its weights file: the resume drops the records, takes the state's weights
    with (tmp_path / "split" / "metrics.jsonl").open("a") as f:
        f.write('{"iter": 4, "loss": 9.0, "lr": 0.0}\n{"iter": 5, "loss": 9.0, "lr": 0.0}\n')
    (tmp_path / "split" / "last.safetensors").write_bytes(b"stale")
    resumed = train(tiny_config(tmp_path / "split", **kw), resume=str(tmp_path / "split"))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert [i for i, _, _ in a] == list(range(1, 7)) and a == b      # bit-identical loss and lr per iteration
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert full["mIoU"] == resumed["mIoU"]
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000
    assert "| **mIoU / mAcc** |" in (tmp_path / "full" / "eval.md").read_text()


def test_nonfinite_loss_skips_then_stops(tmp_path, tiny_config, monkeypatch):
    real_loss = SeMaskSwin.loss
    calls = {"n": 0}

    def flaky_loss(self, out, target):
        calls["n"] += 1
        losses = real_loss(self, out, target)
        if calls["n"] == 2 or calls["n"] >= 4:        # iteration 2 once, then from iteration 4 on
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(SeMaskSwin, "loss", flaky_loss)
    cfg = tiny_config(tmp_path, max_nonfinite=2, iters=10, drop_path_rate=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row"):
            train(cfg)
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(messages) == 3 and "iteration 2" in messages[0] and "iteration 5" in messages[2]


def test_state_files_of_the_earlier_layout_still_resume(tmp_path):
    """Before the weights moved into the state file: weights from last.safetensors (its
    iteration checked against the state's), one RNG state (a dict)."""
    from semask.train.state import load_training_state, save_training_state
    from semask.train.trainer import _rank_rng

    def parts(seed):
        torch.manual_seed(seed)
        model = SeMaskSwin("micro", num_classes=6, head_channels=8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)

    src = parts(0)
    save_training_state(tmp_path, *src, None, 7, {"lr": 1e-3})
    state = torch.load(tmp_path / STATE_NAME, weights_only=True)
    old = {k: v for k, v in state.items() if k != "model"}
    old.update(weights="last.safetensors", rng=state["rng"][0])
    torch.save(old, tmp_path / STATE_NAME)
    dst = parts(1)
    loaded = load_training_state(tmp_path, *dst, None)
    assert loaded["iteration"] == 7 and _rank_rng(loaded["rng"], None, print) is loaded["rng"]
    assert all(torch.equal(a, b) for a, b in zip(src[0].state_dict().values(), dst[0].state_dict().values()))
    torch.save(dict(old, iteration=8), tmp_path / STATE_NAME)
    with pytest.raises(ValueError, match="not written together"):
        load_training_state(tmp_path, *parts(2), None)


def test_resume_runs_the_options_given_with_it(tmp_path, tiny_config):
    """--lr, --weight-decay, --iters given on resume: the stored optimizer and scheduler
    states do not bring back the old values; the lr is the new schedule's from the next
    iteration on. A record cut short by the kill is dropped with a warning."""
    train(tiny_config(tmp_path, iters=6), stop_at=3)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"iter": 4, "lo')
    cfg = tiny_config(tmp_path, iters=8, lr=1e-2, weight_decay=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, resume=str(tmp_path))
    assert any("dropped an unreadable record" in str(w.message) for w in caught)
    lrs = {i: lr for i, _, lr in _losses(tmp_path)}
    assert sorted(lrs) == list(range(1, 9))
    for i in range(4, 9):  # the lr of iteration i is the schedule's at step i - 1
        want = 1e-2 * poly_warmup_factor(i - 1, 8, cfg.warmup_iters, cfg.warmup_ratio, cfg.poly_power)
        assert lrs[i] == pytest.approx(want, rel=1e-12), i
    groups = torch.load(tmp_path / STATE_NAME, weights_only=True)["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.5]


def test_skipped_step_puts_the_batchnorm_statistics_back(tmp_path, tiny_config, monkeypatch):
    """A NaN forward writes NaN into the head's BatchNorm statistics; the skipped step
    restores them, so the final model (and its evaluation) stays finite."""
    real_forward = SeMaskSwin.forward
    calls = {"n": 0}

    def flaky_forward(self, images, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                images = images * float("nan")
        return real_forward(self, images, *args, **kwargs)

    monkeypatch.setattr(SeMaskSwin, "forward", flaky_forward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train(tiny_config(tmp_path, iters=4))
    weights = load_file(tmp_path / "model.safetensors")
    assert any("bn.running_mean" in k for k in weights)
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    assert res["mIoU"] == res["mIoU"]


def test_cuda_rng_state_is_this_gpus_only(monkeypatch):
    """Saved: the current GPU's generator state only, so a resume with fewer visible GPUs
    has nothing to set on GPUs it lacks; files of earlier versions (every visible GPU's
    state) give the current GPU its own entry. CUDA stubbed (no GPU needed)."""
    from semask.train import state as S
    set_to = []
    for name, fn in dict(is_available=lambda: True, is_initialized=lambda: True, current_device=lambda: 1,
                         get_rng_state=lambda: torch.tensor([7], dtype=torch.uint8),
                         set_rng_state=lambda s: set_to.append(int(s[0]))).items():
        monkeypatch.setattr(torch.cuda, name, fn)
    saved = S.rng_state()
    assert [int(t[0]) for t in saved["cuda"]] == [7]
    S.set_rng_state(saved)
    S.set_rng_state(dict(saved, cuda=[torch.tensor([3], dtype=torch.uint8), torch.tensor([4], dtype=torch.uint8)]))
    assert set_to == [7, 4]


def test_logged_losses_are_the_means_over_the_log_interval(tmp_path, tiny_config):
    """As mmcv's log buffer: the record of iteration 4 with log_interval 2 holds the mean of
    iterations 3 and 4 (the same run logged every iteration gives them)."""
    train(tiny_config(tmp_path / "a", iters=4))
    every = {i: loss for i, loss, _ in _losses(tmp_path / "a")}
    train(tiny_config(tmp_path / "b", iters=4, log_interval=2))
    records = {r["iter"]: r for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r}
    assert sorted(records) == [2, 4]
    for i in (2, 4):
        assert records[i]["loss"] == pytest.approx((every[i - 1] + every[i]) / 2, rel=1e-6)


def test_resume_past_the_last_iteration_is_refused(tmp_path, tiny_config):
    """A run at iteration 2 resumed with iters 1 would train nothing and log iteration 1
    over it: refused, naming both, with the run's files untouched."""
    train(tiny_config(tmp_path, iters=2, eval_interval=0))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="already at iteration 2, past iters=1"):
        train(tiny_config(tmp_path, iters=1, eval_interval=0), resume=str(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_checkpoint_of_an_iteration_is_written_before_its_evaluation(tmp_path, tiny_config, monkeypatch):
    """With eval_interval = ckpt_interval (the presets), an evaluation that fails or is
    interrupted loses no training: that iteration's checkpoint is already written."""
    from semask.train import trainer

    def failing_evaluation(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_evaluate", failing_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, iters=4, ckpt_interval=2, eval_interval=2))
    assert torch.load(tmp_path / STATE_NAME, weights_only=True)["iteration"] == 2
    assert read_metadata(tmp_path / "last.safetensors")["iteration"] == "2"


def test_evaluations_during_training_leave_its_trajectory_alone(tmp_path, tiny_config):
    """eval_interval may change on resume (RESUME_FREE): evaluating every iteration gives
    the same losses and weights as evaluating at the end only (drop path draws from the
    global RNG, which the evaluation's loader must not touch)."""
    train(tiny_config(tmp_path / "a", iters=3, eval_interval=0, drop_path_rate=0.3))
    train(tiny_config(tmp_path / "b", iters=3, eval_interval=1, drop_path_rate=0.3))
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resumes_continue_the_global_sample_stream_where_it_stopped(tmp_path, tiny_config, monkeypatch):
    """The state file counts the samples drawn: batch 2 for 2 iterations (4 samples), then
    resumed with accum 2 (4 per step) to iteration 4 (12), then resumed again: at 12, not
    4 x 4 = 16. The change of effective batch (2 -> 4 images per step) is said. Files
    without the count: iteration x batch x processes (one RNG state each; a single dict:
    this run's number) - iteration 4 at batch 2 x accum 2 by 2 processes starts at 32."""
    from semask.train import trainer
    starts = []
    real_loader = trainer.train_loader

    def recording_loader(dataset, batch_size, seed, rank, world_size, start_sample, *args, **kwargs):
        starts.append(start_sample)
        return real_loader(dataset, batch_size, seed, rank, world_size, start_sample, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_loader", recording_loader)
    train(tiny_config(tmp_path, iters=6, eval_interval=0), stop_at=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_config(tmp_path, iters=6, eval_interval=0, accum_steps=2), resume=str(tmp_path), stop_at=4)
    assert any("effective batch changes from 2 images per step" in str(w.message) and "to 4" in str(w.message)
               for w in caught)
    state = torch.load(tmp_path / STATE_NAME, weights_only=True)
    assert state["samples"] == 12
    train(tiny_config(tmp_path, iters=5, eval_interval=0, accum_steps=2), resume=str(tmp_path), stop_at=5)
    assert starts == [0, 4, 12]
    del state["samples"]
    for rng, start, batch_warning in ((state["rng"] * 2, 4 * 4 * 2, True), (state["rng"][0], 4 * 4, False)):
        torch.save(dict(state, rng=rng), tmp_path / STATE_NAME)   # as written by 2 processes / before
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(tiny_config(tmp_path, iters=5, eval_interval=0, accum_steps=2), resume=str(tmp_path), stop_at=5)
        assert starts[-1] == start
        said = [str(w.message) for w in caught if "effective batch" in str(w.message)]
        assert said == (["the effective batch changes from 8 images per step (the run's: 2 process(es) x 4) to 4 "
                         "(1 x 4); the lr schedule is not rescaled"] if batch_warning else [])


def test_state_file_with_one_rng_state_takes_this_runs_process_count():
    """A file without the sample count and with one RNG state (a dict, the earlier layout,
    whatever number of processes wrote it) is read at this run's number of processes:
    iteration 3 at batch 2 x accum 1, resumed by 2 processes, drew 3 x 2 x 2 = 12 samples,
    and the effective batch (4 now, 4 then) does not change. With the count stored, the
    count."""
    from semask.train.distributed import DistInfo
    from semask.train.trainer import _consumed_samples
    stored = {"batch_size": 2, "accum_steps": 1}
    state = {"rng": {"torch": torch.get_rng_state()}, "iteration": 3}
    info = DistInfo(rank=0, world_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _consumed_samples(stored, state, 2 * 1 * 2, info) == 12
        assert _consumed_samples(stored, dict(state, samples=10), 2 * 1 * 2, info) == 10
    assert not [str(w.message) for w in caught if "effective batch" in str(w.message)]
