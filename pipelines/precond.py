"""Preconditioning: D(x, sigma) = c_skip*x + c_out*F(c_in*x, c_noise) (EDM Table 1).

Any backbone with `encode(x, noise_labels, class_labels, augment_labels) -> features` and
`decode(features) -> F` can be wrapped. The split lets the SIMS shared-encoder mode run the
encoder once and feed two decoders.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .precision import amp_dtype


def _broadcast_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma (scalar or [N]) -> float32 tensor shaped [N, 1, ...] to broadcast against x."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Precond(nn.Module):
    """Common part of the EDM and VP wrappers; subclasses supply the coefficients."""

    def __init__(self, model: nn.Module, label_dim: int = 0, sigma_min: float = 0.0,
                 sigma_max: float = float("inf")):
        super().__init__()
        self.model = model
        self.label_dim = label_dim
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.amp_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 for mixed-precision training

    def coefficients(self, sigma: torch.Tensor):
        raise NotImplementedError

    def _labels(self, x, class_labels):
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([x.shape[0], self.label_dim], device=x.device)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

    def _autocast(self, device: torch.device):
        """Autocast the backbone only: the training setting, else the caller's `network_precision`."""
        dtype = self.amp_dtype or amp_dtype()
        if dtype is None:
            return contextlib.nullcontext()  # fp32: no autocast at all, bit-identical to plain fp32
        return torch.autocast(device.type, dtype=dtype)

    def encode(self, x, sigma, class_labels=None, augment_labels=None) -> dict:
        """Run the backbone's encoder half; returns what `decode` needs."""
        x = x.to(torch.float32)
        sigma = _broadcast_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        with self._autocast(x.device):
            feats = self.model.encode(c_in * x, c_noise.flatten(), class_labels=self._labels(x, class_labels),
                                      augment_labels=augment_labels)
        return {"x": x, "c_skip": c_skip, "c_out": c_out, "feats": feats}

    def decode(self, state: dict) -> torch.Tensor:
        """Finish the denoiser from `encode`'s state with this model's decoder half."""
        with self._autocast(state["x"].device):
            F_x = self.model.decode(state["feats"])
        return state["c_skip"] * state["x"] + state["c_out"] * F_x.to(torch.float32)

    def forward(self, x, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        return self.decode(self.encode(x, sigma, class_labels, augment_labels))


class EDMPrecond(Precond):
    """EDM preconditioning (Karras et al. 2022, Table 1); used by the official edm-*-vp.pkl."""

    def __init__(self, model, label_dim=0, sigma_data=0.5, sigma_min=0.0, sigma_max=float("inf")):
        super().__init__(model, label_dim, sigma_min, sigma_max)
        self.sigma_data = sigma_data

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(Precond):
    """Variance-preserving preconditioning (Song et al. 2021, as written in EDM Table 1)."""

    def __init__(self, model, label_dim=0, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5):
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        super().__init__(model, label_dim, float(self.sigma(epsilon_t)), float(self.sigma(1)))

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


def compile_backbone(model: Precond, mode: str | None = None) -> Precond:
    """torch.compile the backbone's encoder and decoder halves in place and return the model.

    The module, its parameters and state-dict keys stay as they are (checkpoints, EMA copies and
    resume are unaffected); each new input shape compiles on its first call, so fixed shapes
    (a fixed batch) pay once. Numerics match eager mode to float rounding, not bit for bit.
    mode: torch.compile's mode; "reduce-overhead" replays CUDA graphs, whose outputs live in a
    pool that the next replay overwrites, so their outputs are cloned (the shared-encoder path
    holds the encoder's output across two decoder calls)."""
    backbone = model.model
    if not (hasattr(backbone, "encode") and hasattr(backbone, "decode")):
        from .errors import UserError
        raise UserError(f"{type(backbone).__name__} has no encode/decode halves to compile; drop --compile.")
    if not getattr(backbone, "_sims_compiled", False):
        backbone.encode = _compiled(backbone.encode, mode)
        backbone.decode = _compiled(backbone.decode, mode)
        backbone._sims_compiled = True
        backbone._sims_compile_mode = mode
    return model


def _compiled(fn, mode):
    compiled = torch.compile(fn, mode=mode)
    if mode != "reduce-overhead":
        return compiled
    return lambda *args, **kwargs: _clone_tensors(compiled(*args, **kwargs))


def _clone_tensors(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple (the UNet's features)
        return type(value)(*(_clone_tensors(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tensors(v) for v in value)
    return value


def strip_compiled(backbone: nn.Module) -> None:
    """Undo `compile_backbone` on a (copied) backbone: its halves run eagerly again."""
    if getattr(backbone, "_sims_compiled", False):
        for name in ("encode", "decode", "_sims_compiled", "_sims_compile_mode"):
            backbone.__dict__.pop(name, None)


PRECONDITIONERS = {"edm": EDMPrecond, "vp": VPPrecond}


def make_precond(kind: str, model: nn.Module, label_dim: int = 0, **kwargs) -> Precond:
    """Factory: 'edm' or 'vp'."""
    try:
        cls = PRECONDITIONERS[kind]
    except KeyError:
        raise ValueError(f"Unknown preconditioning '{kind}'; choose one of {sorted(PRECONDITIONERS)}.") from None
    return cls(model, label_dim=label_dim, **kwargs)


