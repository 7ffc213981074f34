"""mIoU, mAcc, pixel accuracy against a confusion matrix and IoUs / accuracies computed by hand."""
import math

import pytest
import torch

from semask.train.metrics import best_constant_miou, confusion_matrix, markdown_table, summarize


def test_confusion_and_iou_by_hand():
    # 3 classes, 255 ignored.      gt:  0 0 0 1 1 2 2 2 255 255
    target = torch.tensor([[0, 0, 0, 1, 1], [2, 2, 2, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 2], [2, 2, 0, 1, 0]])
    conf = confusion_matrix(pred, target, 3)
    # rows gt, cols pred: gt0 -> pred 0,0,1 ; gt1 -> 1,2 ; gt2 -> 2,2,0
    assert conf.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    res = summarize(conf, ["a", "b", "c"])
    # IoU_a = 2 / (3 + 3 - 2) = 0.5 ; IoU_b = 1 / (2 + 2 - 1) = 1/3 ; IoU_c = 2 / (3 + 3 - 2) = 0.5
    assert res["IoU"] == pytest.approx({"a": 0.5, "b": 1 / 3, "c": 0.5})
    assert res["mIoU"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert res["aAcc"] == pytest.approx(5 / 8)
    assert res["pixels"] == 8
    # Acc = TP / labelled: a 2/3, b 1/2, c 2/3 (mmseg's per-class accuracy)
    assert res["Acc"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 2 / 3})
    assert res["mAcc"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert "| **mIoU / mAcc** | **44.44** | **61.11** |" in markdown_table(res)
    assert "| b | 33.33 | 50.00 |" in markdown_table(res)


def test_absent_class_is_left_out_of_the_mean():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    res = summarize(confusion_matrix(pred, target, 3))
    assert res["IoU"]["2"] is None  # never in labels nor predictions
    assert res["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # predicted but never labelled: IoU 0, Acc undefined (0 / 0) and left out of mAcc
    res = summarize(confusion_matrix(torch.tensor([0, 2, 1, 1]), target, 3))
    assert res["IoU"]["2"] == 0.0 and res["Acc"]["2"] is None
    assert res["mAcc"] == pytest.approx((1 / 2 + 1) / 2)


def test_best_constant_baseline():
    # gt counts: class0 6, class1 3, class2 1 -> always predicting 0: IoU0 = 6/10, others 0
    conf = torch.tensor([[6, 0, 0], [0, 3, 0], [0, 0, 1]])
    cls, miou = best_constant_miou(conf)
    assert cls == 0 and miou == pytest.approx(0.6 / 3)
    # and it equals summarize() of that actual prediction
    target = torch.tensor([0] * 6 + [1] * 3 + [2])
    assert summarize(confusion_matrix(torch.zeros_like(target), target, 3))["mIoU"] == pytest.approx(miou)


def test_best_constant_baseline_averages_over_present_classes():
    # class 2 never labelled: the mean runs over the 2 present classes (mmseg's nanmean)
    conf = torch.tensor([[6, 0, 0], [0, 4, 0], [0, 0, 0]])
    cls, miou = best_constant_miou(conf)
    assert cls == 0 and miou == pytest.approx(0.6 / 2)
    target = torch.tensor([0] * 6 + [1] * 4)
    assert summarize(confusion_matrix(torch.zeros_like(target), target, 3))["mIoU"] == pytest.approx(miou)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 255]), 2)
    # a prediction id of K would be counted as (ground truth + 1, 0); floats would be cut
    with pytest.raises(ValueError, match="predicted class ids outside 0..4: 0..5"):
        confusion_matrix(torch.tensor([5, 0, 1, 2]), torch.tensor([0, 0, 1, 2]), 5)
    with pytest.raises(ValueError, match="predicted class ids outside 0..4: -1..2"):
        confusion_matrix(torch.tensor([-1, 0, 1, 2]), torch.tensor([0, 0, 1, 2]), 5)
    with pytest.raises(TypeError, match="pred must hold class ids"):
        confusion_matrix(torch.tensor([0.7, 0.0, 1.0, 2.0]), torch.tensor([0, 0, 1, 2]), 5)
    assert math.isnan(summarize(torch.zeros(2, 2, dtype=torch.long))["mIoU"])


@pytest.mark.parametrize("checked", [False, True])
def test_confusion_counts_every_pixel_pair(checked):
    g, K = torch.Generator().manual_seed(1), 20  # uint8 labels: t * K + p overflows 8 bits
    target = torch.randint(0, K, (3, 17, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, K, target.shape, generator=g)
    expected = [[0] * K for _ in range(K)]
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            expected[t][p] += 1
    assert confusion_matrix(pred, target.to(torch.uint8), K, checked=checked).tolist() == expected


def test_empty_prediction_counts_nothing():
    """No pixel (an empty crop or batch): the K x K matrix of zeros, checked or not."""
    for checked in (False, True):
        conf = confusion_matrix(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3, checked=checked)
        assert conf.dtype == torch.int64 and conf.tolist() == [[0] * 3] * 3


def test_complex_predictions_are_refused_as_no_class_ids():
    with pytest.raises(TypeError, match="pred must hold class ids .* got torch.complex64"):
        confusion_matrix(torch.tensor([0, 1, 2], dtype=torch.complex64), torch.tensor([0, 1, 2]), 3)
