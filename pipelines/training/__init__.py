"""Training and fine-tuning: EDM recipe (Adam, lr ramp-up, EMA half-life), budget in images seen,
checkpoints for (omega, budget) sweeps, exact resume, decoder-only fine-tuning, DDP via torchrun.

Public entry points: `TrainConfig`, `train`, `list_checkpoints`.
"""
from .config import TrainConfig
from .loop import train
from .state import list_checkpoints

__all__ = ["TrainConfig", "train", "list_checkpoints"]
