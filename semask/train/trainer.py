"""The training loop: read it top to bottom.

train(cfg) builds data, model, optimizer and schedule, optionally resumes, runs
``cfg.iters`` optimizer steps (each ``accum_steps`` micro-batches, under DDP when started
by torchrun), logs JSON lines, checkpoints, and evaluates at the end.
"""
from __future__ import annotations

import contextlib
import gc
import json
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data import (DevicePrefetcher, FolderLayout, TransformedDataset, build_raw_dataset, train_loader,
                    train_transforms)
from ..models import CheckpointMismatch, LoadReport, SeMaskSwin, load_checkpoint, save_checkpoint
from . import distributed
from .config import TrainConfig
from .cuda_graphs import graph_support_errors, graphed_loss_step, pinned_batches_allowed
from .evaluate import evaluate
from .metrics import markdown_table
from .optim import build_optimizer, build_scheduler
from .plot import plot_metrics
from .state import (FINAL_NAME, STATE_NAME, WEIGHTS_NAME, load_training_state, resolve_resume, rng_state,
                    save_training_state, set_rng_state)

PRETRAINED_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! Training SeMask on a real dataset WITHOUT an ImageNet-pretrained backbone.\n"
    "!! Expect roughly 30 mIoU less than the paper (the most common mistake with the\n"
    "!! official code). Pass --pretrained swin_tiny_patch4_window7_224.pth (T/S: ImageNet-1k\n"
    "!! 224; B/L: ImageNet-22k 384 window 12) from the official Swin release.\n" + "!" * 78)


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite`` non-finite losses in a row."""


def compile_backend(name: str | None) -> str | None:
    """The torch.compile backend the ``compile`` option names (None: eager); raises for
    an unknown one before anything is written."""
    if name in (None, "none"):
        return None
    backend = "inductor" if name == "default" else name
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"--compile: unknown torch.compile backend {name!r} "
                         f"(none, default, {', '.join(known)})")
    return backend


def build_model(cfg: TrainConfig, num_classes: int) -> SeMaskSwin:
    return SeMaskSwin(cfg.variant, num_classes=num_classes, semantic=cfg.semantic, fused=cfg.fused,
                      drop_path_rate=cfg.drop_path_rate, window_size=cfg.window_size,
                      head_channels=cfg.head_channels, ohem_min_kept=cfg.ohem_min_kept)


def autocast_factory(cfg: TrainConfig, device: torch.device):
    """-> (context factory, GradScaler or None, dtype name); mixed precision on GPU only
    (without the weight cache under CUDA graphs, whose capture forbids it)."""
    if device.type != "cuda" or cfg.amp == "none":
        return contextlib.nullcontext, None, "float32"
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be auto, bf16, fp16 or none, got {cfg.amp!r}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    cache = not cfg.cuda_graphs
    return (lambda: torch.autocast("cuda", dtype=dtype, cache_enabled=cache)), scaler, amp


# fields that may change when a run is resumed without changing what it trains
RESUME_FREE = ("out_dir", "iters", "progress", "log_interval", "ckpt_interval", "eval_interval",
               "num_workers", "device", "eval_mode", "test_scale", "slide_crop", "slide_stride",
               "ms_ratios", "max_nonfinite", "name", "pretrained", "skip_mismatched",
               "pretrained_strict", "class_names")
# what a run writes into its folder (semask-eval: eval_<split>_<mode>.*); a run started
# there with overwrite=True removes the earlier run's, which would otherwise pass for its own
RUN_FILES = (STATE_NAME, WEIGHTS_NAME, FINAL_NAME, "eval.json", "eval.md", "metrics.jsonl", "curves.png",
             "eval_*_*.json", "eval_*_*.md")


# load_checkpoint's keywords as the config options that set them
CONFIG_OPTIONS = {"strict=False": "--pretrained-strict false", "skip_mismatched=True": "--skip-mismatched true"}


def load_pretrained(model: SeMaskSwin, cfg: TrainConfig) -> LoadReport:
    """Load ``cfg.pretrained`` into ``model``; a mismatch names the config option that allows it."""
    try:
        return load_checkpoint(model, cfg.pretrained, skip_mismatched=cfg.skip_mismatched,
                               strict=cfg.pretrained_strict)
    except CheckpointMismatch as exc:
        raise CheckpointMismatch(f"--pretrained {cfg.pretrained}: {exc.problem}", CONFIG_OPTIONS[exc.option],
                                 exc.effect, exc.keys, exc.lines) from None


def config_changes(stored: dict, now: dict) -> dict:
    """{field: (stored, now)} of the fields, other than RESUME_FREE, that differ."""
    return {k: (stored.get(k), v) for k, v in now.items()
            if k not in RESUME_FREE and stored.get(k) != v}


def _continue_metrics(source: Path, target: Path, start_iter: int) -> None:
    """``target`` = the records of ``source`` up to ``start_iter`` (a resumed run's history,
    without what the interrupted run logged after its checkpoint)."""
    kept = []
    for line in source.read_text().splitlines() if source.is_file() else []:
        try:
            if line.strip() and json.loads(line)["iter"] <= start_iter:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a record cut short when the run was killed
            warnings.warn(f"{source}: dropped an unreadable record {line[:80]!r}", stacklevel=2)
    target.write_text("".join(line + "\n" for line in kept))


def _remove_run(files: list[Path]) -> None:
    """Remove an earlier run's files (``train(overwrite=True)``), saying which."""
    if files:
        warnings.warn(f"overwrite: removing the earlier run's files in {files[0].parent}: "
                      + ", ".join(p.name for p in files), stacklevel=3)
    for p in files:
        p.unlink()


def _rank_rng(saved, info, say) -> dict:
    """This process's RNG state from a checkpoint's (one per rank; a dict in older files)."""
    if isinstance(saved, dict):
        return saved
    if len(saved) != info.world_size:
        say(f"the checkpoint holds the RNG states of {len(saved)} processes, this run has "
            f"{info.world_size}: rank r continues the stream of rank r % {len(saved)}")
    return saved[info.rank % len(saved)]


def _consumed_samples(stored: dict, state: dict, now: int, info) -> int:
    """Samples of the global training stream the resumed run drew (stored since they are
    counted; before: its iteration times its effective batch, whose number of processes
    is that of its RNG states, or this run's for a file with one); warns when this run's
    effective batch (``now`` images per step) differs from the run's last one."""
    world = len(state["rng"]) if isinstance(state["rng"], list) else info.world_size
    before = stored["batch_size"] * stored.get("accum_steps", 1) * world
    if now != before and info.is_main:
        warnings.warn(f"the effective batch changes from {before} images per step (the run's: {world} "
                      f"process(es) x {before // world}) to {now} ({info.world_size} x "
                      f"{now // info.world_size}); the lr schedule is not rescaled", stacklevel=3)
    return state.get("samples", state["iteration"] * before)


def _log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def raw_dataset(cfg: TrainConfig, split: str, data_root: str | None = None):
    """The raw ``split`` of the dataset ``cfg`` names (``data_root`` in place of the config's)."""
    layout = FolderLayout({"train": tuple(cfg.folder_train), "val": tuple(cfg.folder_val)}, cfg.image_suffix,
                          cfg.label_suffix, cfg.reduce_zero_label, cfg.class_names and tuple(cfg.class_names))
    return build_raw_dataset(cfg.dataset, split, data_root or cfg.data_root, cfg.num_classes, cfg.seed,
                             cfg.synthetic_train_size if split == "train" else cfg.synthetic_val_size,
                             cfg.synthetic_size, layout)


def earlier_run_files(out: Path, resume: str | None = None) -> list[Path]:
    """The files of a run that ``out`` holds, other than the one ``resume`` continues
    there (empty: none). A run: a state, weights or final model file."""
    if resume and resolve_resume(resume).parent.resolve() == out.resolve():
        return []
    if not any((out / name).is_file() for name in (STATE_NAME, WEIGHTS_NAME, FINAL_NAME)):
        return []
    return sorted({p for pattern in RUN_FILES for p in out.glob(pattern) if p.is_file()})


def train(cfg: TrainConfig, resume: str | None = None, stop_at: int | None = None,
          overwrite: bool = False) -> dict:
    """Run training (and the final evaluation); returns the evaluation result (rank 0:
    also written to ``<out_dir>/eval.json``). ``stop_at``: leave after that iteration's
    checkpoint, as an interrupted run would. A folder that holds another run is refused
    unless ``overwrite``: then that run's files are removed (two runs' files side by side
    pass for one run)."""
    out = Path(cfg.out_dir)
    earlier = earlier_run_files(out, resume)
    if earlier and not overwrite:
        raise ValueError(f"{out} holds another run ({', '.join(p.name for p in earlier)}): --resume "
                         f"continues it, --overwrite replaces it (removes these files), or choose another "
                         "--out-dir")
    if cfg.pretrained and Path(cfg.pretrained).resolve() in {p.resolve() for p in earlier}:
        raise ValueError(f"the pretrained file {cfg.pretrained} is one of the earlier run's files that "
                         "overwrite removes: copy it elsewhere first")
    if stop_at is not None and not (resume or 1 <= stop_at <= cfg.iters):
        raise ValueError(f"stop_at must be between 1 and iters={cfg.iters}, got {stop_at}")
    backend = compile_backend(cfg.compile)
    info = distributed.setup(cfg.device)
    if cfg.cuda_graphs:
        why = graph_support_errors(info.device, info.enabled, backend is not None,
                                   bool(cfg.grad_checkpointing), cfg.accum_steps)
        if why:
            distributed.cleanup(info)
            raise ValueError("--cuda-graphs: " + "; ".join(why))
    t_start = time.perf_counter()
    say = print if info.is_main else (lambda *a, **k: None)
    say(f"semask-train  world size {info.world_size}, device {info.device}\nconfig:\n{cfg.describe()}")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    # data
    train_raw, val_raw = raw_dataset(cfg, "train"), raw_dataset(cfg, "val")
    num_classes = len(train_raw.classes) if cfg.dataset != "ade20k" else cfg.num_classes
    if num_classes != cfg.num_classes:
        raise ValueError(f"{cfg.dataset} has {num_classes} classes but the config says num_classes={cfg.num_classes}")
    transforms = train_transforms(tuple(cfg.crop_size), cfg.img_scale and tuple(cfg.img_scale),
                                  tuple(cfg.ratio_range), cfg.cat_max_ratio, photometric=cfg.photometric,
                                  ratio_choices=cfg.ratio_choices)
    say(f"data: {cfg.dataset}, {len(train_raw)} train / {len(val_raw)} val images, {num_classes} classes")

    # model
    model = build_model(cfg, num_classes)
    if resume:  # the weights come from the run's state (the pretrained file may be gone)
        pass
    elif cfg.pretrained:
        say(load_pretrained(model, cfg))
    elif cfg.dataset != "synthetic" and info.is_main:
        warnings.warn(PRETRAINED_WARNING, stacklevel=2)
    if cfg.grad_checkpointing:
        model.backbone.set_grad_checkpointing(tuple(cfg.grad_checkpointing))
    model.to(info.device)
    if info.enabled and info.device.type == "cuda" and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    say(f"model: SeMask-Swin {cfg.variant}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    autocast, scaler, amp_name = autocast_factory(cfg, info.device)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas,
                                fused=True if info.device.type == "cuda" else None)
    scheduler = build_scheduler(optimizer, cfg.iters, cfg.warmup_iters, cfg.warmup_ratio, cfg.poly_power,
                                cfg.min_lr, cfg.lr)
    start_iter = start_sample = 0  # start_sample: samples of the global training stream already drawn
    step_images = cfg.batch_size * cfg.accum_steps * info.world_size
    metrics_path = out / "metrics.jsonl"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if resume:
        state = load_training_state(resume, model, optimizer, scheduler, scaler)
        start_iter = state["iteration"]
        if start_iter > cfg.iters:
            raise ValueError(f"{resume}: the run is already at iteration {start_iter}, past iters="
                             f"{cfg.iters}: nothing to train (give --iters above {start_iter})")
        if stop_at is not None and not start_iter < stop_at <= cfg.iters:
            raise ValueError(f"stop_at must be after the run's iteration {start_iter} and at most "
                             f"iters={cfg.iters}, got {stop_at}")
        say(f"resumed from {resume} at iteration {start_iter}")
        stored = json.loads(state["config"])
        changed = config_changes(stored, cfg.to_dict())
        if changed and info.is_main:
            warnings.warn(f"resuming with a config that differs from the run's: {changed}", stacklevel=2)
        start_sample = _consumed_samples(stored, state, step_images, info)
        if info.is_main:
            _remove_run(earlier)
            _continue_metrics(resolve_resume(resume).parent / metrics_path.name, metrics_path, start_iter)
    elif info.is_main:
        _remove_run(earlier)
        metrics_path.write_text("")
    ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
        if info.enabled else model
    # compiled: the forward only (fixed crop size); the loss takes the fused kernel eagerly
    forward = torch.compile(ddp, backend=backend) if backend else ddp
    if backend:
        say(f"torch.compile of the training forward, backend {backend}")
    loader = train_loader(TransformedDataset(train_raw, transforms), cfg.batch_size, cfg.seed, info.rank,
                          info.world_size, start_sample, cfg.num_workers,
                          pin_memory=info.device.type == "cuda" and pinned_batches_allowed(cfg.cuda_graphs))
    batches = DevicePrefetcher(loader, info.device)
    graphed = None  # the CUDA-graphed loss step, captured on the first batch
    # RNG last: nothing above may draw from it after a resume (dropout / drop path use it)
    if resume:
        set_rng_state(_rank_rng(state["rng"], info, say))
    else:
        torch.manual_seed(cfg.seed + info.rank)

    # loop
    model.train()
    nonfinite_in_row = 0
    # a forward that goes non-finite has written NaN / inf into the BatchNorm statistics:
    # a skipped step puts them back (the head's few KB), or every eval forward is NaN
    norm_stats = [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                  for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved_stats = [torch.empty_like(b) for b in norm_stats]  # refilled each step in one launch
    bar = tqdm(total=cfg.iters, initial=start_iter, desc="train", dynamic_ncols=True,
               disable=not (cfg.progress and info.is_main))
    t_loop = t_log = time.perf_counter()
    imgs_since_log = 0
    # logged losses: the mean over the log interval's finite steps (as mmcv's log buffer)
    interval_sums, interval_steps = torch.zeros(3, device=info.device), 0
    for it in range(start_iter, cfg.iters):
        sums = torch.zeros(3, device=info.device)
        if norm_stats:
            torch._foreach_copy_(saved_stats, norm_stats)
        for micro in range(cfg.accum_steps):
            images, labels, _ = batches.next()
            sync = contextlib.nullcontext() if (not info.enabled or micro == cfg.accum_steps - 1) else ddp.no_sync()
            with sync:
                if cfg.cuda_graphs:
                    if graphed is None:
                        graphed = graphed_loss_step(model, images, labels, autocast)
                        say("CUDA graphs: training forward, losses and backward captured")
                        # img/s and it/s count replays, not warm-up and capture
                        t_log = t_loop = time.perf_counter()
                    losses = graphed(images, labels)
                else:
                    with autocast():
                        losses = model.loss(forward(images), labels)
                loss = losses["loss"] / cfg.accum_steps
                (scaler.scale(loss) if scaler is not None else loss).backward()
            batches.prefetch()  # the next batch's copy overlaps this backward on a GPU
            sums += torch.stack([losses["loss"], losses["loss_main"], losses["loss_semantic"]]).detach().float()
        sums = distributed.all_reduce_sum(sums, info) / (cfg.accum_steps * info.world_size)
        if not bool(torch.isfinite(sums).all()):
            nonfinite_in_row += 1
            optimizer.zero_grad(set_to_none=True)
            if norm_stats:
                with torch.no_grad():
                    torch._foreach_copy_(norm_stats, saved_stats)
            warnings.warn(f"iteration {it + 1}: non-finite loss {sums[0].item()}; step skipped "
                          f"({nonfinite_in_row} in a row, limit {cfg.max_nonfinite})", stacklevel=2)
            if nonfinite_in_row >= cfg.max_nonfinite:
                raise NonFiniteLossError(f"{nonfinite_in_row} non-finite losses in a row (iteration {it + 1}); "
                                         "lower the lr, check the data or use --amp bf16/none")
        else:
            nonfinite_in_row = 0
            interval_sums += sums
            interval_steps += 1
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = it + 1
        imgs_since_log += step_images
        bar.update(1)
        if done % cfg.log_interval == 0 or done == cfg.iters:
            now = time.perf_counter()
            ips = imgs_since_log / max(now - t_log, 1e-9)
            t_log, imgs_since_log = now, 0
            mean = (interval_sums / interval_steps if interval_steps else sums).tolist()
            interval_sums.zero_()
            interval_steps = 0
            record = dict(iter=done, loss=mean[0], loss_main=mean[1], loss_semantic=mean[2], lr=lr,
                          img_per_s=ips, elapsed_s=now - t_start)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
            if info.is_main:
                _log(metrics_path, record)
        evaluate_now = cfg.eval_interval and done % cfg.eval_interval == 0 and done != cfg.iters
        save_now = (cfg.ckpt_interval and done % cfg.ckpt_interval == 0) or done in (cfg.iters, stop_at)
        t_pause = time.perf_counter()  # evaluation and checkpoints: not in img/s and it/s
        if evaluate_now or save_now:  # rank-independent BatchNorm statistics for eval / checkpoints
            distributed.broadcast_buffers(model, info)
        if save_now:  # before the evaluation: a failed or interrupted one loses no training
            rngs = distributed.gather_to_all(rng_state(), info)  # every rank's dropout streams
            if info.is_main:
                save_training_state(out, model, optimizer, scheduler, scaler, done, cfg.to_dict(), rngs,
                                    start_sample + (done - start_iter) * step_images)
            distributed.barrier(info)
        if evaluate_now:
            res = _evaluate(cfg, model, val_raw, num_classes, info, autocast)
            if info.is_main:
                _log(metrics_path, dict(iter=done, mIoU=res["mIoU"], aAcc=res["aAcc"]))
                bar.write(f"iter {done}: val mIoU {100 * res['mIoU']:.2f}")
        paused = time.perf_counter() - t_pause
        t_log, t_loop = t_log + paused, t_loop + paused
        if done == stop_at:
            bar.close()
            distributed.cleanup(info)
            return {}
    bar.close()
    train_s = time.perf_counter() - t_start
    it_per_s = (cfg.iters - start_iter) / max(time.perf_counter() - t_loop, 1e-9)
    # not needed by the final evaluation: the last batches (and the one fetched ahead, on
    # the device), the loader's workers and pinned buffers, and the training graphs' memory
    # pool (a whole step's activations; make_graphed_callables' module sits in a reference
    # cycle, so only a collection frees it)
    batches = loader = images = labels = losses = loss = None
    if graphed is not None:
        graphed = None
        gc.collect()
    if info.device.type == "cuda":
        torch.cuda.empty_cache()

    # final evaluation, artefacts
    res = _evaluate(cfg, model, val_raw, num_classes, info, autocast)
    total_s = time.perf_counter() - t_start
    res.update(iteration=cfg.iters, train_s=train_s, it_per_s=it_per_s, total_s=total_s, amp=amp_name)
    if info.is_main:
        _log(metrics_path, dict(iter=cfg.iters, mIoU=res["mIoU"], aAcc=res["aAcc"]))
        save_checkpoint(model, out / FINAL_NAME, {"config": cfg.to_json(), "iteration": cfg.iters})
        (out / "eval.json").write_text(json.dumps(res, indent=1))
        (out / "eval.md").write_text(markdown_table(res) + "\n")
        plot_metrics(metrics_path, out / "curves.png")
        print(markdown_table(res))
        print(f"\nval mIoU {res['mIoU']:.4f} ({100 * res['mIoU']:.2f}%), pixel accuracy {res['aAcc']:.4f}; "
              f"constant-class baseline (always '{res['baseline_class']}') mIoU {res['baseline_mIoU']:.4f}")
        print(f"time: {train_s:.0f} s training ({it_per_s:.2f} it/s), {total_s:.0f} s in all (wall clock); "
              f"outputs in {out}/ "
              "(model.safetensors, eval.json, eval.md, metrics.jsonl, curves.png)")
    distributed.cleanup(info)
    return res


def _evaluate(cfg, model, val_raw, num_classes, info, autocast) -> dict:
    return evaluate(model, val_raw, num_classes, info.device, cfg.eval_mode, cfg.test_scale, cfg.ms_ratios,
                    tuple(cfg.slide_crop), tuple(cfg.slide_stride), info, progress=cfg.progress,
                    autocast=autocast, cuda_graphs=cfg.cuda_graphs, pad_multiple=cfg.eval_pad_multiple,
                    num_workers=cfg.num_workers)
