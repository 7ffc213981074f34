"""Command-line entry points: ``semask-train``, ``semask-eval``, ``semask-infer``, ``semask-export``,
``semask-check-data``."""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..ops.backend import BackendUnavailable
from .config import (DEFAULT_PRESET, add_config_arguments, apply_overrides, command_line_overrides,
                     config_from_args, from_dict, preset_names)
from .state import FINAL_NAME, STATE_NAME, WEIGHTS_NAME, read_metadata, resolve_resume, stored_config, training_state

# what a user's data, checkpoint, device or backend choice raises: said in one line, no traceback
INPUT_ERRORS = (ValueError, OSError, BackendUnavailable)


def error_line(exc: BaseException) -> str:
    """``exc``'s message; of an error re-raised from a DataLoader worker, whose message holds
    the worker's traceback, the original error's message (after the traceback's last
    ``<module.>Type: ``)."""
    text = str(exc)
    if "Original Traceback" in text:  # torch's ExceptionWrapper.reraise: the same type
        found = list(re.finditer(rf"(?m)^(?:[\w.]+\.)?{re.escape(type(exc).__name__)}: ", text))
        text = text[found[-1].end():].strip() if found else text
    return text


def failure(prog: str, exc: BaseException) -> str:
    """``prog``'s one-line error for ``exc``; for a bad dataset file, where to find the others."""
    from ..data.folders import SampleError
    hint = ("; semask-check-data with the same config and options lists every bad file"
            if isinstance(exc, SampleError) else "")
    return f"{prog}: error: {error_line(exc)}{hint}"


def _main_process() -> bool:
    """Not a torchrun process of rank > 0 (each would say the same)."""
    from .distributed import env_rank
    return env_rank() == 0


def interruptible(prog: str):
    """Entry point decorator: Ctrl-C ends ``prog`` with a line, exit status 130, no traceback."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None) -> None:
            try:
                main(argv)
            except KeyboardInterrupt:
                if _main_process():
                    print(f"\n{prog}: interrupted", file=sys.stderr)
                sys.exit(130)
        return run
    return wrap

def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    """The training config: positional or --config (read back as ``args.config_opt or args.config``)."""
    parser.add_argument("config", nargs="?", default=None,
                        help=f"preset name in configs/ or a JSON file (default {DEFAULT_PRESET}); "
                             f"presets: {', '.join(preset_names())}")
    parser.add_argument("--config", dest="config_opt", default=None, help="same as the positional config")


TRAIN_EPILOG = """examples:
  semask-train                                   # synthetic CPU preset: 7-12 min on 2 cores, mIoU ~0.80
  semask-train --config ade20k_semask_tiny_fpn --data-root data/ADEChallengeData2016 \\
               --pretrained swin_tiny_patch4_window7_224.pth
  torchrun --nproc_per_node 2 -m semask.train --config ade20k_semask_tiny_fpn --data-root ...  # the release's 2 GPUs
  semask-train --out-dir runs/x --resume          # continue runs/x from its last checkpoint
  semask-train --overwrite                       # the default job again, replacing runs/synthetic_cpu
"""


@interruptible("semask-train")
def train_main(argv=None) -> None:
    from .trainer import NonFiniteLossError, train
    parser = argparse.ArgumentParser(
        prog="semask-train", epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train SeMask-Swin + Semantic FPN, then evaluate (default: the synthetic CPU preset).")
    add_preset_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="continue from PATH (a run folder or its last_state.pt; bare: the out "
                             "dir) with the run's stored config; --field options given override it")
    parser.add_argument("--stop-at", type=int, default=None, help="stop after this iteration (checkpointed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start (or resume) in an out dir that holds another run: its checkpoints, "
                             "metrics and results are removed (without it such a folder is refused)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    args.config = args.config_opt or args.config
    try:
        cfg, resume = config_from_args(args), None
        if args.resume is not None:
            if args.config:
                raise ValueError(f"--resume continues with the run's stored config, not {args.config}: "
                                 "give changes as --field options")
            resume = resolve_resume(args.resume or cfg.out_dir)
            overrides = command_line_overrides(args)
            # the run continues in the folder it is in now (it may have been moved or copied),
            # not in the out_dir it was started with, unless --out-dir says otherwise
            stored = stored_config(resume)
            cfg = apply_overrides(stored, {"out_dir": str(resume.parent), **overrides})
            changed = [k for k in overrides if getattr(cfg, k) != getattr(stored, k)]  # not those it equals
            print(f"resuming {resume} with its stored config"
                  + (", overridden by " + ", ".join("--" + k.replace("_", "-") for k in changed)
                     if changed else "") + f"; writing to {cfg.out_dir}")
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    try:
        train(cfg, resume=str(resume) if resume else None, stop_at=args.stop_at, overwrite=args.overwrite)
    except (*INPUT_ERRORS, NonFiniteLossError) as exc:
        sys.exit(failure("semask-train", exc))
    except KeyboardInterrupt:
        if _main_process():
            print(f"\nsemask-train: interrupted; {resume_hint(Path(cfg.out_dir), resume)}", file=sys.stderr)
        sys.exit(130)


def resume_hint(out: Path, resume: Path | None) -> str:
    """What continues a run that stopped writing into ``out`` (resumed from ``resume``)."""
    state = training_state(out / STATE_NAME)
    if state:
        return (f"{out} holds the checkpoint of iteration {state['iteration']}: continue with "
                f"semask-train --resume {out}")
    if resume and resume.parent.resolve() != out.resolve():
        return f"no checkpoint was written in {out}: semask-train --resume {resume} --out-dir {out} starts over"
    return "no checkpoint was written"


def checkpoint_file(path: Path) -> Path:
    """The file a checkpoint argument names. A run folder: the newer (by stored iteration)
    of its finished model and its last checkpoint, the finished model on a tie (else its
    state file)."""
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    found = [p for p in (path / FINAL_NAME, path / WEIGHTS_NAME) if p.is_file()]
    if not found and (path / STATE_NAME).is_file():
        return path / STATE_NAME
    if not found:
        raise FileNotFoundError(f"no checkpoint in {path} (none of {FINAL_NAME}, {WEIGHTS_NAME}, {STATE_NAME})")
    return max(found, key=lambda p: int(read_metadata(p).get("iteration", -1)))  # first of equals


def _load_model(checkpoint: str, device: torch.device, config: str | None = None, say=print):
    """Model, config and {checkpoint file, iteration} of ``checkpoint``: the config our
    checkpoints store (weights files and last_state.pt), or ``config`` (a preset name or
    JSON file; it wins over a stored one), which files without one need (an official
    mmseg SeMask ``.pth``, a bare state dict). ``say`` prints what was loaded."""
    from ..models import CheckpointMismatch, load_checkpoint
    from ..models.checkpoint import read_checkpoint
    from .config import load_preset
    from .trainer import build_model
    path = checkpoint_file(Path(checkpoint))
    weights, meta = path, {}
    state = training_state(path) if path.suffix != ".safetensors" else None
    if state is not None:  # a run's last_state.pt (of earlier versions: its weights file holds the weights)
        weights = state["model"] if "model" in state else path.parent / state["weights"]
        meta = {"config": state["config"], "iteration": state["iteration"]}
    elif path.suffix == ".safetensors":
        meta = read_metadata(path)
    if config is not None:
        cfg = load_preset(config)
    elif "config" in meta:
        cfg = from_dict(json.loads(meta["config"]), str(path))
    else:
        if path.name == STATE_NAME:  # a state file training_state could not read: say why
            stored_config(path)
        read_checkpoint(path)  # a file cut short or of another kind: its own error
        raise ValueError(f"{path} stores no training config (an official mmseg checkpoint or another "
                         "file not written by semask-train): give the model's config with --config, "
                         f"a preset ({', '.join(preset_names())}) or a JSON file")
    model = build_model(cfg, cfg.num_classes)
    try:
        report = load_checkpoint(model, weights)
    except CheckpointMismatch as exc:  # loading part of it would score another model
        raise CheckpointMismatch(f"{path} does not fit the {'--config' if config else 'stored config'}'s model "
                                 f"(variant {cfg.variant}, semantic {cfg.semantic}, {cfg.num_classes} classes): "
                                 + exc.problem, None, "", exc.keys, exc.lines) from None
    if report.missing:  # a backbone-only file (Swin ImageNet) would leave the head at its init
        raise ValueError(f"{path} is not a whole model ({report.source}): it lacks {len(report.missing)} of "
                         f"its tensors, e.g. {', '.join(report.missing[:3])}; an ImageNet backbone starts "
                         "training (--pretrained), it cannot be evaluated")
    source = dict(checkpoint=str(path), iteration=int(meta["iteration"]) if "iteration" in meta else None)
    say(f"model: {path}" + (f", iteration {source['iteration']}" if "iteration" in meta else ""))
    say(report)
    return model.to(device).eval(), cfg, source


AMP_HELP = ("mixed-precision inference: none (fp32, the default, as mmseg tests), bf16 or fp16 "
            "(autocast: faster on a GPU; scores may move in the last digits)")
CONFIG_HELP = ("the model's config, a preset name or JSON file (default: the one stored in the checkpoint; "
               "needed for an official mmseg SeMask .pth)")


def _process_setup(parser: argparse.ArgumentParser, args):
    """This process's DistInfo (under torchrun: a process group, this rank's GPU) for
    semask-eval / -infer, with their --device and --cuda-graphs checks as usage errors."""
    from . import distributed
    try:
        info = distributed.setup(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    if args.cuda_graphs and info.device.type != "cuda":
        parser.error(f"--cuda-graphs needs a CUDA device, got {info.device}")
    return info


@interruptible("semask-eval")
def eval_main(argv=None) -> None:
    from . import distributed
    from .evaluate import evaluate
    from .inference import autocast_context
    from .metrics import markdown_table
    from .trainer import raw_dataset
    parser = argparse.ArgumentParser(prog="semask-eval", description="Evaluate a semask-train checkpoint: "
                                     "mIoU, mAcc, per-class IoU and accuracy, pixel accuracy (JSON + markdown table). "
                                     "Under torchrun (torchrun --nproc_per_node N --no-python semask-eval ...) each "
                                     "process scores every N-th image and rank 0 writes the summed result.")
    parser.add_argument("checkpoint", help="model.safetensors / last.safetensors, a run folder, or an "
                        "official SeMask .pth (with --config)")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--mode", choices=("whole", "slide", "ms_flip"), default=None,
                        help="inference mode (default: the training config's eval_mode)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: the training config's)")
    parser.add_argument("--split", default="val", choices=("val", "train", "test"),
                        help="val (default), train, or test (synthetic and Cityscapes only); a folder dataset "
                        "reads its folder_val or folder_train")
    parser.add_argument("--test-scale", default=None, help="long,short keep-ratio resize, or none")
    parser.add_argument("--ms-ratios", default=None, help="comma-separated ratios for ms_flip")
    parser.add_argument("--slide-crop", default=None, help="h,w")
    parser.add_argument("--slide-stride", default=None, help="h,w")
    parser.add_argument("--pad-multiple", default=None,
                        help="pad inputs to a multiple of N, or none (default: the training config's "
                             "eval_pad_multiple; none = unpadded, as mmseg)")
    parser.add_argument("--out", default=None, help="write the JSON here, a .json path, and the markdown table "
                        "next to it as .md (default: eval_<split>_<mode>.json next to the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loader worker processes (default: the training config's num_workers)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the forwards from CUDA graphs, one per input size that "
                        "repeats (GPU; a sliding-window eval repeats its crop)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help=AMP_HELP)
    args = parser.parse_args(argv)
    info = _process_setup(parser, args)
    device = info.device
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num-workers must be at least 0, got {args.num_workers}")
    try:
        model, cfg, source = _load_model(args.checkpoint, device, args.config,
                                         say=print if info.is_main else lambda *a: None)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    from .config import apply_overrides
    overrides = {k: v for k, v in (("eval_mode", args.mode), ("test_scale", args.test_scale),
                                   ("ms_ratios", args.ms_ratios), ("slide_crop", args.slide_crop),
                                   ("slide_stride", args.slide_stride),
                                   ("eval_pad_multiple", args.pad_multiple)) if v is not None}
    try:  # the training config's checks, on the options given here as well
        cfg = apply_overrides(cfg, overrides)
    except ValueError as exc:
        parser.error(str(exc))
    mode, pad = cfg.eval_mode, cfg.eval_pad_multiple
    run_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    out = Path(args.out) if args.out else run_dir / f"eval_{args.split}_{mode}.json"
    if out.suffix != ".json":  # the table goes to .md next to it: "res.md" wrote both there
        parser.error(f"--out must name a .json file, got {out}")
    try:  # a result that cannot be written is refused before the scoring, not after it
        out.parent.mkdir(parents=True, exist_ok=True)
        for target in (out, out.with_suffix(".md")):
            if target.is_dir() or not os.access(target if target.exists() else target.parent, os.W_OK):
                raise OSError(f"cannot write {target}")
    except OSError as exc:
        parser.error(f"--out: {exc}")
    try:
        raw = raw_dataset(cfg, args.split, args.data_root)
    except ValueError as exc:
        parser.error(str(exc))
    if cfg.dataset != "ade20k" and len(raw.classes) != cfg.num_classes:
        parser.error(f"the model has {cfg.num_classes} classes but {cfg.dataset} has {len(raw.classes)}")
    t0 = time.perf_counter()
    try:
        res = evaluate(model, raw, cfg.num_classes, device, mode, cfg.test_scale, cfg.ms_ratios,
                       tuple(cfg.slide_crop), tuple(cfg.slide_stride),
                       progress=True, cuda_graphs=args.cuda_graphs, pad_multiple=pad,
                       num_workers=cfg.num_workers if args.num_workers is None else args.num_workers,
                       autocast=lambda: autocast_context(args.amp, device), info=info)
    except INPUT_ERRORS as exc:  # a bad label file, a backend that cannot run here, ...
        sys.exit(failure("semask-eval", exc))
    finally:
        distributed.cleanup(info)
    if not info.is_main:  # every rank holds the summed result; rank 0 writes it
        return
    res.update(source, split=args.split, dataset=cfg.dataset, pad_multiple=pad, amp=args.amp,
               processes=info.world_size, eval_s=time.perf_counter() - t0)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown_table(res) + "\n")
    print(markdown_table(res))
    print(f"\n{cfg.dataset} {args.split}, {mode}: mIoU {res['mIoU']:.4f}, pixel accuracy {res['aAcc']:.4f} "
          f"({len(raw)} images, {res['eval_s']:.1f} s); constant-class baseline mIoU {res['baseline_mIoU']:.4f}")
    print(f"written {out} and {out.with_suffix('.md')}")


def palette(num_classes: int) -> np.ndarray:
    """[K, 3] uint8 colours (the PASCAL bit-interleaving palette, extended to K)."""
    colours = np.zeros((max(num_classes, 1), 3), np.uint8)
    for k in range(num_classes):
        c, r, g, b = k + 1, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours[k] = (r, g, b)
    return colours


def class_id_image(pred: np.ndarray, colours: np.ndarray):
    """[H, W] class ids -> a PIL image whose pixel values are the ids: a palette PNG (viewers
    show the colours) up to 256 classes, a 16-bit grey PNG beyond (a palette holds 256)."""
    from PIL import Image
    if len(colours) > 256:
        return Image.fromarray(pred.astype(np.uint16))
    image = Image.fromarray(pred.astype(np.uint8))
    image.putpalette(colours.tobytes())
    return image


@interruptible("semask-infer")
def infer_main(argv=None) -> None:
    from PIL import Image
    from ..data.folders import READ_ERRORS, is_hidden
    from . import distributed
    from .inference import autocast_context, predict, rgb_image
    parser = argparse.ArgumentParser(prog="semask-infer", description="Segment images: writes <name>.png "
                                     "(class ids as a palette PNG: the values are the ids, viewers show "
                                     "colours; over 256 classes a 16-bit grey PNG) and <name>_overlay.png "
                                     "(colour blend) per image. Under torchrun (torchrun --nproc_per_node N "
                                     "--no-python semask-infer ...) each process segments every N-th image.")
    parser.add_argument("checkpoint", help="model.safetensors / last.safetensors, a run folder, or an "
                        "official SeMask .pth (with --config)")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--out-dir", default="predictions", help="output folder (default predictions/)")
    parser.add_argument("--mode", choices=("whole", "slide", "ms_flip"), default=None,
                        help="inference mode (default: the training config's eval_mode)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colour map (0 to 1)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the forwards from CUDA graphs, one per input size that "
                        "repeats (GPU; images of one size, or the sliding-window crop)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help=AMP_HELP)
    args = parser.parse_args(argv)
    info = _process_setup(parser, args)
    device = info.device
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be between 0 and 1, got {args.alpha}")
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    files = []
    for item in map(Path, args.inputs):
        if item.is_dir():  # the files Pillow can open, by suffix; not macOS's hidden ._x.jpg copies
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in readable and p.is_file()
                            and not is_hidden(p))
        elif item.is_file():
            files.append(item)
        else:
            parser.error(f"input not found: {item}")
    if not files:
        parser.error("no images in the given folders (no file with a suffix Pillow reads, such as .png, "
                     ".jpg, .webp, .bmp or .tif)")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        parser.error(f"--out-dir {out} is a file")
    outputs = {p: (out / f"{p.stem}.png", out / f"{p.stem}_overlay.png") for p in files}
    written = collections.Counter(o.resolve() for pair in outputs.values() for o in pair)
    clashes = sorted(str(p) for p, pair in outputs.items() if any(written[o.resolve()] > 1 for o in pair))
    if clashes:  # "a.png" and "a_overlay.jpg" both write a_overlay.png, "a/x.png" and "b/x.png" x.png
        parser.error("inputs whose outputs would have the same name: " + ", ".join(clashes[:8]))
    inputs = {p.resolve() for p in files}
    overwritten = sorted(str(o) for o in written if o in inputs)
    if overwritten:
        parser.error("outputs would overwrite inputs (choose another --out-dir): " + ", ".join(overwritten[:8]))
    try:
        model, cfg, source = _load_model(args.checkpoint, device, args.config,
                                         say=print if info.is_main else lambda *a: None)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    total, files = len(files), files[info.rank::info.world_size]
    if args.cuda_graphs:
        from .cuda_graphs import GraphedInference
        model = GraphedInference(model)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_classes > 65536:  # a 16-bit PNG holds ids up to 65535
        parser.error(f"class-id maps hold at most 65536 classes, the model has {cfg.num_classes}")
    colours = palette(cfg.num_classes)
    unreadable = []
    for path in files:
        try:
            rgb = rgb_image(path)  # as displayed (EXIF orientation)
        except (*READ_ERRORS, ValueError) as exc:  # the others go on
            print(f"{path}: skipped, not a readable image ({exc})", file=sys.stderr)
            unreadable.append(str(path))
            continue
        try:
            with autocast_context(args.amp, device):
                pred = predict(model, rgb, cfg, mode=args.mode, device=device).cpu().numpy()
        except INPUT_ERRORS as exc:  # a backend that cannot run here, an image the model refuses
            sys.exit(f"semask-infer: error: {path}: {exc}")
        ids, overlay = outputs[path]
        class_id_image(pred, colours).save(ids)
        blend = (1 - args.alpha) * rgb + args.alpha * colours[pred]
        Image.fromarray(blend.clip(0, 255).astype(np.uint8)).save(overlay)
        print(f"{path} -> {ids}, {overlay}")
    unreadable = sum(distributed.gather_to_all(unreadable, info), [])  # waits for every rank
    distributed.cleanup(info)
    if unreadable:
        sys.exit(f"semask-infer: {len(unreadable)} of {total} inputs were not readable images: "
                 + ", ".join(unreadable[:8]) if info.is_main else 1)


def _size(text: str) -> tuple[int, int]:
    """argparse type of --size: "h,w" or one side of a square."""
    try:
        sides = tuple(int(v) for v in text.split(","))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected h,w (or one side), got {text!r}")
    if min(sides) < 32:
        raise argparse.ArgumentTypeError(f"images are at least 32x32 (the model's smallest input), got {text!r}")
    return sides * (3 - len(sides))


@interruptible("semask-export")
def export_main(argv=None) -> None:
    from ..models.export import OUTPUTS, OnnxExportError, export_onnx
    parser = argparse.ArgumentParser(
        prog="semask-export", description="Export a model to ONNX for images of one size: images [B, 3, H, W], "
        "normalised as for the model, to logits [B, K, H, W] or labels [B, H, W] (int64). The graph is the "
        "PyTorch reference path in float32 (no fused kernels). The file is written only when onnxruntime, "
        "run on random images, agrees with PyTorch; its metadata_props hold the normalisation, the model "
        "and the training config. Needs pip install 'semask[onnx]'.")
    parser.add_argument("checkpoint", help="model.safetensors / last.safetensors, a run folder, or an "
                        "official SeMask .pth (with --config)")
    parser.add_argument("out", help="the .onnx file to write (replaced if it exists)")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--size", type=_size, default=None, metavar="H,W",
                        help="the image size the graph takes (default: the config's crop_size); a graph "
                        "serves one size, e.g. the sliding-window crop")
    parser.add_argument("--output", choices=OUTPUTS, default="logits",
                        help="logits [B, K, H, W] (default) or labels [B, H, W], their argmax")
    parser.add_argument("--batch", default="dynamic",
                        help="dynamic (any batch size, the default) or a fixed batch size")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or later (default: "
                        "torch.onnx's); one torch.onnx cannot convert the graph to is an error")
    parser.add_argument("--no-check", action="store_true",
                        help="write the graph without comparing onnxruntime's outputs with PyTorch's")
    args = parser.parse_args(argv)
    batch = args.batch
    if batch != "dynamic":
        if not batch.isdigit() or int(batch) < 1:
            parser.error(f"--batch must be dynamic or a positive int, got {batch!r}")
        batch = int(batch)
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        parser.error(f"{out} is a folder: give the .onnx file to write" if out.is_dir()
                     else f"folder not found: {out.parent}")
    try:
        model, cfg, source = _load_model(args.checkpoint, torch.device("cpu"), args.config)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    size = args.size or tuple(cfg.crop_size)
    metadata = {"semask.config": cfg.to_json(), "semask.checkpoint": source["checkpoint"]}
    print(f"exporting {cfg.variant} ({cfg.num_classes} classes) for images of {size[0]}x{size[1]} ...")
    try:
        report = export_onnx(model, out, size, output=args.output, batch=batch, opset=args.opset,
                             check=not args.no_check, metadata=metadata)
    except (OnnxExportError, ImportError, OSError) as exc:
        sys.exit(failure("semask-export", exc))
    print(report)


@interruptible("semask-check-data")
def check_data_main(argv=None) -> None:
    from ..data.check import check_dataset
    from .trainer import raw_dataset
    parser = argparse.ArgumentParser(
        prog="semask-check-data", description="Read every image and label of a training config's dataset as "
        "semask-train and semask-eval read them, and list every bad file (unreadable, a label of another size "
        "or with values outside the classes) where training stops at the first one it draws; then each "
        "class's share of the labelled pixels and the images holding it. Takes semask-train's config and "
        "options. Exit status 1 when a file is bad.")
    add_preset_arguments(parser)
    parser.add_argument("--split", choices=("train", "val", "both"), default="both",
                        help="the split(s) to read (default both)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    args.config = args.config_opt or args.config
    try:
        cfg = config_from_args(args)
        splits = ("train", "val") if args.split == "both" else (args.split,)
        datasets = {split: raw_dataset(cfg, split) for split in splits}
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    bad = 0
    for split, raw in datasets.items():
        summary = check_dataset(raw, cfg.num_classes, cfg.num_workers, cfg.progress, desc=f"read {split}")
        labelled = int(summary.class_pixels.sum())
        zero = ", or 0: reduce_zero_label" if getattr(raw, "reduce_zero_label", False) else ""
        print(f"\n{cfg.dataset} {split}: {summary.samples} sample{'s' * (summary.samples != 1)}, "
              f"{len(summary.problems)} bad; {labelled} labelled pixels, {summary.ignored_pixels} ignored "
              f"(255{zero})")
        names = [str(name) for name in getattr(raw, "classes", range(cfg.num_classes))]
        print(summary.table(names))
        absent = [name for name, pixels in zip(names, summary.class_pixels) if pixels == 0]
        if absent:
            print(f"classes without a labelled pixel in {split}: {', '.join(absent)}")
        for _, problem in summary.problems:
            print(problem, file=sys.stderr)
        bad += len(summary.problems)
    if bad:
        sys.exit(f"semask-check-data: {bad} bad sample{'s' if bad > 1 else ''} (listed above)")
    print("\nevery sample reads")
