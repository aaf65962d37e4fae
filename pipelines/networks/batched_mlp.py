"""R independent copies of the toy MLP evaluated as one network (batched matmuls).

Rows of the flat batch belong to runs in order: a batch of R*N rows is R blocks of N rows,
block r evaluated with run r's weights (`torch.baddbmm` over per-run weight tensors
[R, in, out]). The generic preconditioning, loss and sampler see an ordinary [R*N, dim]
batch with one sigma per row, so one optimiser step trains all R runs; with the loss summed
over runs (each run's own mean) and Adam being per-element, the runs stay exactly independent.
Shape per run follows `networks.mlp.MLP`: [x, c_noise(, labels)] -> hidden -> depth x
(Linear + activation) -> dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .mlp import ACTIVATIONS, MLP, MLPConfig


@dataclass
class BatchedMLPConfig(MLPConfig):
    """MLPConfig plus the number of independent runs held side by side."""
    runs: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.runs < 1:
            raise ValueError(f"BatchedMLP needs runs >= 1 (got {self.runs}).")


def _uniform(shape, bound: float, generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class BatchedMLP(nn.Module):
    """`runs` independent MLPs; `encode` is the input layer, `decode` the rest (as `MLP`)."""

    Config = BatchedMLPConfig

    def __init__(self, runs=1, dim=2, hidden=64, depth=4, activation="relu", label_dim=0,
                 generator: torch.Generator | None = None, init: bool = True):
        super().__init__()
        self.config = BatchedMLPConfig(dim=dim, hidden=hidden, depth=depth, activation=activation, runs=runs)
        self.label_dim = label_dim
        self.act = ACTIVATIONS[activation]()
        widths = [dim + 1 + label_dim] + [hidden] * (depth + 1) + [dim]
        # layer i maps widths[i] -> widths[i+1]; layer 0 is the encoder, the rest the decoder
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.weights.append(nn.Parameter(torch.empty(runs, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(runs, 1, fan_out)))
        if init:  # init=False: the caller fills every weight (subset/tiling of thousands of runs)
            self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None):
        """nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn per run."""
        for w, b in zip(self.weights, self.biases):
            bound = 1 / math.sqrt(w.shape[1])
            w.copy_(_uniform(w.shape, bound, generator))
            b.copy_(_uniform(b.shape, bound, generator))

    @property
    def runs(self) -> int:
        return self.config.runs

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    def _split_runs(self, t: torch.Tensor) -> torch.Tensor:
        """[R*N, k] -> [R, N, k]; refuses batches that do not split evenly into runs."""
        if t.shape[0] % self.runs:
            raise ValueError(f"Batch of {t.shape[0]} rows does not split into {self.runs} runs; "
                             f"pass runs x points rows, run-major.")
        return t.reshape(self.runs, t.shape[0] // self.runs, -1)

    def encode(self, x, noise_labels, class_labels=None, augment_labels=None):
        parts = [x.reshape(x.shape[0], -1), noise_labels.reshape(-1, 1).to(x.dtype)]
        if self.label_dim:
            parts.append(class_labels.to(x.dtype))
        h = self._split_runs(torch.cat(parts, dim=1))
        return torch.baddbmm(self.biases[0], h, self.weights[0])

    def decode(self, h):
        n_layers = len(self.weights)
        for i in range(1, n_layers):
            if i < n_layers - 1:
                h = self.act(torch.baddbmm(self.biases[i], h, self.weights[i]))
            else:
                h = torch.baddbmm(self.biases[i], h, self.weights[i])
        return h.reshape(-1, h.shape[-1])

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        return self.decode(self.encode(x, noise_labels, class_labels, augment_labels))

    def decoder_parameters(self):
        """Parameters trained in decoder-only fine-tuning (all layers after the input layer)."""
        return list(self.weights[1:]) + list(self.biases[1:])

    # -- moving runs in and out ------------------------------------------------------------

    @torch.no_grad()
    def subset(self, runs: Sequence[int] | torch.Tensor) -> "BatchedMLP":
        """A new BatchedMLP holding copies of the selected runs' weights."""
        idx = torch.as_tensor(runs, dtype=torch.long, device=self.weights[0].device)
        cfg = self.config
        out = BatchedMLP(len(idx), cfg.dim, cfg.hidden, cfg.depth, cfg.activation, self.label_dim, init=False)
        out.to(self.weights[0].device)
        for dst, src in zip(list(out.weights) + list(out.biases), list(self.weights) + list(self.biases)):
            dst.copy_(src[idx])
        return out

    @torch.no_grad()
    def load_run(self, r: int, mlp: MLP):
        """Copy the weights of one `networks.mlp.MLP` (same shape) into run r."""
        layers = [mlp.inp] + [blk[0] for blk in mlp.blocks] + [mlp.out]
        if len(layers) != len(self.weights) or mlp.inp.in_features != self.weights[0].shape[1]:
            raise ValueError("MLP shape does not match this BatchedMLP (dim, hidden, depth, label_dim).")
        for i, lin in enumerate(layers):
            self.weights[i][r].copy_(lin.weight.T)
            self.biases[i][r, 0].copy_(lin.bias)

    @torch.no_grad()
    def run_as_mlp(self, r: int) -> MLP:
        """Run r as a plain `networks.mlp.MLP` (for saving one run or using it alone)."""
        cfg = self.config
        mlp = MLP(cfg.dim, cfg.hidden, cfg.depth, cfg.activation, self.label_dim).to(self.weights[0].device)
        layers = [mlp.inp] + [blk[0] for blk in mlp.blocks] + [mlp.out]
        for i, lin in enumerate(layers):
            lin.weight.copy_(self.weights[i][r].T)
            lin.bias.copy_(self.biases[i][r, 0])
        return mlp
