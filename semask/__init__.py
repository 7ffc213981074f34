"""semask: SeMask-Swin semantic segmentation on fused GPU kernels."""
from .models import (CheckpointMismatch, LoadReport, SegOutput, SeMaskSwin, create_model, export_onnx, list_models,
                     load_checkpoint, save_checkpoint)

__version__ = "0.1.0"
__all__ = ["CheckpointMismatch", "LoadReport", "SegOutput", "SeMaskSwin", "__version__", "create_model", "export_onnx",
           "list_models", "load_checkpoint", "predict", "save_checkpoint"]


def __getattr__(name: str):
    """``semask.predict`` is imported on first use (it brings torchvision's transforms)."""
    if name == "predict":
        from .train.inference import predict
        return predict
    raise AttributeError(f"module 'semask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "predict"])
