"""Aligned face chips from MTCNN's five landmarks (similarity transform), dlib-style.

FairFace was trained and evaluated on dlib's aligned chips: `dlib.get_face_chips(img, faces,
size=300, padding=0.25)` maps dlib's 5-point landmarks (eye corners, nose base) onto a fixed
template in the unit square, widened by `padding` on every side: t' = (padding + t)/(1 + 2*padding).
MTCNN gives other points (eye centres, nose tip, mouth corners), so we align its two eye centres
onto the centres of the template's eye-corner pairs: two point pairs fix a similarity (rotation,
uniform scale, translation) exactly. The nose point differs in meaning between the two detectors
(tip vs base) and is not used. The chip is sampled bilinearly; pixels outside the image are black,
as in dlib's extract_image_chip.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# dlib's 5-point chip template (get_face_chip_details): the subject's left eye outer and inner
# corner (image right), the subject's right eye outer and inner corner (image left), nose base.
DLIB_TEMPLATE5 = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                           [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                           [0.4901123135679, 0.6277975316475]])
# Eye centres on the template, image-left eye first (MTCNN's landmark order).
TEMPLATE_EYES = np.stack([DLIB_TEMPLATE5[2:4].mean(0), DLIB_TEMPLATE5[0:2].mean(0)])
FAIRFACE_PADDING = 0.25
FAIRFACE_CHIP = 300  # FairFace's predict script: chips of 300 px, then resized to 224


def template_eyes(size: int, padding: float) -> np.ndarray:
    """(2, 2) pixel positions of the eye centres in a chip of `size` with `padding`."""
    return (padding + TEMPLATE_EYES) / (1 + 2 * padding) * size


def similarity_from_eyes(eyes_src: np.ndarray, eyes_dst: np.ndarray) -> np.ndarray:
    """2x3 matrix M mapping source points to destination points (M @ [x, y, 1]) by a similarity."""
    s = np.asarray(eyes_src, float)
    d = np.asarray(eyes_dst, float)
    vs, vd = s[1] - s[0], d[1] - d[0]
    # complex ratio vd / vs = scale * e^{i angle}
    z = complex(*vd) / complex(*vs)
    a, b = z.real, z.imag
    rot = np.array([[a, -b], [b, a]])
    t = d[0] - rot @ s[0]
    return np.hstack([rot, t[:, None]])


def warp_chip(image: torch.Tensor, M: np.ndarray, size: int) -> torch.Tensor:
    """Sample a size x size chip from one float CHW image through the similarity M (image -> chip)."""
    inv = np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2]  # chip pixel -> image pixel
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.from_numpy(inv).T  # (size, size, 2) image px
    grid = torch.stack([(pts[..., 0] + 0.5) / w * 2 - 1, (pts[..., 1] + 0.5) / h * 2 - 1], -1)
    return F.grid_sample(image[None].float(), grid[None].to(image.device, torch.float32), mode="bilinear",
                         padding_mode="zeros", align_corners=False)[0]


def aligned_chips(images_u8: np.ndarray, eyes: list, size: int = FAIRFACE_CHIP,
                  padding: float = FAIRFACE_PADDING) -> np.ndarray:
    """uint8 NHWC images + per image (2, 2) eye centres (image-left first) or None -> uint8 chips.

    An image without eyes (no face found) is resized whole, and the caller records that."""
    out = []
    dst = template_eyes(size, padding)
    for img, e in zip(images_u8, eyes):
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
        if e is None:
            chip = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        else:
            chip = warp_chip(t, similarity_from_eyes(e, dst), size)
        out.append(chip.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    return np.stack(out) if out else np.zeros((0, size, size, images_u8.shape[-1]), np.uint8)
