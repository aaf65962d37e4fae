"""Model configs and the factory that turns one into a preconditioned denoiser."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import strict_from_dict, to_dict
from .errors import UserError
from .precond import Precond, make_precond


# name -> (module, class); imported on first use so the 2-D tools do not load the UNet.
BACKBONES = {
    "mlp": ("pipelines.networks.mlp", "MLP"),
    "batched-mlp": ("pipelines.networks.batched_mlp", "BatchedMLP"),
    "songunet": ("pipelines.networks.songunet", "SongUNet"),
}


def backbone_class(name: str) -> type:
    """The backbone class registered under `name`."""
    if name not in BACKBONES:
        raise UserError(f"Unknown backbone '{name}'; choose one of {sorted(BACKBONES)}.")
    module, cls = BACKBONES[name]
    return getattr(importlib.import_module(module), cls)


@dataclass
class ModelConfig:
    """Architecture + preconditioning; saved as JSON beside the weights."""
    backbone: str = "songunet"
    network: dict[str, Any] = field(default_factory=dict)   # backbone constructor kwargs
    precond: str = "edm"
    precond_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. sigma_data
    label_dim: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return strict_from_dict(cls, data, "model config")

    def to_dict(self) -> dict:
        return to_dict(self)


def build_model(cfg: ModelConfig) -> Precond:
    """Instantiate the backbone named in `cfg` inside its preconditioning wrapper."""
    cls = backbone_class(cfg.backbone)
    strict_from_dict(cls.Config, {k: v for k, v in cfg.network.items() if k != "label_dim"},
                     f"{cfg.backbone} network")
    net: nn.Module = cls(**cfg.network, label_dim=cfg.label_dim)
    return make_precond(cfg.precond, net, label_dim=cfg.label_dim, **cfg.precond_kwargs)


def sample_shape(model: Precond) -> tuple[int, ...]:
    """Shape of one sample (without batch) that `model` denoises."""
    return tuple(model.model.sample_shape)
