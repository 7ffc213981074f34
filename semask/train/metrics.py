"""Confusion-matrix metrics: IoU and accuracy per class, mIoU, mAcc, pixel accuracy (mmseg's
definitions, mmseg/core/evaluation/metrics.py)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

IGNORE_INDEX = 255


def check_labels(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """ValueError for a label that is neither a class nor ``ignore_index`` (reads the values:
    a host sync for a GPU tensor)."""
    t = target[target != ignore_index]
    if t.numel() and (t.max() >= num_classes or t.min() < 0):
        raise ValueError(f"label values outside 0..{num_classes - 1} (and {ignore_index} = ignore)")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     checked: bool = False) -> Tensor:
    """[K, K] int64 counts on pred's device, rows = ground truth, columns = prediction (class
    ids, an integer tensor); ignored pixels skipped. ``checked``: the labels have passed
    :func:`check_labels` and ``pred`` is an argmax over K classes, and nothing here waits for
    the device (no bincount, no boolean indexing)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    if pred.is_floating_point() or pred.is_complex():
        raise TypeError(f"pred must hold class ids (an integer tensor, e.g. logits.argmax(1)), got {pred.dtype}")
    if not checked:
        check_labels(target, num_classes, ignore_index)
        if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):  # would count in another row
            raise ValueError(f"predicted class ids outside 0..{num_classes - 1}: "
                             f"{pred.min().item()}..{pred.max().item()}")
    target, pred = target.flatten().long(), pred.flatten().long()
    keep = target != ignore_index
    cell = torch.where(keep, target * num_classes + pred, 0)  # ignored pixels add 0 to cell 0
    counts = torch.zeros(num_classes ** 2, dtype=torch.long, device=pred.device)
    return counts.index_add_(0, cell, keep.long()).view(num_classes, num_classes)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den per class, NaN where den is 0 (mmseg's 0 / 0)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def _nanmean(x: Tensor) -> float:
    valid = ~torch.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")


def _by_name(names: list[str], x: Tensor) -> dict:
    return {n: (None if math.isnan(v) else v) for n, v in zip(names, x.tolist())}


def summarize(conf: Tensor, class_names=None) -> dict:
    """IoU_c = TP / (TP + FP + FN), Acc_c = TP / (TP + FN); a class without union (IoU) or
    without labelled pixels (Acc) gets NaN (None per class) and is left out of the mean
    (mmseg's nanmean). aAcc = trace / total."""
    conf = conf.double()
    tp, labelled = conf.diag(), conf.sum(1)
    iou = _ratio(tp, conf.sum(0) + labelled - tp)
    acc = _ratio(tp, labelled)
    total = conf.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    return dict(
        mIoU=_nanmean(iou),
        mAcc=_nanmean(acc),
        aAcc=float(tp.sum() / total) if total > 0 else float("nan"),
        IoU=_by_name(names, iou),
        Acc=_by_name(names, acc),
        pixels=int(total),
    )


def best_constant_miou(conf: Tensor) -> tuple[int, float]:
    """mIoU of the best "predict class c everywhere" baseline on the labels counted in ``conf``:
    IoU_c = n_c / N, every other class present gets 0; mean over classes present."""
    gt = conf.double().sum(1)
    present = int((gt > 0).sum())
    if present == 0:
        return 0, float("nan")
    c = int(gt.argmax())
    return c, float(gt[c] / gt.sum()) / present


def _percent(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def markdown_table(result: dict) -> str:
    """Per-class IoU and Acc, then mIoU / mAcc and aAcc (results of earlier versions,
    without Acc, show n/a there)."""
    acc = result.get("Acc", {})
    lines = ["| class | IoU | Acc |", "|---|---|---|"]
    for name, v in result["IoU"].items():
        lines.append(f"| {name} | {_percent(v)} | {_percent(acc.get(name))} |")
    lines.append(f"| **mIoU / mAcc** | **{_percent(result['mIoU'])}** | **{_percent(result.get('mAcc'))}** |")
    lines.append(f"| pixel accuracy (aAcc) | {_percent(result['aAcc'])} | |")
    return "\n".join(lines)
