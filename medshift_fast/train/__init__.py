"""Training: frozen configs, the loop, checkpoints."""

from .checkpoint import LoadedRun, load_run, save_run
from .config import TrainConfig
from .loop import Trainer, train

__all__ = ["LoadedRun", "TrainConfig", "Trainer", "load_run", "save_run", "train"]
