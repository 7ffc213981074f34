"""DistributedDataParallel with torchrun: 2 CPU processes (gloo)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from semask.data import SyntheticShapes
from semask.train.plot import read_metrics


@pytest.mark.slow
def test_two_process_training_keeps_replicas_identical(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path)], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:                       # gradients were averaged: the replicas never diverged
        assert torch.equal(w0[k], w1[k]), k
    # both ranks ran with world size 2; the sharded evaluation covered every val pixel once
    val_pixels = sum(SyntheticShapes("val", 3, 0, (64, 80))[i][1].size for i in range(3))
    for r in (0, 1):
        world, pixels = (tmp_path / f"rank{r}.txt").read_text().split()
        assert (int(world), int(pixels)) == (2, val_pixels)
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["iter"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert (tmp_path / "model.safetensors").is_file()


def _torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *map(str, args)], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_resume_continues_every_rank_stream(tmp_path):
    """Each rank draws its own drop-path masks: a resumed 2-process run equals an
    uninterrupted one only if every rank's RNG state was saved and restored (rank 0's
    alone, restored on both ranks, changed the losses after the resume)."""
    worker = Path(__file__).with_name("ddp_resume_worker.py")
    _torchrun(worker, tmp_path / "full", 4)
    _torchrun(worker, tmp_path / "split", 4, 2)
    _torchrun(worker, tmp_path / "split", 4, "-", "resume")
    full, split = ([(r["iter"], r["loss"]) for r in read_metrics(tmp_path / d / "metrics.jsonl") if "loss" in r]
                   for d in ("full", "split"))
    assert [i for i, _ in full] == [1, 2, 3, 4] and full == split


@pytest.mark.slow
def test_two_process_semask_eval_scores_every_image_once(tmp_path):
    """semask-eval under torchrun: each process scores every 2nd of 5 images, the confusion
    matrices are summed and rank 0 alone writes and prints: the JSON equals a one-process
    evaluation's, and the result line comes once."""
    import json

    from semask.models import save_checkpoint
    from semask.train.cli import eval_main
    from semask.train.config import load_config
    from semask.train.trainer import build_model
    cfg = load_config(None, variant="micro", head_channels=8, synthetic_val_size=5, synthetic_size=[64, 80],
                      progress=False)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), ckpt, {"config": cfg.to_json()})
    eval_main([str(ckpt), "--device", "cpu", "--out", str(tmp_path / "one.json")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = f"from semask.train.cli import eval_main; eval_main([{str(ckpt)!r}, '--out', {str(tmp_path / 'two.json')!r}])"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--no-python", sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["confusion"] == one["confusion"] and two["pixels"] == one["pixels"] > 0
    assert proc.stdout.count("val, whole: mIoU") == 1 and proc.stdout.count("model: ") == 1


@pytest.mark.slow
def test_two_process_semask_infer_segments_each_image_once(tmp_path):
    """semask-infer under torchrun: rank r segments images r, r + 2, ...: every output is
    written once, equal to a one-process run's, and each input is named by one rank."""
    import numpy as np
    from PIL import Image

    from semask.models import save_checkpoint
    from semask.train.cli import infer_main
    from semask.train.config import load_config
    from semask.train.trainer import build_model
    cfg = load_config(None, variant="micro", head_channels=8, progress=False)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), ckpt, {"config": cfg.to_json()})
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    infer_main([str(ckpt), str(images), "--device", "cpu", "--out-dir", str(tmp_path / "one")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = (f"from semask.train.cli import infer_main; "
            f"infer_main([{str(ckpt)!r}, {str(images)!r}, '--out-dir', {str(tmp_path / 'two')!r}])")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--no-python", sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for i in range(5):
        assert proc.stdout.count(f"im{i}.png -> ") == 1
        assert np.array_equal(np.asarray(Image.open(tmp_path / "two" / f"im{i}.png")),
                              np.asarray(Image.open(tmp_path / "one" / f"im{i}.png")))


def _run_two(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--no-python", sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=240)


@pytest.mark.slow
def test_two_process_eval_error_on_one_rank_is_one_line_on_each(tmp_path, ade_fixture):
    """A bad label in rank 1's share: the processes end with error lines naming it (rank 1
    its own, rank 0 'another process failed'; torchrun may stop one before it prints),
    not with rank 0's gloo traceback from the confusion matrix sum, as before."""
    import numpy as np
    from PIL import Image

    from semask.models import save_checkpoint
    from semask.train.config import load_config
    from semask.train.trainer import build_model
    Image.fromarray(np.zeros((48, 60, 3), np.uint8)).save(ade_fixture / "annotations" / "validation" / "1.png")
    cfg = load_config(None, variant="micro", head_channels=8, dataset="ade20k", data_root=str(ade_fixture),
                      num_classes=150, progress=False)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, 150), ckpt, {"config": cfg.to_json()})
    proc = _run_two(f"from semask.train.cli import eval_main; eval_main([{str(ckpt)!r}, '--out', "
                    f"{str(tmp_path / 'e.json')!r}])")
    assert proc.returncode != 0 and not (tmp_path / "e.json").exists()
    said = re.findall(r"semask-eval: error: (evaluate: another process failed \(SampleError: )?label \S+1\.png "
                      r"must be a single-channel PNG", proc.stderr)
    assert said, proc.stderr[-3000:]
    assert "[rank0]:" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_infer_counts_unreadable_inputs_of_every_rank(tmp_path):
    """An unreadable image in rank 1's share: every readable image is still written (rank 1
    no longer exits while rank 0 works) and rank 0 counts the unreadable among all inputs."""
    import numpy as np
    from PIL import Image

    from semask.models import save_checkpoint
    from semask.train.config import load_config
    from semask.train.trainer import build_model
    cfg = load_config(None, variant="micro", head_channels=8, progress=False)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(build_model(cfg, cfg.num_classes), ckpt, {"config": cfg.to_json()})
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)).save(images / f"im{i}.png")
    (images / "im1.png").write_bytes(b"not a png")
    proc = _run_two(f"from semask.train.cli import infer_main; infer_main([{str(ckpt)!r}, {str(images)!r}, "
                    f"'--out-dir', {str(tmp_path / 'out')!r}])")
    assert proc.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"im{i}{s}.png" for i in (0, 2, 3) for s in ("", "_overlay"))
    assert proc.stderr.count("semask-infer: 1 of 4 inputs were not readable images") == 1
