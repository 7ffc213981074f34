"""``python -m semask``: build a model, run it on a generated batch, print a summary
(parameters, GFLOPs as multiply-adds, output shapes, time)."""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import create_model, list_models
from .ops.backend import BackendUnavailable
from .ops.semantic_attention import classes_unpadded
from .train.distributed import pick_device


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m semask", description=__doc__)
    parser.add_argument("--model", default="semask_swin_tiny_fpn", choices=list_models(),
                        help="registered model (default semask_swin_tiny_fpn)")
    parser.add_argument("--num-classes", type=int, default=150, help="classes K (default 150, ADE20K)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input height and width (default 512 512; at least 32 each)")
    parser.add_argument("--batch", type=int, default=1, help="images per batch (default 1)")
    parser.add_argument("--fused", action="store_true",
                        help="use the fused kernels (auto backend; SEMASK_BACKEND picks one)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, default), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    if args.num_classes < 2 or args.batch < 1 or min(args.size) < 32:
        parser.error(f"--num-classes must be at least 2, --batch at least 1 and --size at least 32 32, got "
                     f"{args.num_classes}, {args.batch}, {' '.join(map(str, args.size))}")
    try:
        summarize(args, device)
    except (ValueError, BackendUnavailable) as exc:  # SEMASK_BACKEND, a backend that cannot run here
        sys.exit(f"python -m semask: error: {exc}")


def summarize(args, device: torch.device) -> None:
    """Build the model, count its FLOPs on a random batch, time a warm forward, print."""
    model = create_model(args.model, num_classes=args.num_classes, fused=args.fused)
    model = model.to(device).eval()
    images = torch.randn(args.batch, 3, *args.size, device=device)
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        # the fused ops count through semask.ops.flops; the model's K classes, not the zero
        # classes the Triton backends append
        with counter, classes_unpadded():
            out = model(images)
        model(images)  # warm-up outside the counter: kernel compilation, fused upsampling
        sync()
        start = time.perf_counter()
        model(images)
        sync()
        elapsed = time.perf_counter() - start
    semantic = f", semantic windowed per stage {model.semantic_windowed}" if model.semantic else ""
    print(f"{args.model}: {params / 1e6:.2f}M parameters, K={args.num_classes}{semantic}")
    print(f"input {tuple(images.shape)}: {counter.get_total_flops() / 2e9 / args.batch:.2f} GFLOPs "
          "(multiply-adds) per image")
    print(f"logits {tuple(out.logits.shape)}")
    if out.semantic_logits is not None:
        print("semantic prior maps " + ", ".join(str(tuple(p.shape)) for p in out.semantic_logits))
    print(f"forward {elapsed * 1e3:.1f} ms on {device}")


if __name__ == "__main__":
    main()
