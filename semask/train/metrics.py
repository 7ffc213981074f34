"""Confusion-matrix metrics: IoU per class, mIoU, pixel accuracy (mmseg definitions)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

IGNORE_INDEX = 255


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """[K, K] int64 counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.max() >= num_classes or t.min() < 0):
        raise ValueError(f"label values outside 0..{num_classes - 1} (and {ignore_index} = ignore)")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def summarize(conf: Tensor, class_names=None) -> dict:
    """IoU_c = TP / (TP + FP + FN); classes absent from labels and predictions get NaN and
    are left out of the mean (as mmseg). Pixel accuracy = trace / total."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    total = conf.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    return dict(
        mIoU=float(iou[valid].mean()) if valid.any() else float("nan"),
        aAcc=float(tp.sum() / total) if total > 0 else float("nan"),
        IoU={n: (None if math.isnan(v) else v) for n, v in zip(names, iou.tolist())},
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


def markdown_table(result: dict) -> str:
    lines = ["| class | IoU |", "|---|---|"]
    for name, v in result["IoU"].items():
        lines.append(f"| {name} | {'n/a' if v is None else f'{100 * v:.2f}'} |")
    lines.append(f"| **mIoU** | **{100 * result['mIoU']:.2f}** |")
    lines.append(f"| pixel accuracy | {100 * result['aAcc']:.2f} |")
    return "\n".join(lines)
