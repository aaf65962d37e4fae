"""SIMS guided denoiser (SIMS Alg. 1 step 4): D = (1 + omega)*D_base - omega*D_aux.

Since s(x, sigma) = (D(x, sigma) - x)/sigma^2 and the weights sum to one, mixing denoisers
mixes scores the same way. Options from the paper's Appendix A:
- guidance interval: guide only while sigma_lo <= sigma <= sigma_hi, base alone elsewhere;
- shared encoder: the auxiliary model was fine-tuned decoder-only, so both decoders can
  reuse one pass of the base encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import UserError


def parse_omega(value) -> float:
    """Guidance weight from user input; refuses non-numbers with a message."""
    try:
        omega = float(value)
    except (TypeError, ValueError):
        raise UserError(f"omega must be a number such as 0, 1.5 or -1 (got {value!r}).") from None
    if omega != omega or abs(omega) == float("inf"):
        raise UserError(f"omega must be a finite number (got {value!r}).")
    return omega


@dataclass
class GuidanceCounts:
    """Network calls spent, for cost accounting and tests."""
    base: int = 0       # full base denoiser passes (or base decoder passes in shared mode)
    aux: int = 0        # full auxiliary passes (or aux decoder passes in shared mode)
    encoder: int = 0    # encoder passes in shared-encoder mode
    calls: int = 0      # denoiser evaluations requested by the sampler
    guided: int = 0     # of which inside the guidance interval


@dataclass
class SIMSDenoiser:
    """Callable denoiser mixing a base and an auxiliary model."""
    base: torch.nn.Module
    aux: torch.nn.Module | None
    omega: float = 0.0
    interval: tuple[float, float] | None = None  # (sigma_lo, sigma_hi); None = guide everywhere
    shared_encoder: bool = False
    counts: GuidanceCounts = field(default_factory=GuidanceCounts)

    def __post_init__(self):
        self.omega = parse_omega(self.omega)
        if self.interval is not None:
            lo, hi = (float(v) for v in self.interval)
            if not 0 <= lo <= hi:
                raise UserError(f"Guidance interval needs 0 <= sigma_lo <= sigma_hi (got {self.interval}).")
            self.interval = (lo, hi)
        if self.aux is None and self.omega != 0:
            raise UserError("omega != 0 needs an auxiliary model; load one or set omega to 0.")

    def in_interval(self, sigma: torch.Tensor) -> bool:
        if self.interval is None:
            return True
        s = float(sigma.reshape(-1)[0])
        return self.interval[0] <= s <= self.interval[1]

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        self.counts.calls += 1
        guided = self.omega != 0 and self.in_interval(sigma)
        if not guided:
            self.counts.base += 1
            return self.base(x, sigma, class_labels, augment_labels=augment_labels)
        self.counts.guided += 1
        if self.shared_encoder:
            self.counts.encoder += 1
            state = self.base.encode(x, sigma, class_labels, augment_labels)
            run_base = lambda: self.base.decode(state)  # noqa: E731
            run_aux = lambda: self.aux.decode(state)  # noqa: E731
        else:
            run_base = lambda: self.base(x, sigma, class_labels, augment_labels=augment_labels)  # noqa: E731
            run_aux = lambda: self.aux(x, sigma, class_labels, augment_labels=augment_labels)  # noqa: E731
        if self.omega == -1:  # exactly the auxiliary model, no base pass needed
            self.counts.aux += 1
            return run_aux()
        self.counts.base += 1
        self.counts.aux += 1
        return (1 + self.omega) * run_base() - self.omega * run_aux()
