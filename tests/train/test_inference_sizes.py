"""Proposed additions to tests/train/test_eval_modes.py."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semask.train.evaluate import evaluate
from semask.train.inference import predict_probs


class _Recorder(nn.Module):
    """A random 1x1 convolution (logits that vary per pixel), recording its input sizes."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(7)
        self.conv, self.sizes = nn.Conv2d(3, k, 1), []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_resized_inference_upsamples_logits_bilinearly_then_takes_the_softmax():
    """mmseg's whole inference with a test scale: resize the image (bilinear,
    align_corners=False), run the model, resize the *logits* back the same way, then
    softmax. Expected values built here from F.interpolate, independently of the code."""
    model = _Recorder().eval()
    x = torch.randn(1, 3, 30, 41, generator=torch.Generator().manual_seed(0)) * 2
    got = predict_probs(model, x, mode="whole", test_scale=(64, 48))
    # keep-ratio (long 64, short 48) of 30 x 41: factor min(64/41, 48/30) = 1.5609..., -> 47 x 64
    assert model.sizes == [(47, 64)]
    small = F.interpolate(x, size=(47, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = F.interpolate(model.conv(small), size=(30, 41), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, logits.softmax(1), rtol=1e-5, atol=1e-6)


def test_multi_scale_input_sizes():
    """ms_flip sizes: test_scale edges times the ratio (truncated), keep-ratio factor, sides
    rounded half up (mmcv rescale_size); without a test scale the image sides times the
    ratio rounded half up; never below the model's 32-pixel minimum. Hand-computed."""
    x = torch.randn(1, 3, 90, 118)
    model = _Recorder().eval()
    predict_probs(model, x, mode="ms_flip", test_scale=(180, 130), ms_ratios=(0.5, 1.0))
    # r 0.5: edges (90, 65), factor min(90/118, 65/90) = 0.7222 -> 65 x 85.2 -> (65, 85)
    # r 1.0: edges (180, 130), factor min(180/118, 130/90) = 1.4444 -> 130 x 170.4 -> (130, 170)
    assert model.sizes == [(65, 85), (65, 85), (130, 170), (130, 170)]
    model.sizes.clear()
    predict_probs(model, x, mode="ms_flip", ms_ratios=(0.75, 0.25))
    # 0.75: 67.5 -> 68, 88.5 -> 89; 0.25: 22.5 -> 23 and 29.5 -> 30, raised to 32
    assert model.sizes == [(68, 89), (68, 89), (32, 32), (32, 32)]


def test_evaluate_puts_the_model_back_in_its_mode():
    """A mid-training evaluation must leave the model training (dropout, BatchNorm batch
    statistics), and an eval-mode model in eval mode."""
    model = _Recorder()
    label = np.zeros((20, 24), np.uint8)
    samples = [(np.zeros((20, 24, 3), np.uint8), label, "a")]
    model.train()
    evaluate(model, samples, 4, "cpu", "whole")
    assert model.training
    model.eval()
    evaluate(model, samples, 4, "cpu", "whole")
    assert not model.training
