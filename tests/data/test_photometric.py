"""mmseg's PhotoMetricDistortion: HSV conversion and each op against hand-computed values."""
import pytest
import torch
from torchvision import tv_tensors

from semask.data.photometric import PhotoMetricDistortion, hsv_to_rgb, rgb_to_hsv


def pixel(*rgb):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)


@pytest.mark.parametrize("rgb,hsv", [((255, 0, 0), (0, 1, 255)), ((0, 255, 0), (120, 1, 255)),
                                     ((0, 0, 255), (240, 1, 255)), ((255, 128, 0), (30 * 128 / 127.5, 1, 255)),
                                     ((100, 100, 100), (0, 0, 100)), ((0, 0, 0), (0, 0, 0)),
                                     ((200, 100, 50), (20, 0.75, 200))])
def test_hsv_of_known_colours(rgb, hsv):
    torch.testing.assert_close(rgb_to_hsv(pixel(*rgb)).flatten(), torch.tensor(hsv, dtype=torch.float32))


def test_hsv_round_trip():
    x = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0)) * 255
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-3, rtol=0)


def run(coins, uniforms=(), integers=(), image=None):
    """The distortion with its draws given: coins in order (brightness, contrast first?,
    [contrast], saturation, hue, [contrast]), uniform values and hue steps."""
    t = PhotoMetricDistortion()
    coins, uniforms, integers = iter(coins), iter(uniforms), iter(integers)
    t._coin = lambda: next(coins)
    t._uniform = lambda lo, hi: next(uniforms)
    t._integer = lambda lo, hi: (lo, hi) == (-18, 18) and next(integers)
    mask = torch.arange(4).view(2, 2)
    out, m = t(tv_tensors.Image(image), mask)
    assert m is mask and out.dtype == torch.uint8 and isinstance(out, tv_tensors.Image)
    return out.as_subclass(torch.Tensor)


def test_brightness_adds_then_clips_and_truncates():
    img = torch.tensor([[[20, 250]], [[0, 5]], [[128, 255]]], dtype=torch.uint8)
    out = run([True, True, False, False, False], [10.7], image=img)
    assert out.tolist() == [[[30, 255]], [[10, 15]], [[138, 255]]]
    out = run([True, True, False, False, False], [-32.0], image=img)
    assert out.tolist() == [[[0, 218]], [[0, 0]], [[96, 223]]]


def test_contrast_multiplies_before_or_after_the_hsv_ops():
    img = torch.tensor([[[100, 200]], [[40, 3]], [[0, 255]]], dtype=torch.uint8)
    first = run([False, True, True, False, False], [1.5], image=img)
    last = run([False, False, False, False, True], [1.5], image=img)
    assert first.tolist() == last.tolist() == [[[150, 255]], [[60, 4]], [[0, 255]]]


def test_saturation_scales_s_in_hsv():
    img = pixel(200, 100, 50).to(torch.uint8)
    grey = run([False, True, False, True, False], [0.0], image=img)
    assert grey.flatten().tolist() == [200, 200, 200]        # S 0: every channel = V
    full = run([False, True, False, True, False], [1.5], image=img)
    assert full.flatten().tolist() == [200, 67, 0]  # S 0.75 -> 1 (clipped): min 0, G = 200 * 20 / 60


def test_hue_shifts_by_two_degree_steps():
    red = pixel(255, 0, 0).to(torch.uint8)
    assert run([False, True, False, False, True], integers=[15], image=red).flatten().tolist() == [255, 128, 0]
    assert run([False, True, False, False, True], integers=[-18], image=red).flatten().tolist() == [255, 0, 153]


def test_brightness_range_is_that_of_mmseg():
    """Over many draws a flat image of 20 moves by up to +-32 (mmseg); torchvision's
    ColorJitter(brightness=0.125), used before, moved it by at most 3."""
    torch.manual_seed(0)
    t = PhotoMetricDistortion(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=1)
    img = tv_tensors.Image(torch.full((3, 2, 2), 20, dtype=torch.uint8))
    values = {int(t(img, None)[0][0, 0, 0]) for _ in range(300)}
    assert min(values) == 0 and max(values) >= 50 and 20 in values
