"""Loading official-layout Swin / SeMask checkpoints and our safetensors files."""
import os
import re
import stat

import pytest
import torch
import torch.nn.functional as F

import semask
from semask.models.checkpoint import resize_relative_position_table


def micro(**kw):
    kw.setdefault("num_classes", 11)
    return semask.SeMaskSwin("micro", head_channels=16, **kw).eval()


def randomised(model):
    """``model`` with noise on every parameter: no zero or one left from the init (LayerNorm
    biases, gammas), so a tensor loaded in the wrong order shows."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def official_imagenet_dict(model):
    """Reverse mapping: our backbone weights in the layout of an official Swin ImageNet
    classification checkpoint ({"model": ...}, no prefix, attn_mask, norm, head)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone.") and "semantic_layer" not in k and not re.match(r"backbone\.norm\d", k):
            sd[k[len("backbone."):]] = v.clone()
    for i, layer in enumerate(model.backbone.layers):
        for j, blk in enumerate(layer.blocks):
            if blk.attn.shift:
                w = blk.attn.window
                sd[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, w * w, w * w)
    last = model.backbone.channels[-1]
    sd.update({"norm.weight": torch.ones(last), "norm.bias": torch.zeros(last),
               "head.weight": torch.randn(1000, last), "head.bias": torch.zeros(1000)})
    return {"model": sd}


def test_official_semask_checkpoint_loads_strictly(tmp_path):
    src, dst = micro(), micro()
    path = tmp_path / "semask_official.pth"
    torch.save({"meta": {"iter": 80000}, "state_dict": src.state_dict()}, path)
    report = semask.load_checkpoint(dst, path)
    assert report.source == "semask_mmseg" and not report.missing and not report.unexpected
    assert not report.dropped and report.recomputed
    assert all(k.endswith("relative_position_index") for k in report.recomputed)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(src(x).logits, dst(x).logits)


def test_official_swin_imagenet_checkpoint_loads_into_backbone(tmp_path):
    src, dst = micro(), micro()
    path = tmp_path / "swin_imagenet.pth"
    torch.save(official_imagenet_dict(src), path)
    report = semask.load_checkpoint(dst, path)
    assert report.source == "swin_imagenet" and not report.unexpected
    assert {"norm.weight", "norm.bias", "head.weight", "head.bias"} <= set(report.dropped)
    assert any(k.endswith("attn_mask") for k in report.recomputed)
    expected_missing = {k for k in src.state_dict() if ("semantic_layer" in k or k.startswith("decode_head.")
                        or re.match(r"backbone\.norm\d", k)) and not k.endswith("num_batches_tracked")}
    assert set(report.missing) == expected_missing
    dst.load_state_dict({k: src.state_dict()[k] for k in report.missing}, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x).logits, dst(x).logits)


def test_timm_layout_swin_loads_into_backbone():
    """timm >= 0.9 numbers patch merging as the start of the next stage (layers.{i+1}.
    downsample) and names the classifier head.fc; its index buffers are computed here.
    The same weights in that layout give the same model as the official layout."""
    src, dst = micro(), micro()
    official = official_imagenet_dict(src)["model"]
    timm = {}
    for key, value in official.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m:
            key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        elif key.startswith("head."):
            key = "head.fc." + key[len("head."):]
        elif key.endswith("attn_mask"):
            continue
        timm[key] = value
    for i, layer in enumerate(src.backbone.layers):
        for j in range(len(layer.blocks)):
            timm[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    report = semask.load_checkpoint(dst, timm)
    assert report.source == "timm_swin (backbone)" and not report.unexpected
    merges = sum(1 for k in official if "downsample" in k)
    assert merges and len(report.converted) == merges
    assert all(re.match(r"backbone\.layers\.[0-2]\.downsample\.", k) for k in report.converted)
    dst.load_state_dict({k: src.state_dict()[k] for k in report.missing}, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x).logits, dst(x).logits)


def _swin2mmseg(official: dict) -> dict:
    """mmseg's swin2mmseg converter, stated from its documented renames and reorders
    (tools/model_converters/swin2mmseg.py): official Swin -> mmseg's SwinTransformer layout."""
    def reduction_order(x):  # correct_unfold_reduction_order
        out_channel, in_channel = x.shape
        return x.reshape(out_channel, 4, in_channel // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(
            out_channel, in_channel)

    def norm_order(x):  # correct_unfold_norm_order
        return x.reshape(4, x.shape[0] // 4)[[0, 2, 1, 3], :].transpose(0, 1).reshape(x.shape[0])

    out = {}
    for k, v in official.items():
        if k.startswith("head") or k.endswith("attn_mask"):
            continue
        if k.startswith("layers"):
            k = (k.replace("attn.", "attn.w_msa.").replace("mlp.fc1.", "ffn.layers.0.0.")
                 .replace("mlp.fc2.", "ffn.layers.1.").replace("layers", "stages", 1))
            if ".downsample.reduction." in k:
                v = reduction_order(v)
            elif ".downsample.norm." in k:
                v = norm_order(v)
        elif k.startswith("patch_embed"):
            k = k.replace("proj", "projection")
        out[k] = v
    return out


@pytest.mark.parametrize("whole_model", [False, True])
def test_mmseg_swin_layout_loads_into_backbone(whole_model):
    """A pretrained file of mmseg's own Swin (bare dict, swin2mmseg's output) or the backbone
    of an mmseg model file (backbone.stages..., another decode head) gives the same backbone
    as the official layout it was converted from."""
    src, dst = randomised(micro()), micro()
    mmseg = _swin2mmseg(official_imagenet_dict(src)["model"])
    assert any(".w_msa." in k for k in mmseg) and any(k.startswith("stages.0.downsample.") for k in mmseg)
    for i, layer in enumerate(src.backbone.layers):
        for j in range(len(layer.blocks)):
            mmseg[f"stages.{i}.blocks.{j}.attn.w_msa.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    if whole_model:  # an UperNet-Swin file: the backbone's out norms, a head of its own
        mmseg = {"backbone." + k: v for k, v in mmseg.items() if not k.startswith("norm.")}
        mmseg.update({f"backbone.norm{i}.{p}": src.state_dict()[f"backbone.norm{i}.{p}"]
                      for i in range(4) for p in ("weight", "bias")})
        mmseg["decode_head.bottleneck.conv.weight"] = torch.zeros(8, 8, 3, 3)
        report = semask.load_checkpoint(dst, {"state_dict": mmseg}, strict=False)
        assert report.source == "mmseg_swin" and report.unexpected == ["decode_head.bottleneck.conv.weight"]
    else:
        report = semask.load_checkpoint(dst, mmseg)
        assert report.source == "mmseg_swin (backbone)" and not report.unexpected
    merges = [k for k in report.converted if ".downsample." in k]
    assert len(merges) == 3 * 3   # reduction weight, norm weight and bias of stages 0-2
    assert all(not (".w_msa." in k or ".ffn." in k or "stages" in k) for k in dst.state_dict())
    official = official_imagenet_dict(src)["model"]   # the renamed keys, buffers aside
    assert sorted(report.converted) == sorted("backbone." + k for k in official if k.startswith(
        ("layers.", "patch_embed.proj.")) and not k.endswith(("relative_position_index", "attn_mask")))
    dst.load_state_dict({k: src.state_dict()[k] for k in report.missing}, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x).logits, dst(x).logits)


def test_mmseg_layout_mixed_with_official_names():
    """A dict of mmseg's blocks beside official-named patch merging: only mmseg's own names
    are reordered (same logits); the same tensor under both names is refused."""
    src, dst = randomised(micro()), micro()
    official = official_imagenet_dict(src)["model"]
    mmseg = _swin2mmseg(official)
    half = {k: v for k, v in mmseg.items() if ".downsample." not in k}
    half.update({k: v for k, v in official.items() if ".downsample." in k})
    report = semask.load_checkpoint(dst, half)
    dst.load_state_dict({k: src.state_dict()[k] for k in report.missing}, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x).logits, dst(x).logits)
    with pytest.raises(ValueError, match="layers.0.downsample.norm.weight twice"):
        semask.load_checkpoint(micro(), {**mmseg, **{k: v for k, v in official.items() if ".downsample." in k}})


def test_mmseg_patch_merging_order_by_unfold():
    """mmseg's PatchMerging is nn.Unfold(2, stride 2) -> norm -> reduction: its weights,
    reordered, make ours compute the same (channels of Unfold: c * 4 + 2 * dy + dx)."""
    from semask.models.checkpoint import unfold_to_cat_order
    from semask.models.swin import PatchMerging
    torch.manual_seed(0)
    C = 5
    x = torch.randn(2, 6, 4, C, dtype=torch.float64)                  # [B, H, W, C]
    norm = torch.nn.LayerNorm(4 * C).double()
    reduction = torch.nn.Linear(4 * C, 2 * C, bias=False).double()
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)   # [B, L, 4C]
    want = reduction(norm(unfolded)).reshape(2, 3, 2, 2 * C)
    ours = PatchMerging(C).double()
    ours.norm.weight.data, ours.norm.bias.data = unfold_to_cat_order(norm.weight), unfold_to_cat_order(norm.bias)
    ours.reduction.weight.data = unfold_to_cat_order(reduction.weight)
    with torch.no_grad():
        assert torch.allclose(ours(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mmseg", [False, True])
def test_window_7_table_resized_to_window_12_keeps_centre(mmseg):
    src, dst = micro(), micro(window_size=12)
    official = official_imagenet_dict(src)
    report = semask.load_checkpoint(dst, _swin2mmseg(official["model"]) if mmseg else official)
    tables = [k for k in report.converted if k.endswith("relative_position_bias_table")]
    assert len(tables) == 5
    for key in tables:
        old, new = src.state_dict()[key], dst.state_dict()[key]
        assert new.shape == (23 * 23, old.shape[1])
        torch.testing.assert_close(new.view(23, 23, -1)[11, 11], old.view(13, 13, -1)[6, 6])


def test_resize_is_identity_at_same_size():
    table = torch.randn(13 * 13, 3)
    torch.testing.assert_close(resize_relative_position_table(table, 7), table)


def test_safetensors_roundtrip_is_atomic(tmp_path):
    src, dst = micro(), micro()
    path = semask.save_checkpoint(src, tmp_path / "m.safetensors", {"variant": "micro"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    report = semask.load_checkpoint(dst, path)
    assert report.source == "safetensors" and not report.missing
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    model = semask.SeMaskSwin("micro", num_classes=11, head_channels=16, pretrained=str(path)).eval()
    assert torch.equal(model.decode_head.conv_seg.weight, src.decode_head.conv_seg.weight)


def test_checkpoint_is_on_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """The new file is flushed before the rename and the folder after it: a crash
    in between leaves the old file or the whole new one, never an empty one."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    path = semask.save_checkpoint(micro(), tmp_path / "m.safetensors")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == str(path) and events[2][1] == str(tmp_path)


def test_bare_and_ddp_prefixed_state_dicts():
    src, dst = micro(), micro()
    report = semask.load_checkpoint(dst, {"module." + k: v for k, v in src.state_dict().items()})
    assert report.source == "state_dict" and not report.missing
    assert torch.equal(dst.backbone.patch_embed.proj.weight, src.backbone.patch_embed.proj.weight)


def test_missing_and_corrupt_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        semask.load_checkpoint(micro(), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        semask.load_checkpoint(micro(), bad)
    with pytest.raises(ValueError, match="no state dict"):
        semask.load_checkpoint(micro(), {"epoch": 3})


def unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_other_architecture_raises_and_writes_nothing():
    dst = micro()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="does not match this architecture"):
        semask.load_checkpoint(dst, semask.SeMaskSwin("micro", num_classes=11, head_channels=32).state_dict())
    assert unchanged(dst, before)


def test_bias_table_that_is_no_window_grid_raises():
    """A table of the right head count but 10 rows (no (2w - 1)^2 grid) is a mismatch,
    not something to resize."""
    dst = micro()
    sd = {k: v.clone() for k, v in dst.state_dict().items()}
    key = next(k for k in sd if k.endswith("relative_position_bias_table"))
    sd[key] = torch.zeros(10, sd[key].shape[1])
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=f"(?s)does not match this architecture.*{re.escape(key)}: checkpoint .10, 1."):
        semask.load_checkpoint(dst, sd)
    assert unchanged(dst, before)


def test_other_depth_or_width_raises():
    with torch.device("meta"):
        tiny_sd = semask.SeMaskSwin("tiny", num_classes=11).state_dict()
    dst = micro()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="does not match this architecture|does not own"):
        semask.load_checkpoint(dst, tiny_sd)
    assert unchanged(dst, before)


def test_other_number_of_classes():
    src, dst = micro(num_classes=150), micro(num_classes=19)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(semask.CheckpointMismatch, match=r"number of classes.*skip_mismatched(?s:.*)"
                       r"mlp_cls_q\.weight: checkpoint \(150, 32\) vs model \(19, 32\)") as caught:
        semask.load_checkpoint(dst, src.state_dict())
    assert set(caught.value.keys) <= set(dst.state_dict()) and "decode_head.conv_seg.weight" in caught.value.keys
    assert unchanged(dst, before)
    report = semask.load_checkpoint(dst, src.state_dict(), skip_mismatched=True)
    assert report.skipped and all(("conv_seg" in k or "mlp_cls" in k) for k in report.skipped)
    assert len(report.skipped) == 2 + 4 * 4
    assert torch.equal(dst.backbone.patch_embed.proj.weight, src.backbone.patch_embed.proj.weight)
    assert torch.equal(dst.decode_head.conv_seg.weight, before["decode_head.conv_seg.weight"])


def test_full_checkpoint_missing_tensors_is_an_error_unless_not_strict():
    src, dst = micro(), micro()
    sd = {k: v for k, v in src.state_dict().items() if "semantic_layer" not in k}
    with pytest.raises(ValueError, match="lacks"):
        semask.load_checkpoint(dst, sd)
    report = semask.load_checkpoint(dst, sd, strict=False)
    assert report.missing and all("semantic_layer" in k for k in report.missing)


def test_checkpoint_without_batchnorm_counters_loads_strictly():
    """num_batches_tracked is unused with a fixed momentum (stripped or converted files lack it)."""
    src, dst = micro(), micro()
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(sd) < len(src.state_dict())
    report = semask.load_checkpoint(dst, sd)
    assert not report.missing
    assert torch.equal(dst.decode_head.conv_seg.weight, src.decode_head.conv_seg.weight)


def test_checkpoint_with_objects_weights_only_refuses_says_so(tmp_path):
    """An mmcv 'meta' with numpy scalars (newer eval hooks' best_score) is not 'corrupt'."""
    import numpy as np
    path = tmp_path / "with_meta.pth"
    torch.save({"state_dict": micro().state_dict(), "meta": {"best_score": np.float64(0.5)}}, path)
    with pytest.raises(ValueError, match="holds objects torch.load"):
        semask.load_checkpoint(micro(), path)


def test_backbone_checkpoint_lacking_swin_blocks_is_an_error_unless_not_strict():
    """A Swin ImageNet file of a shallower variant (stage 2 with fewer blocks) leaves blocks
    random: strict loading refuses it, naming them; the constructor loads strictly too."""
    src, dst = micro(), micro()
    ckpt = official_imagenet_dict(src)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("layers.2.blocks.1.")}
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)lacks \d+ Swin backbone tensors.*layers\.2\.blocks\.1\."):
        semask.load_checkpoint(dst, ckpt)
    assert unchanged(dst, before)
    report = semask.load_checkpoint(dst, ckpt, strict=False)
    assert {k for k in report.missing if k.startswith("backbone.layers.2.blocks.1.")}
    with pytest.raises(ValueError, match="Swin backbone tensors"):
        semask.SeMaskSwin("micro", num_classes=11, head_channels=16, pretrained=ckpt)


@pytest.mark.parametrize("ckpt", [{"state_dict": {}}, {"model": {"head.weight": torch.zeros(2, 3),
                                                                   "norm.bias": torch.zeros(3)}}])
def test_checkpoint_with_no_tensor_of_the_model_raises(ckpt):
    with pytest.raises(ValueError, match="holds no tensor of this model"):
        semask.load_checkpoint(micro(), ckpt, strict=False)


def test_constructor_keeps_the_load_report():
    src = micro()
    assert src.load_report is None
    model = semask.SeMaskSwin("micro", num_classes=11, head_channels=16,
                              pretrained=official_imagenet_dict(src))
    assert model.load_report.source == "swin_imagenet" and model.load_report.loaded
    assert all("semantic_layer" in k or k.startswith("decode_head.") or re.match(r"backbone\.norm\d", k)
               for k in model.load_report.missing)


def test_compiled_and_wrapped_models_save_and_load_plain_keys(tmp_path):
    """torch.compile's ``_orig_mod.`` (and DDP's ``module.``) never reach a file, and files or
    dicts holding them load, also into a compiled model."""
    src, dst = micro(), micro()
    path = semask.save_checkpoint(torch.compile(src), tmp_path / "c.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(src.state_dict())
    report = semask.load_checkpoint(torch.compile(dst), path)
    assert not report.missing and torch.equal(dst.backbone.patch_embed.proj.weight,
                                              src.backbone.patch_embed.proj.weight)
    prefixed = {"module._orig_mod." + k: v for k, v in src.state_dict().items()}
    assert not semask.load_checkpoint(micro(), prefixed).missing


def test_saved_files_follow_the_umask(tmp_path):
    """Checkpoints get the permissions open() would give (0666 less the umask), not
    mkstemp's 0600, so other accounts of a shared runs folder can read them."""
    from semask.train.state import STATE_NAME, WEIGHTS_NAME, save_training_state

    model = micro()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    old = os.umask(0o022)
    try:
        save_training_state(tmp_path, model, opt, sched, None, 3, {})
    finally:
        os.umask(old)
    for name in (WEIGHTS_NAME, STATE_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS_NAME, STATE_NAME])


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        semask.load_checkpoint(micro(), tmp_path)


def _keys_cubic_resize(grid, new: int):
    """Independent bicubic resize of the last two axes of a float64 numpy array, as
    F.interpolate(mode="bicubic", align_corners=False): half-pixel centres, Keys' cubic
    convolution with a = -0.75, borders clamped (one axis at a time)."""
    import numpy as np

    def weights(t):
        a = -0.75
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    def axis(x, ax):
        old = x.shape[ax]
        out = np.zeros(x.shape[:ax] + (new,) + x.shape[ax + 1:])
        for i in range(new):
            src = (i + 0.5) * old / new - 0.5
            base = int(np.floor(src))
            acc = 0
            for tap in range(base - 1, base + 3):
                acc = acc + weights(src - tap) * np.take(x, min(max(tap, 0), old - 1), axis=ax)
            out[(slice(None),) * ax + (i,)] = acc
        return out

    return axis(axis(grid, grid.ndim - 2), grid.ndim - 1)


def test_table_resize_is_bicubic_with_half_pixel_centres():
    """Window 7 -> 12 (13 x 13 -> 23 x 23 grid), every entry against an independent bicubic
    (the centre alone holds for align_corners True as well)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(13 * 13, 3, generator=g, dtype=torch.float64)
    grid = table.T.reshape(3, 13, 13).numpy()
    want = torch.from_numpy(_keys_cubic_resize(grid, 23)).reshape(3, -1).T
    torch.testing.assert_close(resize_relative_position_table(table, 12), want,
                               rtol=1e-5, atol=1e-5)  # resized in fp32


def test_state_dict_keys_are_the_official_semask_layout():
    """The keys of SeMask-T FPN (K 150) against the official mmseg layout written out from
    SEMASK_SPEC.md and mmseg's FPNHead (scale head i: ConvModule 'conv' + 'bn' at every
    second index when it upsamples), not from the model: a renamed attribute would load
    official files only through the converter's guesswork."""
    depths = (2, 2, 6, 2)
    want = {f"backbone.patch_embed.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
    for i, depth in enumerate(depths):
        pre = f"backbone.layers.{i}"
        for j in range(depth):
            blk = f"{pre}.blocks.{j}"
            want |= {f"{blk}.{m}.{p}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj",
                                                 "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")}
            want |= {f"{blk}.attn.relative_position_bias_table",
                     f"{blk}.attn.relative_position_index"}
        inj = f"{pre}.semantic_layer.class_injection.0"
        want |= {f"{inj}.{m}.{p}" for m in ("mlp_cls_q", "mlp_cls_k", "mlp_v", "mlp_res")
                 for p in ("weight", "bias")}
        want |= {f"{inj}.gamma", f"{pre}.semantic_layer.norm1.weight",
                 f"{pre}.semantic_layer.norm1.bias", f"backbone.norm{i}.weight",
                 f"backbone.norm{i}.bias"}
        if i < 3:
            want |= {f"{pre}.downsample.reduction.weight", f"{pre}.downsample.norm.weight",
                     f"{pre}.downsample.norm.bias"}
    for i, convs in enumerate((1, 1, 2, 3)):
        for n in range(convs):
            idx = 2 * n if i > 0 else 0
            base = f"decode_head.scale_heads.{i}.{idx}"
            want |= {f"{base}.conv.weight"} | {f"{base}.bn.{p}" for p in (
                "weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    want |= {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    sd = semask.SeMaskSwin("tiny", num_classes=150).state_dict()
    assert set(sd) == want, (sorted(set(sd) - want)[:5], sorted(want - set(sd))[:5])
    assert sd["backbone.layers.0.semantic_layer.class_injection.0.gamma"].shape == (1,)
    assert sd["backbone.layers.1.downsample.reduction.weight"].shape == (384, 768)
    assert sd["backbone.layers.2.blocks.0.attn.relative_position_bias_table"].shape == (169, 12)
    assert sd["decode_head.conv_seg.weight"].shape == (150, 256, 1, 1)


def test_semask_weights_into_plain_swin_need_not_strict():
    """A SeMask checkpoint holds semantic layers a plain Swin lacks: strict loading refuses
    them by name; strict=False loads every other tensor and reports them as unexpected."""
    src, dst = micro(), micro(semantic=False)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)does not own.*strict=False skips them.*semantic_layer"):
        semask.load_checkpoint(dst, src.state_dict())
    assert unchanged(dst, before)
    report = semask.load_checkpoint(dst, src.state_dict(), strict=False)
    assert report.unexpected and all(".semantic_layer." in k for k in report.unexpected)
    assert not report.missing
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # no semantic layer: the plain Swin's logits differ from SeMask's
        assert not torch.allclose(dst(x).logits, src(x).logits)


def test_whole_model_under_an_owner_prefix_loads():
    """A Lightning module keeps the model as ``self.model``: its checkpoint's keys are
    ``model.backbone.*``; they load as the model's own (same logits)."""
    src, dst = micro(), micro()
    ckpt = {"state_dict": {"model." + k: v for k, v in src.state_dict().items()}, "epoch": 3}
    report = semask.load_checkpoint(dst, ckpt)
    assert not report.missing and not report.unexpected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dst(x).logits, src(x).logits)


def test_owner_prefix_is_kept_when_other_modules_share_the_file():
    """Keys under two owners are no whole model: nothing is stripped, nothing loads."""
    src = micro()
    sd = {"model." + k: v for k, v in src.state_dict().items()}
    sd["teacher.backbone.patch_embed.proj.weight"] = src.backbone.patch_embed.proj.weight
    with pytest.raises(ValueError, match="does not own"):
        semask.load_checkpoint(micro(), sd)


@pytest.mark.parametrize("rows", [16, 4])
def test_bias_table_of_an_even_square_is_no_window_grid(rows):
    """(2w - 1)^2 is an odd square (1, 9, 25, 49, 169, ...): a table of 16 (4 x 4) or 4
    (2 x 2) rows is square but no window's grid, so it is a mismatch, not resized."""
    dst = micro()
    sd = {k: v.clone() for k, v in dst.state_dict().items()}
    key = next(k for k in sd if k.endswith("relative_position_bias_table"))
    sd[key] = torch.zeros(rows, sd[key].shape[1])
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=f"(?s)does not match this architecture.*{re.escape(key)}: checkpoint .{rows}, "):
        semask.load_checkpoint(dst, sd)
    assert unchanged(dst, before)


def _owned_by_two_modules(sd):
    """model.* plus an EMA's update count under ema.* (no key collides once stripped)."""
    return {**{"model." + k: v for k, v in sd.items()}, "ema.backbone.num_updates": torch.tensor(3)}


def _owner_with_a_bare_key(sd):
    """model.* plus a tensor named "model" itself: not every key lies under "model."."""
    return {**{"model." + k: v for k, v in sd.items()}, "model": torch.zeros(1)}


def _swin_imagenet_under_an_owner(sd):
    """A backbone-only (Swin ImageNet) dict kept as encoder.*: no whole model under it."""
    return {"encoder." + k: v for k, v in official_imagenet_dict(micro())["model"].items()}


@pytest.mark.parametrize("layout", [_owned_by_two_modules, _owner_with_a_bare_key, _swin_imagenet_under_an_owner])
def test_owner_prefix_is_stripped_only_from_a_whole_model_holding_every_key(layout):
    """_strip_owner_prefix's rule: one prefix shared by every key, and backbone.* /
    decode_head.* under it. Otherwise the keys stay as they are, none of them is the
    model's, and even strict=False has nothing to load."""
    with pytest.raises(ValueError, match="holds no tensor of this model"):
        semask.load_checkpoint(micro(), layout(micro().state_dict()), strict=False)


def test_head_only_checkpoint_is_in_the_models_own_layout():
    """decode_head.* keys are a whole model's keys (MODEL_PREFIXES): a head-only file loads
    into the head with strict=False, the backbone reported missing; strict refuses it."""
    src, dst = micro(), micro()
    head = {k: v for k, v in src.state_dict().items() if k.startswith("decode_head.")}
    with pytest.raises(ValueError, match="lacks"):
        semask.load_checkpoint(dst, head)
    report = semask.load_checkpoint(dst, head, strict=False)
    assert not report.unexpected and report.loaded
    assert set(report.missing) == {k for k in dst.state_dict() if k.startswith("backbone.")
                                   and not k.endswith(("relative_position_index", "attn_mask", "num_batches_tracked"))}
    for k, v in head.items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_full_checkpoint_with_an_auxiliary_head_is_still_a_whole_model():
    """mmseg files of UperNet-style configs add auxiliary_head.* beside backbone.* and
    decode_head.*: still the model's own layout (not a backbone-only dict), so strict names
    the extra tensors and strict=False loads every other one."""
    src, dst = micro(), micro()
    sd = {**src.state_dict(), "auxiliary_head.conv_seg.weight": torch.zeros(11, 8, 1, 1),
          "auxiliary_head.conv_seg.bias": torch.zeros(11)}
    with pytest.raises(ValueError, match=r"(?s)does not own.*[\s,:]auxiliary_head\.conv_seg"):
        semask.load_checkpoint(dst, sd)
    report = semask.load_checkpoint(dst, sd, strict=False)
    assert sorted(report.unexpected) == ["auxiliary_head.conv_seg.bias", "auxiliary_head.conv_seg.weight"]
    assert not report.missing and report.source == "state_dict"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dst(x).logits, src(x).logits)


def test_mismatch_error_survives_pickle_and_copy():
    """A CheckpointMismatch raised in another process (a DataLoader worker, a spawned
    evaluation) is pickled: it comes back whole, message and fields."""
    import copy
    import pickle
    with pytest.raises(semask.CheckpointMismatch) as caught:
        semask.load_checkpoint(micro(semantic=False), micro().state_dict())
    for back in (pickle.loads(pickle.dumps(caught.value)), copy.copy(caught.value)):
        assert type(back) is semask.CheckpointMismatch and str(back) == str(caught.value)
        assert back.option == "strict=False" and back.keys == caught.value.keys


def test_mismatch_message_shows_ten_keys_then_how_many_more():
    """The message lists the first ten of the keys (or lines), then '... and N more'; ten
    or fewer: all, with no count."""
    keys = [f"backbone.k{i}" for i in range(11)]
    eleven = semask.CheckpointMismatch("checkpoint lacks 11 tensors", "strict=False", "leaves them at their init",
                                       keys)
    assert str(eleven) == ("checkpoint lacks 11 tensors; strict=False leaves them at their init:\n  "
                           + "\n  ".join(keys[:10]) + "\n  ... and 1 more")
    ten = semask.CheckpointMismatch("problem", None, "", keys[:10])
    assert str(ten) == "problem:\n  " + "\n  ".join(keys[:10])


def test_class_count_mismatch_survives_pickle_with_its_shape_lines():
    """The class-count refusal lists 'key: checkpoint shape vs model shape' lines (``lines``);
    pickled (another process re-raising it) it keeps them, not the bare keys."""
    import pickle
    with pytest.raises(semask.CheckpointMismatch) as caught:
        semask.load_checkpoint(micro(num_classes=19), micro(num_classes=150).state_dict())
    back = pickle.loads(pickle.dumps(caught.value))
    assert str(back) == str(caught.value)
    assert re.search(r"\n  \S+: checkpoint \(150, \d+.*\) vs model \(19, \d+", str(back))
    assert back.lines == caught.value.lines and back.keys == caught.value.keys
    # micro: conv_seg weight + bias and the 4 stages' mlp_cls_q / mlp_cls_k weight + bias: 18 tensors
    assert str(back).endswith("\n  ... and 8 more")
