"""ONNX export of a SeMask-Swin model at a fixed image size (PyTorch's dynamo exporter).

The exported graph is the model's PyTorch reference path in float32 on the CPU (ONNX has
no Triton / CUDA kernels), with the model's weights: images [B, 3, H, W] (normalised as
the model takes them) -> logits [B, K, H, W] or labels [B, H, W] (int64, the argmax).
H and W are fixed: the backbone pads every stage's map to its window and merge multiples,
and the exporter would bake those paddings in for the traced size (a graph traced with
symbolic H, W gave other numbers at other sizes), so a graph serves one size, as a
sliding-window crop. The batch may vary. The written file is checked with onnxruntime
against PyTorch before it replaces ``path``.
"""
from __future__ import annotations

import copy
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import write_atomically
from .semask import SeMaskSwin

OUTPUTS = ("logits", "labels")
INPUT_NAME = "images"
# torch versions checked to export and agree with onnxruntime: 2.7.1, 2.8.0, 2.9.1, 2.11.0, 2.14.1
MIN_TORCH = "2.7"
MAX_BATCH = 1024  # the dynamic batch's bound (torch 2.6 refuses an unbounded one)
# onnxruntime vs PyTorch (both float32): the largest |difference| allowed, relative to the
# largest |logit| (a correct micro / tiny model differs by about 1e-6 of it)
CHECK_RTOL = 1e-4


class OnnxExportError(RuntimeError):
    """torch.onnx failed, or the exported graph does not compute what the model does."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote; ``checked_batches``: the batch sizes at which
    onnxruntime ran the written graph and agreed with PyTorch (empty: not checked)."""

    path: str
    input_shape: tuple  # ("batch" or B, 3, H, W)
    output: str
    opset: int
    checked_batches: tuple[int, ...]

    def __str__(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        text = f"{self.path}: {INPUT_NAME} [{shape}] -> {self.output}, ONNX opset {self.opset}; "
        if not self.checked_batches:
            return text + "not checked against PyTorch"
        return text + ("onnxruntime agrees with PyTorch at batch " + ", ".join(map(str, self.checked_batches))
                       + f" (to {CHECK_RTOL:g} of the largest logit)")


class _Graph(nn.Module):
    """images [B, 3, H, W] -> logits [B, K, H, W] or labels [B, H, W] (int64)."""

    def __init__(self, model: SeMaskSwin, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, images: Tensor) -> Tensor:
        logits = self.model(images).logits
        return logits if self.output == "logits" else logits.argmax(1)


def reference_copy(model: SeMaskSwin) -> SeMaskSwin:
    """A float32 CPU copy of ``model`` in eval mode that runs the PyTorch reference ops
    (same parameters and buffers); ``model`` is left as it is."""
    ref = copy.deepcopy(model).cpu().float().eval()
    for module in ref.modules():  # attention ops and LayerNorms: the backend they ask for
        if hasattr(module, "backend"):
            module.backend = "torch"
    ref.backend_request, ref.fused_upsample, ref.fused_loss = "torch", False, False
    return ref


def _checked_arguments(model, size, output: str, batch) -> tuple[int, int]:
    if not isinstance(model, SeMaskSwin):
        hint = " (of a torch.compile'd model pass model._orig_mod, of DDP model.module)" \
            if isinstance(model, nn.Module) else ""
        raise TypeError(f"export_onnx takes a semask.SeMaskSwin, got {type(model).__name__}{hint}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if batch != "dynamic" and not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be 'dynamic' or a positive int, got {batch!r}")
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if min(height, width) < 32:
        raise ValueError(f"size must be at least 32x32 (the model's smallest input), got {height}x{width}")
    return height, width


def _require_exporter(check: bool) -> None:
    """Refuse a torch too old to export, or missing packages that export (and the check) need."""
    if torch.torch_version.TorchVersion(torch.__version__) < MIN_TORCH:
        raise OnnxExportError(f"ONNX export needs torch >= {MIN_TORCH}, this is "
                              f"{torch.__version__}: torch 2.6's exporter fails on the head's BatchNorm with "
                              "onnxscript 0.7 and on saving with onnxscript 0.2")
    needed = ("onnx", "onnxscript") + (("onnxruntime",) if check else ())
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"ONNX export{' and its check' if check else ''} needs {', '.join(needed)} "
                              f"({exc}): pip install 'semask[onnx]'") from None


def _write(graph: _Graph, example: Tensor, dynamic: dict | None, opset: int | None, file: Path) -> None:
    """Export ``graph`` traced on ``example`` to ``file``; the exporter's failures (pages
    long) as one line naming the versions, the whole error chained (the file's own, such as
    a full disk, as they are)."""
    try:
        with torch.no_grad():
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[graph.output], dynamic_shapes=dynamic,
                                        opset_version=opset, verbose=False)
    except Exception as exc:
        import onnxscript
        raise OnnxExportError(
            f"torch.onnx could not export the model (torch {torch.__version__}, onnxscript "
            f"{onnxscript.__version__}; checked with torch 2.7 to 2.14 and onnxscript 0.7): "
            f"{type(exc).__name__}: {_first_line(exc)}") from exc
    program.save(str(file))


def _first_line(exc: Exception) -> str:
    """The first line of ``exc``'s message, without terminal colour codes, at most 300 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:300] if text else ""


def _add_metadata(file: Path, model: SeMaskSwin, extra: dict[str, str]) -> int:
    """Store what a user of the graph needs beside it in the ONNX file's metadata_props
    (the input's normalisation, the model's variant and classes, and ``extra``); returns
    the file's ONNX opset."""
    import onnx
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    proto = onnx.load(str(file))
    values = {"semask.input": "RGB on the 0-255 scale, (x - semask.mean) / semask.std per channel",
              "semask.mean": ",".join(map(str, IMAGENET_MEAN)), "semask.std": ",".join(map(str, IMAGENET_STD)),
              "semask.variant": model.variant, "semask.semantic": str(model.semantic),
              "semask.num_classes": str(model.num_classes), **extra}
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **values})
    onnx.save(proto, str(file))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _compare(graph: _Graph, file: Path, height: int, width: int, batches: tuple[int, ...]) -> str | None:
    """How the graph in ``file`` (run by onnxruntime) differs from PyTorch on random images
    of each batch size (none: not checked): None when it agrees, else what differs. The output
    must have the model's shape and dtype; logits may differ by ``CHECK_RTOL`` of the largest
    logit; labels must be equal where the top two logits are further apart than that
    (elsewhere rounding may pick either)."""
    if not batches:
        return None
    import onnxruntime
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            logits = graph.model(images).logits
        want = logits if graph.output == "logits" else logits.argmax(1)
        (got,) = session.run(None, {INPUT_NAME: images.numpy()})
        got, tol = torch.from_numpy(got), CHECK_RTOL * max(1.0, logits.abs().max().item())
        if got.shape != want.shape or got.dtype != want.dtype:
            return f"batch {batch}: {got.dtype} {list(got.shape)} out, the model's {want.dtype} {list(want.shape)}"
        if graph.output == "logits":
            diff = (got - logits).abs().max().item()
            if not diff <= tol:
                return f"batch {batch}: max |logit difference| {diff:.3g}, allowed {tol:.3g}"
            continue
        top2 = logits.topk(2, dim=1).values
        wrong = ((got != want) & (top2[:, 0] - top2[:, 1] > tol)).sum().item()
        if wrong:
            return f"batch {batch}: {wrong} of {got.numel()} labels differ"
    return None


def export_onnx(model: SeMaskSwin, path: str | os.PathLike, size: tuple[int, int] = (512, 512), *,
                output: str = "logits", batch: int | str = "dynamic", opset: int | None = None,
                check: bool = True, metadata: dict[str, str] | None = None) -> ExportReport:
    """Write ``model`` as an ONNX graph for images of ``size`` (H, W) to ``path``.

    ``output``: "logits" ([B, K, H, W] float32) or "labels" ([B, H, W] int64, their
    argmax). ``batch``: "dynamic" (any B) or a fixed B. ``opset``: the ONNX opset (default:
    the exporter's; one it cannot convert the graph to raises :class:`OnnxExportError`).
    ``check``: run the written graph with onnxruntime on random images (batch 1 and 3 when
    dynamic, else the fixed batch) and raise :class:`OnnxExportError` where it differs from
    PyTorch (see :func:`_compare`). ``metadata``: more key / value strings for the file's
    metadata_props (beside the input's normalisation and the model's variant and classes,
    always stored). ``path`` is written only when export and check succeed (a file of the
    same name is replaced).
    """
    height, width = _checked_arguments(model, size, output, batch)
    _require_exporter(check)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the .onnx file to write")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder not found: {path.parent}")
    graph = _Graph(reference_copy(model), output).eval()
    # traced with 2 images when dynamic: torch.export specialises a size of 1
    example = torch.zeros(2 if batch == "dynamic" else batch, 3, height, width)
    dynamic = {"images": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if batch == "dynamic" else None
    batches = ((1, 3) if batch == "dynamic" else (batch,)) if check else ()

    def write(file: str) -> None:  # to a new file next to path, renamed to path when it passes
        _write(graph, example, dynamic, opset, Path(file))
        written["opset"] = _add_metadata(Path(file), model, metadata or {})
        if opset is not None and written["opset"] != opset:  # torch.onnx falls back to its own, only logging it
            raise OnnxExportError(f"torch.onnx wrote ONNX opset {written['opset']}, not the {opset} asked for (it "
                                  f"could not convert the graph); nothing written to {path}")
        problem = _compare(graph, Path(file), height, width, batches)
        if problem:
            raise OnnxExportError(f"the exported graph does not compute what the model does (onnxruntime vs "
                                  f"PyTorch, {problem}); nothing written to {path}")

    written = {}
    write_atomically(path, write)
    return ExportReport(str(path), ("batch" if batch == "dynamic" else batch, 3, height, width), output,
                        written["opset"], batches)
