"""FairFace (the SIMS paper's attribute classifier): torchvision ResNet-34 with an 18-way head.

Outputs [0:7] race (White, Black, Latino_Hispanic, East Asian, Southeast Asian, Indian, Middle
Eastern), [7:9] gender (Male, Female), [9:18] age bins; a softmax per slice. Each slice is its
own Classifier: 'fairface-race7', 'fairface-gender', 'fairface-age'; the three share one loaded
network. Preprocessing as FairFace's predict script: (optionally) a face crop, resize to 224,
ImageNet normalisation. FairFace crops with dlib's aligned chip (padding 0.25); we offer an
MTCNN crop with the same padding (`crop_faces=True`) and otherwise use the whole image, which
suits face-aligned data such as FFHQ.

Weights are the user's: `fairface_alldata_20191111.pt` (7 races) from the FairFace repository,
given as `weights=` / `--weights` or the SIMS_FAIRFACE_WEIGHTS environment variable.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Classifier, as_float01_nchw, register_classifier, resolve_device, to_rgb
from .groupings import AGE_BINS, FAIRFACE_GENDER, FAIRFACE_RACE7
from ..image_source import file_fingerprint

ENV_WEIGHTS = "SIMS_FAIRFACE_WEIGHTS"
WEIGHTS_FILE = "fairface_alldata_20191111.pt"
SOURCE = "https://github.com/joojs/fairface (README: 'Models' download link)"
HEADS = {"race7": (slice(0, 7), FAIRFACE_RACE7), "gender": (slice(7, 9), FAIRFACE_GENDER),
         "age": (slice(9, 18), AGE_BINS)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_weights(weights=None) -> Path:
    """The weights path from the argument or $SIMS_FAIRFACE_WEIGHTS; UserError naming what to do."""
    value = weights or os.environ.get(ENV_WEIGHTS)
    if not value:
        raise UserError(f"FairFace needs its weights file {WEIGHTS_FILE} (download from {SOURCE}); "
                        f"pass --weights /path/to/{WEIGHTS_FILE} or set {ENV_WEIGHTS}=/path/to/{WEIGHTS_FILE}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"FairFace weights not found at {path}; download {WEIGHTS_FILE} from {SOURCE} "
                        f"and put it there (or point --weights / {ENV_WEIGHTS} at it)")
    return path


def build_resnet34_18():
    """torchvision ResNet-34 with fc = Linear(512, 18), untrained (FairFace's architecture)."""
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Linear(512, 18)
    return net


def load_fairface_net(path: Path):
    """Build the network and load a FairFace state dict (weights_only; 'module.' prefixes stripped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is not a state dict
        raise UserError(f"{path} is not a loadable FairFace state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (18, 512):
        raise UserError(f"{path} is not a 7-race FairFace ResNet-34 checkpoint: fc.weight is "
                        f"{None if fc is None else tuple(fc.shape)}, expected (18, 512)")
    net = build_resnet34_18()
    net.load_state_dict(state)
    return net.eval()


class FairFaceModel:
    """One loaded FairFace network: images -> 18 logits (shared by the three head classifiers)."""

    def __init__(self, path: Path, device, crop_faces: bool = False):
        self.device = device
        self.net = load_fairface_net(path).to(device)
        self.detector = None
        if crop_faces:
            from .facenet import MTCNNDetector

            self.detector = MTCNNDetector(device=device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW [0, 1] -> (optional MTCNN crop) -> 224x224 ImageNet-normalised RGB."""
        x = to_rgb(x)
        if self.detector is not None:
            u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            crops, _ = self.detector.crop(u8, size=224, padding=0.25)
            x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255
        elif x.shape[-2:] != (224, 224):
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW [0, 1] -> (n, 18) raw outputs."""
        return self.net(self.preprocess(x))


_MODELS: dict[tuple, FairFaceModel] = {}


def _shared_model(path: Path, device, crop_faces: bool) -> FairFaceModel:
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device), crop_faces)
    if key not in _MODELS:
        _MODELS[key] = FairFaceModel(path, device, crop_faces)
    return _MODELS[key]


class FairFaceClassifier(Classifier):
    """One FairFace head (race7, gender or age) as a Classifier."""

    def __init__(self, head: str, weights=None, device=None, crop_faces: bool = False):
        if head not in HEADS:
            raise UserError(f"unknown FairFace head {head!r}; choose one of {list(HEADS)}")
        super().__init__(device)
        self.head = head
        self.name = f"fairface-{head}"
        self.slice, self.classes = HEADS[head][0], list(HEADS[head][1])
        path = resolve_weights(weights)
        self.model = _shared_model(path, self.device, crop_faces)
        self._cache_id = f"{self.name}:{file_fingerprint(path)}:crop={crop_faces}"

    def _predict_batch(self, x: torch.Tensor) -> np.ndarray:
        return torch.softmax(self.model.logits(x)[:, self.slice].double(), dim=1).cpu().numpy()


def predict_all_heads(images, weights=None, device=None, batch_size: int = 64,
                      crop_faces: bool = False) -> dict[str, np.ndarray]:
    """All three heads from one forward pass per batch: {'race7': (N, 7), 'gender': (N, 2), 'age': (N, 9)}."""
    device = resolve_device(device)
    model = _shared_model(resolve_weights(weights), device, crop_faces)
    out = {h: [np.zeros((0, len(classes)))] for h, (_, classes) in HEADS.items()}
    for start in range(0, int(images.shape[0]), batch_size):
        logits = model.logits(as_float01_nchw(images[start:start + batch_size], device)).double()
        for h, (sl, _) in HEADS.items():
            out[h].append(torch.softmax(logits[:, sl], dim=1).cpu().numpy())
    return {h: np.concatenate(v) for h, v in out.items()}


def _factory(head):
    def make(weights=None, device=None, crop_faces=False, **_ignored):
        return FairFaceClassifier(head, weights=weights, device=resolve_device(device), crop_faces=crop_faces)
    return make


register_classifier("fairface-race7", _factory("race7"), "FairFace ResNet-34, 7 races (your weights file)")
register_classifier("fairface-gender", _factory("gender"), "FairFace ResNet-34, Male/Female (your weights file)")
register_classifier("fairface-age", _factory("age"), "FairFace ResNet-34, 9 age bins (your weights file)")
