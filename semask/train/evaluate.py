"""Evaluate a model on a dataset: confusion matrix -> mIoU, mAcc, per-class IoU and accuracy,
pixel accuracy."""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..data import TransformedDataset, eval_loader, eval_transforms
from ..data.folders import DataError, SampleError
from .cuda_graphs import GraphedInference
from .distributed import DistInfo, all_reduce_sum, gather_to_all
from .inference import eval_mode, predict_probs
from .metrics import best_constant_miou, check_labels, confusion_matrix, summarize


@torch.no_grad()
def evaluate(model, raw_dataset, num_classes: int, device, mode: str = "whole", test_scale=None,
             ms_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), crop=(512, 512), stride=(341, 341),
             info: DistInfo | None = None, progress: bool = False, autocast=None,
             cuda_graphs: bool = False, pad_multiple: int | None = None, num_workers: int = 0) -> dict:
    """Score ``raw_dataset`` (items image, label, name) at each label's own size.

    Returns summarize()'s dict plus ``confusion`` (list of lists), ``mode`` and the best
    constant-class baseline (``baseline_class``, ``baseline_mIoU``). Under DDP every rank
    scores a shard and the confusion matrices are summed. ``cuda_graphs``: the forwards
    replay CUDA graphs (:class:`~semask.train.cuda_graphs.GraphedInference`), dropped at
    the end. ``pad_multiple``: pad each forward's input to a multiple of it
    (:func:`~semask.train.inference.predict_probs`; None: as mmseg). ``num_workers``: data
    loader processes. The loop never waits for the GPU (the confusion matrix is summed
    there), so loading the next image overlaps this one's forward.
    """
    info = info or DistInfo(device=torch.device(device))
    if cuda_graphs and info.device.type != "cuda":
        raise ValueError(f"evaluate: CUDA graphs need a CUDA device, got {info.device}")
    try:
        conf = _confusion(model, raw_dataset, num_classes, mode, test_scale, ms_ratios, crop, stride, info,
                          progress, autocast, cuda_graphs, pad_multiple, num_workers)
        error = None
    except Exception as exc:  # the other processes would wait in all_reduce for this one
        if not info.enabled:
            raise
        error = exc
    failed = [e for e in gather_to_all(None if error is None else f"{type(error).__name__}: {error}", info) if e]
    if error is not None:
        raise error
    if failed:
        # a bad file in another process's share is one here too (the command's hint)
        bad_file = failed[0].startswith(f"{SampleError.__name__}: ")
        raise (SampleError if bad_file else DataError)(f"evaluate: another process failed ({failed[0]})")
    conf = all_reduce_sum(conf, info).cpu()
    if not conf.sum():  # mIoU would be NaN (0 / 0)
        raise DataError(f"evaluate: the {len(raw_dataset)} labels hold no labelled pixel (every pixel is the "
                        "ignore index 255; the Cityscapes test split's labels are not public): nothing to score")
    result = summarize(conf, getattr(raw_dataset, "classes", None))
    cls, base = best_constant_miou(conf)
    classes = getattr(raw_dataset, "classes", None)
    result.update(mode=mode, confusion=conf.tolist(), baseline_mIoU=base,
                  baseline_class=classes[cls] if classes else cls)
    return result


def _confusion(model, raw_dataset, num_classes, mode, test_scale, ms_ratios, crop, stride, info, progress,
               autocast, cuda_graphs, pad_multiple, num_workers) -> torch.Tensor:
    """This process's share of the [K, K] confusion matrix (on info.device); see evaluate."""
    with eval_mode(model):
        runner = GraphedInference(model) if cuda_graphs else model
        dataset = TransformedDataset(raw_dataset, eval_transforms())
        conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=info.device)
        loader = eval_loader(dataset, num_workers, info.rank, info.world_size, pin_memory=info.device.type == "cuda")
        share = f", rank 0's {len(loader)} of {len(dataset)} images" if info.enabled else ""  # rank 0 alone shows one
        for image, label, _ in tqdm(loader, desc=f"eval ({mode}{share})", disable=not (progress and info.is_main),
                                    leave=False, dynamic_ncols=True):
            check_labels(label, num_classes)  # on the host
            image, label = image.to(info.device, non_blocking=True), label.to(info.device, non_blocking=True)
            with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
                probs = predict_probs(runner, image, label.shape[-2:], mode, test_scale, ms_ratios, crop, stride,
                                      pad_multiple=pad_multiple)
            if probs.shape[1] != num_classes:  # an index past the matrix: a device-side assert
                raise ValueError(f"evaluate: the model predicts {probs.shape[1]} classes, the "
                                 f"evaluation counts {num_classes}")
            conf += confusion_matrix(probs.argmax(1), label, num_classes, checked=True)
    return conf
