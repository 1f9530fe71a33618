"""The training engine: train(cfg) and its parts."""
from .distributed import RankLost
from .guard import Diverged
from .signals import Interrupted
from .trainer import train

__all__ = ["train", "Interrupted", "Diverged", "RankLost"]
