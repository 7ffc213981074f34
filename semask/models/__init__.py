"""Models: Swin / SeMask-Swin backbones, heads, registry and checkpoint loading."""
from .checkpoint import CheckpointMismatch, LoadReport, load_checkpoint, save_checkpoint
from .registry import create_model, list_models
from .semask import VARIANTS, SegOutput, SeMaskSwin
from .swin import BackboneOutput, SwinBackbone

__all__ = ["BackboneOutput", "CheckpointMismatch", "LoadReport", "SeMaskSwin", "SegOutput", "SwinBackbone", "VARIANTS",
           "create_model", "list_models", "load_checkpoint", "save_checkpoint"]
