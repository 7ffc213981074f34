"""Models: Swin / SeMask-Swin backbones, heads, registry and checkpoint loading."""
from .checkpoint import CheckpointMismatch, LoadReport, load_checkpoint, save_checkpoint
from .export import ExportReport, OnnxExportError, export_onnx
from .registry import create_model, list_models
from .semask import VARIANTS, SegOutput, SeMaskSwin
from .swin import BackboneOutput, SwinBackbone

__all__ = ["BackboneOutput", "CheckpointMismatch", "ExportReport", "LoadReport", "OnnxExportError", "SeMaskSwin",
           "SegOutput", "SwinBackbone", "VARIANTS", "create_model", "export_onnx", "list_models", "load_checkpoint",
           "save_checkpoint"]
