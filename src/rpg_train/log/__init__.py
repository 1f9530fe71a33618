"""Console progress, metrics.jsonl and Weights & Biases."""
from .console import progress
from .metrics import MetricsFile, strict_json
from .wandb_logger import LOGGERS, WANDB_MODES, WandbLogger

__all__ = ["progress", "MetricsFile", "strict_json", "WandbLogger", "LOGGERS", "WANDB_MODES"]
