"""Exponential moving average of weights with EDM's half-life rule (EDM training_loop)."""
from __future__ import annotations

import torch
from torch import nn


def ema_beta(nimg: int, batch_size: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """Decay for one step at `nimg` images seen: half-life = min(halflife, ratio * nimg) images,
    beta = 0.5 ** (batch / half-life), so the weight of a step halves every half-life images."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- ema + (1 - beta) * (net - ema) for trainable parameters; frozen ones stay bit-identical."""
    pairs = [(p_ema, p_net.detach()) for p_ema, p_net in zip(ema.parameters(), net.parameters())
             if p_net.requires_grad]
    if pairs:
        # One fused call over all tensors (hundreds of kernel launches fewer per step on GPUs).
        torch._foreach_lerp_([e for e, _ in pairs], [n for _, n in pairs], 1.0 - beta)
