"""Console progress, metrics.jsonl, Weights & Biases, and what a run records about itself."""
from .console import Heartbeat, preparing, progress, status
from .method import method_label, run_name
from .metrics import MetricsFile, strict_json
from .versions import provenance
from .wandb_logger import LOGGERS, WANDB_MODES, WandbLogger

__all__ = ["progress", "preparing", "status", "Heartbeat", "MetricsFile", "strict_json",
           "WandbLogger", "LOGGERS", "WANDB_MODES", "method_label", "run_name", "provenance"]
