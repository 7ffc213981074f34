"""Whole / sliding-window / multi-scale+flip inference agree on a model whose output is
scale-invariant by construction: a 1x1 convolution (identity on the normalised RGB
channels). Bilinear resizing commutes with a per-pixel affine map, so every mode must
reproduce the whole-image result, except within a few pixels of colour edges, where
down- and up-sampling blurs."""
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from semask.data import IMAGENET_MEAN, IMAGENET_STD
from semask.train.evaluate import evaluate
from semask.train.inference import predict_probs

H, W, K = 90, 118, 3


def colour_model() -> nn.Module:
    conv = nn.Conv2d(3, K, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    return conv.eval()


def quadrant_sample(seed: int):
    """Label: 4 blocks split at a random (row, col); image: pure R / G / B per class."""
    rng = np.random.default_rng(seed)
    r, c = int(rng.integers(30, 60)), int(rng.integers(30, 90))
    cls = rng.permutation([0, 1, 2, int(rng.integers(0, 3))])
    label = np.zeros((H, W), np.uint8)
    label[:r, :c], label[:r, c:], label[r:, :c], label[r:, c:] = cls
    image = (np.eye(3, dtype=np.uint8)[label] * 255)
    return image, label, (r, c)


def normalised(image):
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def far_from_edges(r: int, c: int, margin: int = 3) -> torch.Tensor:
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None, :]
    return ((rows - r).abs() >= margin) & ((cols - c).abs() >= margin)


@pytest.mark.parametrize("seed", [0, 1])
def test_modes_agree(seed):
    image, label, (r, c) = quadrant_sample(seed)
    model, x = colour_model(), normalised(image)
    whole = predict_probs(model, x, mode="whole")
    assert torch.equal(whole.argmax(1)[0], torch.from_numpy(label).long())
    slide = predict_probs(model, x, mode="slide", crop=(40, 48), stride=(25, 30))
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-6)      # per-pixel model: exact
    ms = predict_probs(model, x, mode="ms_flip", ms_ratios=(0.5, 0.75, 1.0, 1.5))
    ms_slide = predict_probs(model, x, mode="ms_flip", ms_ratios=(0.75, 1.25), ms_base="slide",
                             crop=(40, 48), stride=(25, 30))
    scaled = predict_probs(model, x, mode="whole", test_scale=(180, 130))   # keep-ratio resize and back
    far = far_from_edges(r, c)
    for probs in (ms, ms_slide, scaled):
        assert probs.shape == whole.shape
        torch.testing.assert_close(probs[0][:, far], whole[0][:, far], rtol=1e-4, atol=1e-5)
        assert (probs.argmax(1) == whole.argmax(1)).float().mean() > 0.97


def test_evaluate_scores_every_mode():
    samples = [quadrant_sample(s)[:2] + (f"s{s}",) for s in range(3)]
    model = colour_model()
    whole = evaluate(model, samples, K, "cpu", "whole")
    slide = evaluate(model, samples, K, "cpu", "slide", crop=(40, 48), stride=(25, 30))
    ms = evaluate(model, samples, K, "cpu", "ms_flip", ms_ratios=(0.5, 1.0, 1.5))
    assert whole["mIoU"] == 1.0 and whole["aAcc"] == 1.0 and slide["confusion"] == whole["confusion"]
    assert whole["pixels"] == 3 * H * W
    assert 0.97 < ms["mIoU"] <= 1.0 and ms["pixels"] == whole["pixels"]
    with pytest.raises(ValueError, match="unknown inference mode"):
        predict_probs(model, normalised(samples[0][0]), mode="tiles")


def _mixing_model() -> nn.Module:
    """A 1x1 convolution that mixes the colours at random: imperfect predictions."""
    torch.manual_seed(5)
    return nn.Conv2d(3, K, 1).eval()


def test_evaluate_with_loader_workers_counts_the_same():
    samples = [quadrant_sample(s)[:2] + (f"s{s}",) for s in range(3)]
    model = _mixing_model()
    plain = evaluate(model, samples, K, "cpu", "whole")
    assert 0 < plain["mIoU"] < 1  # off-diagonal counts to get right
    assert evaluate(model, samples, K, "cpu", "whole", num_workers=1)["confusion"] == plain["confusion"]


def test_evaluate_gives_each_module_its_own_mode_back():
    """A training model with a frozen BatchNorm (mmseg's norm_eval) is scored in eval mode
    and left as it was: training, its BatchNorm frozen (model.train() would unfreeze it)."""
    samples = [quadrant_sample(0)[:2] + ("s0",)]
    model = nn.Sequential(nn.Conv2d(3, K, 1), nn.BatchNorm2d(K)).train()
    model[1].eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append([x.training for x in m.modules()]))
    evaluate(model, samples, K, "cpu", "whole")
    assert seen == [[False, False, False]]
    assert [m.training for m in model.modules()] == [True, True, False]


def test_evaluate_refuses_a_model_of_another_class_count():
    samples = [quadrant_sample(0)[:2] + ("s0",)]
    with pytest.raises(ValueError, match="predicts 3 classes, the evaluation counts 4"):
        evaluate(colour_model(), samples, K + 1, "cpu", "whole")


@pytest.mark.gpu
def test_gpu_evaluate_does_not_wait_for_the_gpu_per_image():
    """The loop queues image after image: the synchronising calls (flagged by the sync
    debug mode) are as many for three images as for one."""
    samples = [quadrant_sample(s)[:2] + (f"s{s}",) for s in range(3)]
    model = _mixing_model().cuda()
    evaluate(model, samples[:1], K, "cuda", "whole")  # lazy initialisation out of the way
    counts = []
    for n in (1, 3):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                evaluate(model, samples[:n], K, "cuda", "whole")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in seen))
    assert counts[0] == counts[1], counts


@pytest.mark.gpu
def test_gpu_evaluate_counts_as_on_cpu(no_tf32):
    samples = [quadrant_sample(s)[:2] + (f"s{s}",) for s in range(3)]
    model = _mixing_model()
    on_cpu = evaluate(model, samples, K, "cpu", "slide", crop=(40, 48), stride=(25, 30))
    on_gpu = evaluate(model.cuda(), samples, K, "cuda", "slide", crop=(40, 48), stride=(25, 30), num_workers=1)
    assert 0 < on_cpu["mIoU"] < 1
    # fp32 convolutions on either side: at most a few pixels with near-tied logits may differ
    diff = torch.tensor(on_gpu["confusion"]) - torch.tensor(on_cpu["confusion"])
    assert diff.abs().sum() <= 4 and on_gpu["pixels"] == on_cpu["pixels"]


class ShapeRecorder(nn.Module):
    """The colour model, recording the input sizes it is given."""

    def __init__(self):
        super().__init__()
        self.conv, self.sizes = colour_model(), []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_inputs_run_unpadded_unless_a_pad_multiple_is_given():
    """As mmseg's whole / slide inference, the image goes to the model at its own size;
    pad_multiple=32 pads each forward's input right / bottom and crops the logits back."""
    image, _, _ = quadrant_sample(0)
    x, model = normalised(image), ShapeRecorder()
    plain = predict_probs(model, x, mode="whole")
    padded = predict_probs(model, x, mode="whole", pad_multiple=32)
    predict_probs(model, x, mode="slide", crop=(40, 48), stride=(25, 30), pad_multiple=32)
    assert model.sizes[:2] == [(H, W), (96, 128)]
    assert set(model.sizes[2:]) == {(64, 64)}
    torch.testing.assert_close(padded, plain, rtol=0, atol=0)   # per-pixel model: padding changes nothing


def test_whole_mode_is_the_softmax_of_the_model_logits():
    """A SeMask model on an odd size: whole mode = softmax of its logits at the input size
    (mmseg's encode_decode + inference), with no padding around it."""
    import semask
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=4, head_channels=16).eval()
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        want = model(x).logits.float().softmax(1)
    torch.testing.assert_close(predict_probs(model, x, mode="whole"), want, rtol=0, atol=0)


@pytest.mark.parametrize("amp", ["fp32", "bfloat16", "", None])
def test_autocast_context_refuses_other_names(amp):
    """autocast_context takes none, bf16 or fp16 only (semask-eval / -infer's --amp choices):
    another name is a ValueError naming it, not a silent fp16 autocast."""
    from semask.train.inference import autocast_context
    with pytest.raises(ValueError, match=re.escape(f"amp must be none, bf16 or fp16, got {amp!r}")):
        autocast_context(amp, "cpu")


def test_a_failure_of_one_process_reaches_the_others_before_the_sum(monkeypatch):
    """Under DDP a process whose share fails re-raises its own error, and a healthy one
    raises 'another process failed (...)' instead of waiting in the confusion matrix's
    all_reduce (simulated here: gather_to_all returns both processes' outcomes)."""
    from semask.data import DataError
    from semask.train import evaluate as evaluate_module
    from semask.train.distributed import DistInfo
    samples = [quadrant_sample(0)[:2] + ("s0",)]
    shared = []

    def gather(obj, info):
        shared.append(obj)
        return [obj, "DataError: label b.png is unreadable"]

    def no_sum(t, info):
        raise AssertionError("all_reduce reached after a failure")

    monkeypatch.setattr(evaluate_module, "gather_to_all", gather)
    monkeypatch.setattr(evaluate_module, "all_reduce_sum", no_sum)
    info = DistInfo(rank=0, world_size=2)
    with pytest.raises(DataError, match=re.escape("another process failed (DataError: label b.png is unreadable)")):
        evaluate(colour_model(), samples, K, "cpu", "whole", info=info)
    assert shared == [None]  # this process's share went through
    with pytest.raises(ValueError, match="predicts 3 classes, the evaluation counts 4"):
        evaluate(colour_model(), samples, K + 1, "cpu", "whole", info=info)
    assert shared[1] == "ValueError: evaluate: the model predicts 3 classes, the evaluation counts 4"


def test_under_ddp_the_bar_names_rank_0s_share(monkeypatch, capsys):
    """Only rank 0 draws a bar, over its share: it says how many of the split's images."""
    from semask.train import evaluate as evaluate_module
    from semask.train.distributed import DistInfo
    samples = [quadrant_sample(s)[:2] + (f"s{s}",) for s in range(5)]
    monkeypatch.setattr(evaluate_module, "gather_to_all", lambda obj, info: [obj, None])
    monkeypatch.setattr(evaluate_module, "all_reduce_sum", lambda t, info: t)
    evaluate(colour_model(), samples, K, "cpu", "whole", info=DistInfo(rank=0, world_size=2), progress=True)
    assert "eval (whole, rank 0's 3 of 5 images)" in capsys.readouterr().err
    evaluate(colour_model(), samples, K, "cpu", "whole", progress=True)
    assert "eval (whole):" in capsys.readouterr().err
