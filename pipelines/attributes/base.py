"""Classifier interface, input normalisation and the face gate.

A classifier maps a batch of images to probabilities over named classes:
`predict_proba(images, batch_size=64) -> (N, K)` float64, each row summing to 1.
Images are accepted as uint8 NHWC numpy arrays (any H, W; C = 1 or 3; an NHW array is read as
grey) or as float torch NCHW tensors in [-1, 1] (the engine's convention). Subclasses only
implement `_predict_batch` on float NCHW in [0, 1]; batching, conversion, eval mode and
no-grad live here, so every plug-in is batched and deterministic the same way.

The plug-ins are listed in `registry.py`; this module knows none of them.

Face gate: `FaceGate(classifier, detector)` appends a final class column 'no_face'. A row for an
image in which the detector finds no face is one-hot on 'no_face'; other rows carry the wrapped
classifier's probabilities with 0 in 'no_face'. Rows still sum to 1, and groupings treat
'no_face' as its own label, excluded from group fractions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import UserError

NO_FACE = "no_face"


# ----------------------------------------------------------------------------
# Input normalisation


def _check_uint8(images: np.ndarray) -> np.ndarray:
    """Validate a uint8 image array and return it as NHWC."""
    if images.dtype != np.uint8:
        raise UserError(f"numpy images must be uint8 (0..255), got dtype {images.dtype}; "
                        "pass float images as a torch NCHW tensor in [-1, 1]")
    if images.ndim == 3:  # NHW grey
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"numpy images must be NHWC with C = 1 or 3, got shape {images.shape}")
    return images


def _check_tensor(images: torch.Tensor) -> torch.Tensor:
    """Validate a float NCHW tensor in [-1, 1]."""
    if not images.is_floating_point():
        raise UserError(f"torch images must be float NCHW in [-1, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"torch images must be NCHW with C = 1 or 3, got shape {tuple(images.shape)}")
    return images


def as_uint8_nhwc(images) -> np.ndarray:
    """Any accepted image batch -> uint8 NHWC numpy (C = 1 or 3), EDM's rounding rule."""
    if isinstance(images, torch.Tensor):
        x = _check_tensor(images).detach().float()
        return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return _check_uint8(np.asarray(images))


def as_float01_nchw(images, device="cpu") -> torch.Tensor:
    """Any accepted image batch -> float32 NCHW tensor in [0, 1] on `device`."""
    if isinstance(images, torch.Tensor):
        x = _check_tensor(images).detach().to(device=device, dtype=torch.float32)
        return ((x + 1) / 2).clamp(0, 1)
    x = torch.from_numpy(np.ascontiguousarray(_check_uint8(np.asarray(images))))
    return x.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """NCHW with C = 1 or 3 -> C = 3 (grey repeated)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """NCHW with C = 1 or 3 -> C = 1 (ITU-R 601 luma, as PIL's 'L' conversion)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def batch_count(images) -> int:
    """Number of images in an accepted batch."""
    return int(images.shape[0])


def resolve_device(device=None) -> torch.device:
    """None -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------
# Interface


@dataclass(frozen=True)
class FeatureSpace:
    """The features a classifier's Fréchet distances are measured in, and the name they are reported under."""

    metric: str  # "FID" (Inception) or e.g. "FD-digits" (never called FID)
    kind: str    # the feature extractor: "inception", "digits"
    dims: int


INCEPTION = FeatureSpace("FID", "inception", 2048)


class Classifier:
    """Images -> probabilities over `classes` (subclasses implement `_predict_batch`).

    `feature_space` says how Fréchet distances of images this classifier groups are measured:
    clean-fid Inception (FID) unless a plug-in brings its own features (then `feature_extractor()`).
    """

    name: str = ""
    classes: list[str] = []
    feature_space: FeatureSpace = INCEPTION

    def __init__(self, device=None):
        self.device = resolve_device(device)

    def _predict_batch(self, x: torch.Tensor) -> np.ndarray:
        """float NCHW in [0, 1] on self.device -> (n, K) probabilities."""
        raise NotImplementedError

    @torch.inference_mode()
    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """(N, K) float64 probabilities over `self.classes`, computed in batches."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        n = batch_count(images)
        out = [np.zeros((0, len(self.classes)))]
        for start in range(0, n, batch_size):
            x = as_float01_nchw(images[start:start + batch_size], self.device)
            p = np.asarray(self._predict_batch(x), dtype=np.float64).reshape(x.shape[0], len(self.classes))
            out.append(p)
        return np.concatenate(out)

    @property
    def cache_id(self) -> str:
        """Identifies this classifier and its weights in cache keys (plug-ins set `_cache_id`)."""
        return getattr(self, "_cache_id", self.name)

    def feature_extractor(self):
        """A classifier whose `feature_space` is its own returns its extractor here (metrics.fid's contract:
        metric, dims, feature_id, __call__, features_of_batches); `metrics.fid.extractor_for` builds
        Inception for the others."""
        raise NotImplementedError(f"{self.name} measures in {self.feature_space.kind} features, not its own")

    def predict(self, images, batch_size: int = 64) -> np.ndarray:
        """Most probable class name per image."""
        p = self.predict_proba(images, batch_size)
        return np.asarray(self.classes, dtype=object)[p.argmax(axis=1)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, classes={self.classes}, device={self.device})"


class FaceDetector(Protocol):
    """Anything that says which images show a face."""

    def has_face(self, images) -> np.ndarray:
        """Boolean (N,) mask: True where a face is detected."""


class FaceGate(Classifier):
    """Wraps a classifier: images without a detectable face get a one-hot 'no_face' row."""

    def __init__(self, inner: Classifier, detector: FaceDetector):
        self.inner, self.detector = inner, detector
        self.device = inner.device
        self.name = f"{inner.name}+face-gate"
        self.classes = list(inner.classes) + [NO_FACE]
        self.feature_space = inner.feature_space
        self._cache_id = f"{inner.cache_id}+face-gate:{getattr(detector, 'cache_id', type(detector).__name__)}"

    def feature_extractor(self):
        """The wrapped classifier's features."""
        return self.inner.feature_extractor()

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """Inner probabilities for images with a face, one-hot 'no_face' for the others."""
        n = batch_count(images)
        out = np.zeros((n, len(self.classes)))
        out[:, -1] = 1.0
        mask = np.asarray(self.detector.has_face(images), dtype=bool)
        idx = np.flatnonzero(mask)
        if idx.size:
            sub = images[torch.from_numpy(idx)] if isinstance(images, torch.Tensor) else images[idx]
            out[idx, :-1] = self.inner.predict_proba(sub, batch_size)
            out[idx, -1] = 0.0
        return out
