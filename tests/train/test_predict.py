"""semask.predict: one RGB image (array, PIL image or file) -> class ids at its size."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import semask

MEAN = torch.tensor([123.675, 116.28, 103.53])  # mmseg's img_norm_cfg (RGB, 0-255), by hand
STD = torch.tensor([58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return semask.SeMaskSwin("micro", num_classes=5, head_channels=8).eval()


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)


def _by_hand(model, rgb):
    """Logits of the normalised image, computed here: [K, H, W]."""
    x = (torch.from_numpy(rgb).float() - MEAN) / STD
    with torch.no_grad():
        return model(x.permute(2, 0, 1)[None]).logits[0]


def test_ids_and_probabilities_of_an_array_are_the_normalised_forward(model, rgb):
    logits = _by_hand(model, rgb)
    ids = semask.predict(model, rgb)
    assert ids.shape == (45, 61) and ids.dtype == torch.int64
    assert torch.equal(ids, logits.argmax(0))
    probs = semask.predict(model, torch.from_numpy(rgb), probabilities=True)
    torch.testing.assert_close(probs, logits.softmax(0), rtol=1e-5, atol=1e-6)


def test_a_file_is_read_as_displayed(model, rgb, tmp_path):
    """A PNG with EXIF orientation 6 (turn 90 degrees clockwise to display) stores the
    image turned counter-clockwise; predict reads it turned back, as a viewer shows it."""
    stored = Image.fromarray(np.rot90(rgb, k=1).copy())  # 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.png", exif=exif.tobytes())
    for image in (tmp_path / "turned.png", str(tmp_path / "turned.png"), Image.open(tmp_path / "turned.png")):
        assert torch.equal(semask.predict(model, image), _by_hand(model, rgb).argmax(0))


def test_slide_with_a_crop_covering_the_image_is_whole(model, rgb):
    assert torch.equal(semask.predict(model, rgb, mode="slide", crop=(64, 64), stride=(32, 32)),
                       semask.predict(model, rgb))


def test_a_training_mode_model_is_run_in_eval_mode_and_left_training(rgb):
    torch.manual_seed(0)
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=8, drop_path_rate=0.3)
    model.train()
    ids = semask.predict(model, rgb)
    assert model.training and model.decode_head.training
    assert torch.equal(ids, _by_hand(model.eval(), rgb).argmax(0))


@pytest.mark.parametrize("image,named", [
    (np.zeros((8, 8, 3), np.float32), "float32 array (8, 8, 3)"),
    (np.zeros((3, 8, 8), np.uint8), "uint8 array (3, 8, 8)"),
    ([[0, 1]], "list")])
def test_other_inputs_are_refused_by_name(model, image, named):
    with pytest.raises(TypeError, match=r"\[H, W, 3\] uint8 RGB array, got " + re.escape(named)):
        semask.predict(model, image)


def test_unknown_mode_is_named(model, rgb):
    with pytest.raises(ValueError, match="unknown inference mode 'sliding'"):
        semask.predict(model, rgb, mode="sliding")


def test_a_config_gives_semask_infers_settings(model, rgb):
    """With a run's config, predict resizes to its test_scale and pads as semask-infer
    does: equal to the normalised image resized by hand to the keep-ratio size, padded
    to 32, the logits cropped and resized back; arguments given win over the config."""
    from semask.train.config import load_config
    cfg = load_config("synthetic_cpu", test_scale=[80, 40], eval_pad_multiple=32)
    x = ((torch.from_numpy(rgb).float() - MEAN) / STD).permute(2, 0, 1)[None]
    # keep-ratio (long 80, short 40) of 45 x 61: scale min(80 / 61, 40 / 45) -> 40 x 54
    scale = min(80 / 61, 40 / 45)
    size = (int(45 * scale + 0.5), int(61 * scale + 0.5))
    small = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    padded = torch.nn.functional.pad(small, (0, 64 - size[1], 0, 64 - size[0]))
    with torch.no_grad():
        logits = model(padded).logits[:, :, :size[0], :size[1]]
    want = torch.nn.functional.interpolate(logits, size=(45, 61), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(semask.predict(model, rgb, cfg, probabilities=True), want.softmax(0),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(semask.predict(model, rgb, cfg, test_scale=(61, 45), pad_multiple=1),
                       semask.predict(model, rgb))


def test_none_turns_off_a_configs_resize_and_padding(model, rgb):
    """test_scale=None / pad_multiple=None override a config's resize and padding (the
    model then sees the image at its own size, as without a config); None for mode,
    crop, stride or ms_ratios, which have no off, leaves the config's."""
    from semask.train.config import load_config
    cfg = load_config("synthetic_cpu", test_scale=[80, 40], eval_pad_multiple=32, eval_mode="slide",
                      slide_crop=[32, 32], slide_stride=[16, 16])
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        plain = semask.predict(model, rgb, cfg, mode="whole", test_scale=None, pad_multiple=None)
        assert seen == [(45, 61)]
        assert torch.equal(plain, semask.predict(model, rgb))
        seen.clear()
        semask.predict(model, rgb, cfg, mode=None, crop=None, stride=None, test_scale=None, pad_multiple=None)
        assert seen and all(shape == (32, 32) for shape in seen)  # the config's slide crops, unpadded
    finally:
        hook.remove()


def test_flipped_views_bf16_models_and_plain_callables(model, rgb):
    """cv2's BGR -> RGB view (negative strides) reads as its copy; a bf16 model gets a bf16
    image; a callable without parameters runs on the CPU; crop / stride take one int."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    assert torch.equal(semask.predict(model, bgr[..., ::-1]), semask.predict(model, rgb))
    half = semask.SeMaskSwin("micro", num_classes=5, head_channels=8).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    ids = semask.predict(half, rgb)
    agree = (ids == semask.predict(model, rgb)).float().mean()
    assert agree > 0.9, agree  # bf16 rounding flips the argmax of near ties only
    assert torch.equal(semask.predict(lambda x: model(x), rgb, mode="slide", crop=32, stride=16),
                       semask.predict(model, rgb, mode="slide", crop=(32, 32), stride=(16, 16)))


def test_the_modes_of_every_module_are_restored():
    """A training model with frozen BatchNorms (mmseg's norm_eval) keeps them frozen."""
    model = semask.SeMaskSwin("micro", num_classes=5, head_channels=8).train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in frozen:
        m.eval()
    before = [m.training for m in model.modules()]
    semask.predict(model, np.zeros((33, 40, 3), np.uint8))
    assert [m.training for m in model.modules()] == before and frozen and model.training


def test_predict_is_listed_by_dir():
    assert "predict" in dir(semask) and "SeMaskSwin" in dir(semask)
