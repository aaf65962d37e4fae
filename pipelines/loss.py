"""Training losses (EDM Sec. 5 / training/loss.py): stateless callables returning per-element loss.

With an `augment_pipe` (pipelines.training.augment), each batch is augmented first and the
network gets the transform's 9 augment labels; the loss is measured against the augmented
image, as in EDM. The pipe draws from the same per-chunk generator as sigma and noise, so a
resumed run repeats the same augmentations. Without one, nothing changes (not even the draws).
"""
from __future__ import annotations

import torch


def _sigma_shape(x: torch.Tensor) -> list[int]:
    return [x.shape[0]] + [1] * (x.ndim - 1)


class _Augmented:
    """Shared augmentation step of the losses."""
    augment_pipe = None
    _checked = False

    def _augment(self, net, images, augment_labels, generator):
        if self.augment_pipe is None or augment_labels is not None:
            return images, augment_labels
        if not self._checked:
            from .training.augment import check_network
            check_network(net)
            self._checked = True
        return self.augment_pipe(images, generator)


class EDMLoss(_Augmented):
    """ln(sigma) ~ N(P_mean, P_std^2); weight (sigma^2 + sigma_data^2) / (sigma*sigma_data)^2."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, augment_pipe=None):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data
        self.augment_pipe = augment_pipe

    def __call__(self, net, images, class_labels=None, augment_labels=None, generator=None):
        images, augment_labels = self._augment(net, images, augment_labels, generator)
        rnd_normal = torch.randn(_sigma_shape(images), device=images.device, generator=generator)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
        denoised = net(images + noise, sigma.flatten(), class_labels, augment_labels=augment_labels)
        return weight * (denoised - images) ** 2


class VPLoss(_Augmented):
    """t = 1 + u*(epsilon_t - 1), sigma = sigma_VP(t), weight 1/sigma^2 (EDM's VPLoss)."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, augment_pipe=None):
        self.beta_d, self.beta_min, self.epsilon_t = beta_d, beta_min, epsilon_t
        self.augment_pipe = augment_pipe

    def sigma(self, t):
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def __call__(self, net, images, class_labels=None, augment_labels=None, generator=None):
        images, augment_labels = self._augment(net, images, augment_labels, generator)
        rnd_uniform = torch.rand(_sigma_shape(images), device=images.device, generator=generator)
        sigma = self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))
        weight = 1 / sigma ** 2
        noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
        denoised = net(images + noise, sigma.flatten(), class_labels, augment_labels=augment_labels)
        return weight * (denoised - images) ** 2


LOSSES = {"edm": EDMLoss, "vp": VPLoss}


def make_loss(kind: str, augment_p: float = 0.0, **kwargs):
    """The loss matched to a preconditioning kind ('edm' or 'vp'); augment_p > 0 adds EDM's augmentation."""
    if kind not in LOSSES:
        raise ValueError(f"Unknown loss '{kind}'; choose one of {sorted(LOSSES)}.")
    if augment_p:
        from .training.augment import AugmentPipe
        kwargs["augment_pipe"] = AugmentPipe(p=float(augment_p))
    return LOSSES[kind](**kwargs)
