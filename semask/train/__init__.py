"""Training, evaluation and inference: config, loop, metrics, checkpoints, CLIs."""
from .config import TrainConfig, load_config, load_preset
from .metrics import best_constant_miou, confusion_matrix, summarize

__all__ = ["TrainConfig", "best_constant_miou", "confusion_matrix", "load_config", "load_preset", "summarize"]
