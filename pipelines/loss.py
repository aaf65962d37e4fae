"""Training losses (EDM Sec. 5 / training/loss.py): stateless callables returning per-element loss."""
from __future__ import annotations

import torch


def _sigma_shape(x: torch.Tensor) -> list[int]:
    return [x.shape[0]] + [1] * (x.ndim - 1)


class EDMLoss:
    """ln(sigma) ~ N(P_mean, P_std^2); weight (sigma^2 + sigma_data^2) / (sigma*sigma_data)^2."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, net, images, class_labels=None, augment_labels=None, generator=None):
        rnd_normal = torch.randn(_sigma_shape(images), device=images.device, generator=generator)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
        denoised = net(images + noise, sigma.flatten(), class_labels, augment_labels=augment_labels)
        return weight * (denoised - images) ** 2


class VPLoss:
    """t = 1 + u*(epsilon_t - 1), sigma = sigma_VP(t), weight 1/sigma^2 (EDM's VPLoss)."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        self.beta_d, self.beta_min, self.epsilon_t = beta_d, beta_min, epsilon_t

    def sigma(self, t):
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def __call__(self, net, images, class_labels=None, augment_labels=None, generator=None):
        rnd_uniform = torch.rand(_sigma_shape(images), device=images.device, generator=generator)
        sigma = self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))
        weight = 1 / sigma ** 2
        noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
        denoised = net(images + noise, sigma.flatten(), class_labels, augment_labels=augment_labels)
        return weight * (denoised - images) ** 2


LOSSES = {"edm": EDMLoss, "vp": VPLoss}


def make_loss(kind: str, **kwargs):
    """The loss matched to a preconditioning kind ('edm' or 'vp')."""
    if kind not in LOSSES:
        raise ValueError(f"Unknown loss '{kind}'; choose one of {sorted(LOSSES)}.")
    return LOSSES[kind](**kwargs)
