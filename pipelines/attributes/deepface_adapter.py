"""deepface on its PyTorch backend: gender (Woman/Man), race (6), age (binned), truly batched.

We do not call `DeepFace.analyze` per image. Each adapter builds its own client from deepface's
model class (`modeling.get_model_class(task="facial_attribute", model_name=...)()`), never the
one `modeling.build_model` caches for the whole process: moving or converting that shared client
would change every other user's model (two classifiers on two devices would fight over it). A batch is prepared the way
`analyze` prepares one face (RGB -> BGR, letterboxed to 224x224 with black bars, values in
[0, 1]) and goes through the client in one call: `client.predict((n, 224, 224, 3))` for gender
and race. The age client's `predict` collapses its 101-way distribution to one expected age, so
for age we run the same client network on the same batch and sum the 101 probabilities into
the age bins FairFace uses (classes '0-2' ... '70+').

Weights live in $DEEPFACE_HOME/.deepface/weights/ (DEEPFACE_HOME defaults to ~). We check the
file before asking deepface for the model, so a missing file is a clear error, never a download.
Faces: by default the whole image is analysed (deepface's detector_backend='skip', right for
face-aligned data such as FFHQ); `crop_faces=True` crops the largest MTCNN face box first (no
padding), close to what `DeepFace.analyze` does with a detector (it crops the detected box,
rotated level by the eyes).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Classifier, to_rgb
from .groupings import AGE_BINS, DEEPFACE_GENDER, DEEPFACE_RACE
from ..image_source import file_fingerprint

ENGINE_ENV = "DEEPFACE_BACKEND_ENGINE"
# task -> (deepface model name, weights file, our class names)
TASKS = {
    "gender": ("Gender", "gender_model_weights.pth", DEEPFACE_GENDER),
    "race": ("Race", "race_model_single_batch.pth", DEEPFACE_RACE),
    "age": ("Age", "age_model_weights.pth", AGE_BINS),
}
WEIGHTS_URL = "https://github.com/serengil/deepface_models/releases/download/v1.0/{file}"
# Lower edge (years) of each age bin; the 101 outputs are ages 0..100.
_AGE_EDGES = [0, 3, 10, 20, 30, 40, 50, 60, 70, 101]
INPUT_SIZE = 224


def weights_dir() -> Path:
    """deepface's weights folder: $DEEPFACE_HOME/.deepface/weights (DEEPFACE_HOME defaults to ~)."""
    return Path(os.getenv("DEEPFACE_HOME", os.path.expanduser("~"))) / ".deepface" / "weights"


def _require_weights(file: str) -> Path:
    path = weights_dir() / file
    if not path.is_file():
        raise UserError(f"deepface weights not found: {path}. Download {WEIGHTS_URL.format(file=file)} "
                        f"and put it in {path.parent}/ (set DEEPFACE_HOME to use another base folder)")
    return path


def _pytorch_engine():
    """Make deepface run on PyTorch (it caches its engine choice at first use)."""
    os.environ.setdefault(ENGINE_ENV, "pytorch")
    from deepface.commons import backend_utils

    engine = backend_utils.get_backend_engine()
    if engine != "pytorch":
        raise UserError(f"deepface is running on {engine}; set {ENGINE_ENV}=pytorch before starting")


def letterbox_bgr(x: torch.Tensor, size: int = INPUT_SIZE) -> np.ndarray:
    """float NCHW RGB [0, 1] -> (n, size, size, 3) BGR float32, aspect kept, black bars (deepface's resize_image)."""
    h, w = x.shape[-2:]
    f = min(size / h, size / w)
    nh, nw = int(h * f), int(w * f)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = (size - nh) // 2, (size - nw) // 2
    x = F.pad(x, (left, size - nw - left, top, size - nh - top))
    return x.flip(1).permute(0, 2, 3, 1).contiguous().cpu().numpy().astype(np.float32)


def bin_ages(p101: np.ndarray) -> np.ndarray:
    """(n, 101) probabilities of ages 0..100 -> (n, 9) probabilities of AGE_BINS."""
    return np.stack([p101[:, lo:hi].sum(axis=1) for lo, hi in zip(_AGE_EDGES[:-1], _AGE_EDGES[1:])], axis=1)


class DeepFaceClassifier(Classifier):
    """One deepface facial-attribute model (gender, race or age) as a batched Classifier."""

    def __init__(self, task: str, device=None, crop_faces: bool = False):
        if task not in TASKS:
            raise UserError(f"unknown deepface task {task!r}; choose one of {list(TASKS)}")
        super().__init__(device)
        model_name, file, classes = TASKS[task]
        self.task, self.name, self.classes = task, f"deepface-{task}", list(classes)
        self.weights = _require_weights(file)  # before deepface could try to download it
        self._cache_id = f"{self.name}:{file_fingerprint(self.weights)}:crop={crop_faces}"
        _pytorch_engine()
        from deepface.modules import modeling

        # Our own client (weights loaded from the checked file), not deepface's process-wide cached one.
        self.client = modeling.get_model_class(task="facial_attribute", model_name=model_name)()
        # deepface picks cuda:0 by itself; follow the device we were given.
        self.client.model.to(self.device).eval()
        self.client.device = self.device
        self.detector = None
        if crop_faces:
            from .facenet import MTCNNDetector

            self.detector = MTCNNDetector(device=self.device)

    def _faces(self, x: torch.Tensor) -> torch.Tensor:
        if self.detector is None:
            return x
        u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        crops, _ = self.detector.crop(u8, size=INPUT_SIZE, padding=0.0)
        return torch.from_numpy(crops).to(x.device).permute(0, 3, 1, 2).float() / 255

    def _predict_batch(self, x: torch.Tensor) -> np.ndarray:
        batch = letterbox_bgr(self._faces(to_rgb(x)))
        if self.task == "age":
            t = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
            return bin_ages(self.client.model(t).double().cpu().numpy())
        p = np.asarray(self.client.predict(batch), dtype=np.float64)
        return p.reshape(len(batch), len(self.classes))  # deepface drops the batch axis for n = 1


def factory(task):
    """Registry factory of one deepface task."""
    def make(device=None, crop_faces=False, **_ignored):
        return DeepFaceClassifier(task, device=device, crop_faces=crop_faces)
    return make

