"""Non-leaking geometric augmentation, as EDM trained its FFHQ-64 and CIFAR-10 models.

With probability-per-transform gates driven by one overall probability p (EDM: 0.15 for FFHQ-64,
0.12 for CIFAR-10), each training image is x-flipped, y-flipped, scaled, rotated, anisotropically
scaled and translated. The transform's parameters are handed to the network as 9 augment labels
(its `map_augment` input), so the network learns to denoise augmented images *as augmented*; at
sampling the labels are zero and the augmentations do not leak into the samples. That only
holds when the network reads the labels, so a network without `map_augment` is refused.

EDM's settings, used as defaults here: multipliers xflip 1e8 (so x-flips are drawn for every
image, each flipped with probability 1/2, whatever p is), yflip 1, scale 1, rotate_frac 1,
aniso 1, translate_frac 1; scale_std 0.2 and aniso_std 0.2 (log2 units), rotate_frac_max 1
(full circle), aniso_rotate_prob 0.5, translate_frac_std 0.125 (of the image size).

Augment label order (9 values, zeros for an unaugmented image):
    xflip, yflip, scale, cos(rot) - 1, sin(rot), aniso·cos(r), aniso·sin(r), translate x, translate y.

Our resampling is bilinear at the image's own resolution with reflected borders; EDM resamples on
a 2x grid with a wavelet low-pass filter to reduce aliasing, which matters more at 64x64 than 8x8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError

AUGMENT_DIM = 9
LABELS = ("xflip", "yflip", "scale", "rotate_cos_minus_1", "rotate_sin", "aniso_cos", "aniso_sin",
          "translate_x", "translate_y")

# EDM's published probabilities for its augmented recipes, by dataset resolution.
EDM_RECIPE_P = {64: 0.15, 32: 0.12}


@dataclass
class AugmentPipe:
    """Callable images (N, C, H, W) -> (augmented images, labels (N, 9)); EDM's geometric settings."""
    p: float
    xflip: float = 1e8
    yflip: float = 1.0
    scale: float = 1.0
    rotate_frac: float = 1.0
    aniso: float = 1.0
    translate_frac: float = 1.0
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    def __post_init__(self):
        if not 0 <= float(self.p) <= 1:
            raise UserError(f"augmentation probability must be in [0, 1] (got {self.p}).")

    def _gate(self, mult: float, n: int, g, device) -> torch.Tensor:
        """1 where this transform is applied to an image (probability min(mult * p, 1))."""
        return (torch.rand(n, generator=g, device=device) < mult * self.p).float()

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        n, _, h, w = images.shape
        dev, g = images.device, generator
        rand = lambda *s: torch.rand(*s, generator=g, device=dev)  # noqa: E731
        randn = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731

        # Flips: exact pixel moves.
        fx = (rand(n) < 0.5).float() * self._gate(self.xflip, n, g, dev)
        fy = (rand(n) < 0.5).float() * self._gate(self.yflip, n, g, dev)
        images = torch.where(fx.view(n, 1, 1, 1) > 0, images.flip(3), images)
        images = torch.where(fy.view(n, 1, 1, 1) > 0, images.flip(2), images)

        # Geometric parameters; each composes into the inverse map from output to input pixels.
        s = randn(n) * self._gate(self.scale, n, g, dev)
        rot = (rand(n) * 2 - 1) * math.pi * self.rotate_frac_max * self._gate(self.rotate_frac, n, g, dev)
        a = randn(n) * self._gate(self.aniso, n, g, dev)
        ar = (rand(n) * 2 - 1) * math.pi * (rand(n) < self.aniso_rotate_prob).float()
        t = randn(2, n) * self._gate(self.translate_frac, n, g, dev)
        labels = torch.stack([fx, fy, s, rot.cos() - 1, rot.sin(), a * ar.cos(), a * ar.sin(), t[0], t[1]], dim=1)

        inv = _scale(2 ** (-s * self.scale_std), 2 ** (-s * self.scale_std))
        inv = inv @ _rotate(rot)
        sa = 2 ** (a * self.aniso_std)
        inv = inv @ _rotate(-ar) @ _scale(1 / sa, sa) @ _rotate(ar)
        inv = inv @ _translate(-t[0] * w * self.translate_frac_std, -t[1] * h * self.translate_frac_std)
        moved = (s != 0) | (rot != 0) | (a != 0) | (t != 0).any(0)
        if moved.any():
            # Centred pixel coordinates -> grid_sample's [-1, 1] coordinates (align_corners=False).
            to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], device=dev))
            theta = (to_norm @ inv.to(dev) @ torch.linalg.inv(to_norm))[:, :2, :]
            grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
            warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            images = torch.where(moved.view(n, 1, 1, 1), warped, images)
        return images, labels


def _mat(rows) -> torch.Tensor:
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _scale(sx, sy):
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return _mat([[sx, z, z], [z, sy, z], [z, z, o]])


def _rotate(theta):
    z, o, c, s = torch.zeros_like(theta), torch.ones_like(theta), theta.cos(), theta.sin()
    return _mat([[c, -s, z], [s, c, z], [z, z, o]])


def _translate(tx, ty):
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    return _mat([[o, z, tx], [z, o, ty], [z, z, o]])


def check_network(net) -> None:
    """Refuse augmentation for a network that cannot read the labels (it would leak into samples)."""
    inner = getattr(net, "module", net)           # DDP
    inner = getattr(inner, "model", inner)         # Precond -> backbone
    mapper = getattr(inner, "map_augment", None)
    if mapper is None or getattr(mapper, "in_features", AUGMENT_DIM) != AUGMENT_DIM:
        raise UserError("augmentation needs a network that reads the 9 augment labels (SongUNet with "
                        "augment_dim=9, as EDM's FFHQ-64 and CIFAR-10 models); this one has none, so the "
                        "augmentations would leak into its samples. Set augment_p to 0 for it.")


def recipe_augment_p(meta: dict | None) -> tuple[float, str]:
    """The augmentation probability a checkpoint's recorded recipe used, and where that came from.

    Our checkpoints record it in training.config.augment_p. An imported EDM checkpoint whose
    network takes 9 augment labels was trained with augmentation: its p is the one recorded at
    import (provenance.augment_p) or else EDM's published value for its resolution.
    """
    if not meta:
        return 0.0, "no base checkpoint: off"
    config = (meta.get("training") or {}).get("config") or {}
    if config.get("augment_p") is not None:
        return float(config["augment_p"]), "the base checkpoint's training config"
    prov = meta.get("provenance") or {}
    net = (meta.get("model") or {}).get("network") or {}
    if prov.get("importer") == "edm_pickle" and int(net.get("augment_dim") or 0) == AUGMENT_DIM:
        if prov.get("augment_p") is not None:
            return float(prov["augment_p"]), "the imported EDM pickle's augment_pipe"
        res = int(net.get("img_resolution") or 0)
        if res in EDM_RECIPE_P:
            return EDM_RECIPE_P[res], f"EDM's published recipe at {res}x{res} (the network reads augment labels)"
        raise UserError(f"the imported EDM checkpoint takes augment labels but records no augmentation "
                        f"probability and its resolution ({res}) matches no published EDM recipe; "
                        "set augment_p explicitly (EDM used 0.12 for CIFAR-10 and 0.15 for FFHQ-64).")
    return 0.0, "the base's recipe did not use augmentation"


def resolve_augment_p(augment_p: float | None, init_checkpoint=None) -> tuple[float, str]:
    """The probability a run uses: the explicit setting, else the base checkpoint's recipe (0 from scratch)."""
    if augment_p is not None:
        return float(augment_p), "set explicitly"
    if init_checkpoint is None:
        return 0.0, "training from scratch: off unless set"
    from ..checkpoints.native import read_metadata

    return recipe_augment_p(read_metadata(init_checkpoint))
