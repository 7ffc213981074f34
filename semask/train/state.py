"""Checkpoints of a training run, written atomically.

``<out>/last_state.pt``      everything a resume needs, in one file: model weights,
                              optimizer, scheduler, grad scaler, the RNG states of every
                              process, iteration, samples drawn, config; plain tensors / containers only, so
                              ``torch.load(path, weights_only=True)`` reads it
``<out>/last.safetensors``   model weights (semask.save_checkpoint; for semask-eval and
                              semask-infer), metadata: config JSON, iteration; written
                              after the state, so a run killed in between still resumes
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..models.checkpoint import load_checkpoint, save_checkpoint, unwrap_model, write_atomically

WEIGHTS_NAME, STATE_NAME = "last.safetensors", "last_state.pt"
FINAL_NAME = "model.safetensors"  # the finished run's weights


def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        # this process's GPU only (a resume with fewer visible GPUs has no others to set)
        cuda=[torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                   has_gauss=int(np_state[3]), cached=float(np_state[4])),
        python=[list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    )


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available():  # files of earlier versions: every visible GPU's
        device = torch.cuda.current_device()
        torch.cuda.set_rng_state(cuda[device] if len(cuda) > 1 and device < len(cuda) else cuda[0])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_state(out_dir: str | Path, model, optimizer, scheduler, scaler, iteration: int,
                        config: dict, rng_states: list[dict] | None = None, samples: int | None = None) -> Path:
    """Write the state file, then the weights (each atomically); returns the state path.
    ``rng_states``: :func:`rng_state` of every process, by rank (default: this one's);
    ``samples``: how many samples of the global training stream the run has drawn."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    state = dict(iteration=iteration, config=json.dumps(config), model=weights,
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                 scaler=scaler.state_dict() if scaler is not None else {},
                 rng=rng_states or [rng_state()])
    if samples is not None:
        state["samples"] = samples
    write_atomically(out / STATE_NAME, lambda tmp: torch.save(state, tmp))
    save_checkpoint(model, out / WEIGHTS_NAME, {"config": json.dumps(config), "iteration": iteration})
    return out / STATE_NAME


def resolve_resume(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    return path


def _read_state(path: Path, **kwargs) -> dict:
    """The state file at ``path``; a clear error for a truncated or foreign file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as exc:  # cut short by a kill, or not a torch file (last.safetensors, say)
        raise ValueError(f"{path} is not a readable training state file ({STATE_NAME}): "
                         f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
    missing = {"iteration", "config", "optimizer", "scheduler"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a training state file ({STATE_NAME}): it has no {sorted(missing)}")
    return state


def training_state(path: str | Path) -> dict | None:
    """The state in ``path`` when it is a run's state file (last_state.pt; tensors memory-mapped),
    else None (another checkpoint, or no PyTorch file)."""
    try:
        return _read_state(Path(path), mmap=True)
    except ValueError:
        return None


def stored_config(path: str | Path):
    """The :class:`~semask.train.config.TrainConfig` a run's state file was written with."""
    from .config import from_dict
    state = _read_state(resolve_resume(path), mmap=True)  # tensors not read
    return from_dict(json.loads(state["config"]), str(path))


def load_training_state(path: str | Path, model, optimizer, scheduler, scaler) -> dict:
    """Restore everything :func:`save_training_state` wrote; returns the state dict
    (``iteration``, ``config`` JSON, ``rng``). RNG states are restored last by the caller.
    State files of earlier versions hold no weights: those come from the weights file
    written with them."""
    path = resolve_resume(path)
    state = _read_state(path)
    if "model" in state:
        load_checkpoint(model, state["model"])
    else:
        weights = path.parent / state["weights"]
        meta_iter = int(read_metadata(weights).get("iteration", -1))
        if meta_iter != state["iteration"]:
            raise ValueError(f"{weights} holds iteration {meta_iter} but {path} iteration "
                             f"{state['iteration']}: the pair was not written together")
        load_checkpoint(model, weights)
    # the stored optimizer and scheduler states carry the stored run's lr, betas and weight
    # decay; this run's config decides them (options given with --resume: --lr, --iters,
    # ...), so its groups keep their settings and the lr is its schedule's at the iteration
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:  # other parameter groups: another model, or an earlier no-decay rule
        raise ValueError(f"{path}: its optimizer state does not fit this model's parameter groups "
                         f"({exc})") from exc
    scheduler.load_state_dict(state["scheduler"])
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    return state


def read_metadata(path: str | Path) -> dict:
    """The string metadata of a .safetensors file; ValueError naming it when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error type for a broken header
        raise ValueError(f"could not read checkpoint {path}: it is corrupt or truncated "
                         f"({exc})") from exc
