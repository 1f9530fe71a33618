"""The training engine: train(cfg) and its parts."""
from .loop import Interrupted
from .train import train

__all__ = ["train", "Interrupted"]
