"""FairFace (the SIMS paper's attribute classifier): torchvision ResNet-34 with an 18-way head.

FairFace publishes two checkpoints of this one architecture, and nothing in the weights says which
is which:
- the 7-race model (`res34_fair_align_multi_7_20190809.pt`; earlier name `fairface_alldata_20191111.pt`):
  outputs [0:7] race (White, Black, Latino_Hispanic, East Asian, Southeast Asian, Indian, Middle
  Eastern), [7:9] gender (Male, Female), [9:18] age bins; a softmax per slice;
- the 4-race model (`res34_fair_align_multi_4_20190809.pt`; earlier name `fairface_alldata_4race_20191111.pt`):
  upstream's predict.py reads only its first 4 outputs, race (White, Black, Asian, Indian), and
  takes gender and age from the 7-race model.
The variant comes from the file name, or from the user (`variant=` / $SIMS_FAIRFACE_VARIANT); a file
of another name without a stated variant is refused, and a 4-race file never feeds the race7,
gender or age heads. Classifiers: 'fairface-race7', 'fairface-gender', 'fairface-age' (7-race
file) and 'fairface-race4' (4-race file).

Preprocessing as FairFace's predict script: resize to 224, ImageNet normalisation. Its published
accuracy is on dlib's aligned face chips (padding 0.25); `crop_faces=True` makes that framing from
MTCNN's landmarks (align.py); otherwise the whole image is used, which suits face-aligned data
such as FFHQ.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Classifier, as_float01_nchw, resolve_device, to_rgb
from .groupings import AGE_BINS, FAIRFACE_GENDER, FAIRFACE_RACE7
from ..image_source import file_fingerprint

ENV_WEIGHTS = "SIMS_FAIRFACE_WEIGHTS"
ENV_VARIANT = "SIMS_FAIRFACE_VARIANT"
FAIRFACE_RACE4 = ["White", "Black", "Asian", "Indian"]
# variant -> published file names (current first)
FILES = {"race7": ("res34_fair_align_multi_7_20190809.pt", "fairface_alldata_20191111.pt"),
         "race4": ("res34_fair_align_multi_4_20190809.pt", "fairface_alldata_4race_20191111.pt")}
WEIGHTS_FILE = FILES["race7"][0]
SOURCE = ("the Google Drive folder linked under 'Download our models' in https://github.com/dchen236/FairFace "
          "(README)")
README_SECTION = "README.md, section 'FairFace weights: 7-race and 4-race'"
# head -> (logit slice, classes, variant whose file provides it)
HEADS = {"race7": (slice(0, 7), FAIRFACE_RACE7, "race7"), "gender": (slice(7, 9), FAIRFACE_GENDER, "race7"),
         "age": (slice(9, 18), AGE_BINS, "race7"), "race4": (slice(0, 4), FAIRFACE_RACE4, "race4")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _missing_message(variant: str) -> str:
    names = " or ".join(FILES[variant])
    return (f"FairFace's {variant[4:]}-race model ({names}) is published in {SOURCE}; the 7-race file "
            f"gives race7/gender/age, the 4-race file gives race4. See {README_SECTION}.")


def resolve_weights(weights=None, variant: str = "race7") -> Path:
    """The weights path from the argument or $SIMS_FAIRFACE_WEIGHTS; UserError naming what to do."""
    value = weights or os.environ.get(ENV_WEIGHTS)
    if not value:
        raise UserError(f"FairFace needs its weights file. {_missing_message(variant)} Pass --weights "
                        f"/path/to/{FILES[variant][0]} or set {ENV_WEIGHTS}=/path/to/{FILES[variant][0]}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"FairFace weights not found at {path}. {_missing_message(variant)} Put the file there "
                        f"(or point --weights / {ENV_WEIGHTS} at it)")
    return path


def detect_variant(path: Path, stated: str | None = None) -> str:
    """'race7' or 'race4' from the file name and/or the user's statement; UserError when unsure or contradictory."""
    stated = stated or os.environ.get(ENV_VARIANT) or None
    if stated is not None and stated not in FILES:
        raise UserError(f"FairFace variant must be 'race7' or 'race4' (got {stated!r}).")
    by_name = next((v for v, names in FILES.items() if Path(path).name in names), None)
    if by_name and stated and by_name != stated:
        raise UserError(f"{path.name} is FairFace's {by_name[4:]}-race model, but the {stated[4:]}-race variant "
                        f"was stated; pass the right file or drop the statement.")
    if by_name or stated:
        return by_name or stated
    raise UserError(f"Cannot tell which FairFace model {path} is: the 7-race and the 4-race checkpoints both "
                    f"have an 18-way head. Keep the published file name ({' / '.join(FILES['race7'] + FILES['race4'])}) "
                    f"or state the variant: {ENV_VARIANT}=race7 or race4 (Python: variant='race7').")


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
        raise UserError(f"{path} is not a FairFace ResNet-34 checkpoint: fc.weight is "
                        f"{None if fc is None else tuple(fc.shape)}, expected (18, 512)")
    net = build_resnet34_18()
    net.load_state_dict(state)
    return net.eval()


class FairFaceModel:
    """One loaded FairFace network: images -> 18 logits (shared by the head classifiers of one file)."""

    def __init__(self, path: Path, device, crop_faces: bool = False, variant: str = "race7"):
        self.device, self.variant = device, variant
        self.net = load_fairface_net(path).to(device)
        self.detector = None
        if crop_faces:
            from .facenet import MTCNNDetector

            self.detector = MTCNNDetector(device=device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW [0, 1] -> (optional aligned chip, as FairFace's) -> 224x224 ImageNet-normalised RGB."""
        from .align import FAIRFACE_CHIP, FAIRFACE_PADDING
        x = to_rgb(x)
        if self.detector is not None:
            u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            chips, _ = self.detector.aligned(u8, size=FAIRFACE_CHIP, padding=FAIRFACE_PADDING)
            x = torch.from_numpy(chips).to(self.device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-2:] != (224, 224):
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float NCHW [0, 1] -> (n, 18) raw outputs."""
        return self.net(self.preprocess(x))


_MODELS: dict[tuple, FairFaceModel] = {}


def _shared_model(path: Path, device, crop_faces: bool, variant: str) -> FairFaceModel:
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device), crop_faces, variant)
    if key not in _MODELS:
        _MODELS[key] = FairFaceModel(path, device, crop_faces, variant)
    return _MODELS[key]


class FairFaceClassifier(Classifier):
    """One FairFace head (race7, gender, age from the 7-race file; race4 from the 4-race file)."""

    def __init__(self, head: str, weights=None, device=None, crop_faces: bool = False, variant: str | None = None):
        if head not in HEADS:
            raise UserError(f"unknown FairFace head {head!r}; choose one of {list(HEADS)}")
        super().__init__(device)
        self.head = head
        self.name = f"fairface-{head}"
        self.slice, self.classes, needs = HEADS[head][0], list(HEADS[head][1]), HEADS[head][2]
        path = resolve_weights(weights, needs)
        found = detect_variant(path, variant)
        if found != needs:
            raise UserError(f"{self.name} needs FairFace's {needs[4:]}-race model, but {path.name} is the "
                            f"{found[4:]}-race one" + (" (upstream reads gender and age from the 7-race model "
                                                      "only; the 4-race file gives race4)" if needs == "race7" else "")
                            + f". {_missing_message(needs)}")
        self.variant = found
        self.model = _shared_model(path, self.device, crop_faces, found)
        self._cache_id = f"{self.name}:{file_fingerprint(path)}:{found}:crop={'aligned' if crop_faces else 0}"

    def _predict_batch(self, x: torch.Tensor) -> np.ndarray:
        return torch.softmax(self.model.logits(x)[:, self.slice].double(), dim=1).cpu().numpy()


def predict_all_heads(images, weights=None, device=None, batch_size: int = 64, crop_faces: bool = False,
                      variant: str | None = None) -> dict[str, np.ndarray]:
    """Every head the file has, one forward pass per batch: 7-race file {'race7': (N, 7), 'gender': (N, 2),
    'age': (N, 9)}; 4-race file {'race4': (N, 4)}."""
    device = resolve_device(device)
    path = resolve_weights(weights)
    found = detect_variant(path, variant)
    model = _shared_model(path, device, crop_faces, found)
    heads = {h: v for h, v in HEADS.items() if v[2] == found}
    out = {h: [np.zeros((0, len(classes)))] for h, (_, classes, _) in heads.items()}
    for start in range(0, int(images.shape[0]), batch_size):
        logits = model.logits(as_float01_nchw(images[start:start + batch_size], device)).double()
        for h, (sl, _, _) in heads.items():
            out[h].append(torch.softmax(logits[:, sl], dim=1).cpu().numpy())
    return {h: np.concatenate(v) for h, v in out.items()}


def factory(head):
    """Registry factory of one FairFace head."""
    def make(weights=None, device=None, crop_faces=False, variant=None, **_ignored):
        return FairFaceClassifier(head, weights=weights, device=resolve_device(device), crop_faces=crop_faces,
                                  variant=variant)
    return make

