"""Training: frozen configs, the one loop (``trainer``) and what it trains (flow, autoencoder).

Imports ``run`` (the run directory format); nothing below ``train`` imports it.
"""

from .config import TrainConfig
from .flow import FlowTask, flow_trainer, train
from .trainer import Task, Trainer, TrainingInterrupted

__all__ = ["FlowTask", "Task", "TrainConfig", "Trainer", "TrainingInterrupted", "flow_trainer",
           "train"]
