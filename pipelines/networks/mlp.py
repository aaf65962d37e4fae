"""Small MLP backbone for 2-D (or any flat) data, shaped like the paper's toy model.

Input is the point joined with its noise label (3 inputs for 2-D), Linear -> depth x
(Linear + activation) -> Linear back to the data dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


@dataclass
class MLPConfig:
    dim: int = 2
    hidden: int = 64
    depth: int = 4
    activation: str = "relu"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} (got '{self.activation}').")
        if self.dim < 1 or self.hidden < 1 or self.depth < 0:
            raise ValueError(f"MLP needs dim >= 1, hidden >= 1, depth >= 0 (got {self})")


class MLP(nn.Module):
    """F(x, c_noise) for flat data; `encode` is the input layer, `decode` the rest."""

    Config = MLPConfig

    def __init__(self, dim=2, hidden=64, depth=4, activation="relu", label_dim=0):
        super().__init__()
        self.config = MLPConfig(dim, hidden, depth, activation)
        act = ACTIVATIONS[activation]
        self.label_dim = label_dim
        self.inp = nn.Linear(dim + 1 + label_dim, hidden)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(hidden, hidden), act()) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    def encode(self, x, noise_labels, class_labels=None, augment_labels=None):
        parts = [x.reshape(x.shape[0], -1), noise_labels.reshape(-1, 1).to(x.dtype)]
        if self.label_dim:
            parts.append(class_labels.to(x.dtype))
        return self.inp(torch.cat(parts, dim=1))

    def decode(self, h):
        return self.out(self.blocks(h))

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        return self.decode(self.encode(x, noise_labels, class_labels, augment_labels))

    def decoder_parameters(self):
        """Parameters trained in decoder-only fine-tuning."""
        return list(self.blocks.parameters()) + list(self.out.parameters())
