"""facenet-pytorch plug-ins: MTCNN face gate and crops, InceptionResnetV1 embeddings, a linear probe.

- `MTCNNDetector`: MTCNN (weights ship inside facenet-pytorch) as the FaceGate detector and as a
  face cropper for FairFace/deepface. A face counts when MTCNN's final-stage probability is
  >= `min_prob`. Images below 24 px on their short side are upscaled first (MTCNN's smallest
  window is 12 px at the finest pyramid level, the face must cover a few of them).
- `FacenetEmbedder`: 512-d L2-normalised InceptionResnetV1 embeddings from the vggface2 weights
  in $TORCH_HOME/checkpoints/20180402-114759-vggface2.pt (never downloaded here).
- `LinearProbe`: multinomial logistic regression on any features (facenet embeddings, HOG, the
  digits classifier's `feature_extractor()`) trained from a user's manual labels; `add_labels` retrains.
  Saved as npz (no pickle). `ProbeClassifier` = feature extractor + probe, listed as
  'facenet-probe' (the probe file says which features it was trained on).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Classifier, as_float01_nchw, as_uint8_nhwc, resolve_device, to_rgb

VGGFACE2_FILE = "20180402-114759-vggface2.pt"
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
MIN_DETECT_SIDE = 24


def _import_facenet():
    try:
        import facenet_pytorch
    except ImportError as e:
        raise UserError("facenet-pytorch is not installed; install it with "
                        "`pip install --no-deps facenet-pytorch==2.6.0` (its pins are too old for our torch)") from e
    return facenet_pytorch


# ----------------------------------------------------------------------------
# MTCNN


class MTCNNDetector:
    """MTCNN face detection: has_face mask, boxes, and square face crops."""

    def __init__(self, min_prob: float = 0.9, min_face_size: int = 20, device=None):
        self.device = resolve_device(device)
        self.min_prob = min_prob
        self.mtcnn = _import_facenet().MTCNN(keep_all=True, min_face_size=min_face_size, device=self.device)

    def _rgb_for_detection(self, images) -> tuple[np.ndarray, float]:
        """uint8 RGB NHWC, upscaled when tiny; returns the scale applied."""
        x = as_uint8_nhwc(images)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        short = min(x.shape[1:3])
        if short >= MIN_DETECT_SIDE:
            return x, 1.0
        scale = MIN_DETECT_SIDE / short
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False)
        return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(), scale

    def detect(self, images) -> tuple[list, np.ndarray]:
        """(per image: (k, 4) boxes in input pixels of faces with prob >= min_prob, best prob per image)."""
        x, scale = self._rgb_for_detection(images)
        if len(x) == 0:
            return [], np.zeros(0)
        boxes, probs = self.mtcnn.detect(x)
        out_boxes, best = [], np.zeros(len(x))
        for i, (b, p) in enumerate(zip(boxes, probs)):
            if b is None or p is None or len(p) == 0 or p[0] is None:
                out_boxes.append(np.zeros((0, 4)))
                continue
            p = np.asarray(p, dtype=np.float64)
            keep = p >= self.min_prob
            out_boxes.append(np.asarray(b, dtype=np.float64)[keep] / scale)
            best[i] = p.max()
        return out_boxes, best

    def eyes(self, images) -> list:
        """Per image the eye centres (2, 2), image-left first, of the largest face with prob >= min_prob, or None."""
        x, scale = self._rgb_for_detection(images)
        if len(x) == 0:
            return []
        boxes, probs, points = self.mtcnn.detect(x, landmarks=True)
        out = []
        for b, p, pts in zip(boxes, probs, points):
            if b is None or p is None or pts is None:
                out.append(None)
                continue
            keep = [i for i, pi in enumerate(p) if pi is not None and pi >= self.min_prob]
            if not keep:
                out.append(None)
                continue
            i = max(keep, key=lambda k: (b[k][2] - b[k][0]) * (b[k][3] - b[k][1]))
            out.append(np.asarray(pts[i][:2], dtype=np.float64) / scale)
        return out

    def aligned(self, images, size: int, padding: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """dlib-style aligned chips of the largest face (see align.py); (chips uint8 NHWC, face found mask).
        Images without a face are resized whole; the mask says which."""
        from .align import aligned_chips

        x = as_uint8_nhwc(images)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        eyes = self.eyes(x)
        return aligned_chips(x, eyes, size, padding), np.array([e is not None for e in eyes], dtype=bool)

    def has_face(self, images) -> np.ndarray:
        """Boolean (N,) mask: MTCNN finds a face with probability >= min_prob."""
        boxes, _ = self.detect(images)
        return np.array([len(b) > 0 for b in boxes], dtype=bool)

    def crop(self, images, size: int, padding: float = 0.25, square: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Crops of the largest face (box widened by `padding` per side; square unless `square=False`, which
        is facenet-pytorch's own crop of the box as is) resized to size; whole image where none."""
        x = as_uint8_nhwc(images)
        boxes, _ = self.detect(x)
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        crops, found = [], np.zeros(len(x), dtype=bool)
        for i, b in enumerate(boxes):
            img = t[i:i + 1]
            if len(b):
                found[i] = True
                x0, y0, x1, y1 = max(b, key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                hw = (max(x1 - x0, y1 - y0) if square else x1 - x0) * (0.5 + padding)
                hh = (max(x1 - x0, y1 - y0) if square else y1 - y0) * (0.5 + padding)
                y_lo, y_hi = int(max(0, cy - hh)), int(min(x.shape[1], cy + hh))
                x_lo, x_hi = int(max(0, cx - hw)), int(min(x.shape[2], cx + hw))
                img = img[..., y_lo:max(y_hi, y_lo + 1), x_lo:max(x_hi, x_lo + 1)]
            crops.append(F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
        out = torch.cat(crops).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out, found


# ----------------------------------------------------------------------------
# Embeddings and simple offline features


def torch_home() -> Path:
    """$TORCH_HOME, or $XDG_CACHE_HOME/torch, or ~/.cache/torch (facenet-pytorch's rule)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


class FacenetEmbedder:
    """InceptionResnetV1 (vggface2) -> 512-d L2-normalised embeddings of 160x160 face crops.

    As in facenet-pytorch's own pipeline (MTCNN(image_size=160, margin=0) then the network), each
    image is cut to MTCNN's box of its largest face and resized to 160x160; `crop_faces=False`
    embeds the whole image instead (for sets that are already face crops). Images where MTCNN finds
    no face are embedded whole and counted in `last_no_face`."""

    feature_name = "facenet"

    def __init__(self, weights=None, device=None, crop_faces: bool = True):
        path = Path(weights) if weights else torch_home() / "checkpoints" / VGGFACE2_FILE
        if not path.is_file():
            raise UserError(f"facenet weights not found: {path}. Download {VGGFACE2_URL} and put it in "
                            f"{path.parent}/ (or set TORCH_HOME so that $TORCH_HOME/checkpoints/{VGGFACE2_FILE} exists)")
        self.device = resolve_device(device)
        net = _import_facenet().InceptionResnetV1(pretrained=None, classify=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The vggface2 file carries an 8631-way identity head we do not use.
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        net.load_state_dict(state)
        self.net = net.to(self.device).eval()
        self.detector = MTCNNDetector(device=self.device) if crop_faces else None
        self.framing = "mtcnn crop" if crop_faces else "whole image"
        self.last_no_face = 0

    @torch.inference_mode()
    def __call__(self, images, batch_size: int = 64) -> np.ndarray:
        """(N, 512) float64 embeddings of the MTCNN face crops, resized to 160 and standardised as facenet expects."""
        out = [np.zeros((0, 512))]
        self.last_no_face = 0
        for start in range(0, int(images.shape[0]), batch_size):
            batch = images[start:start + batch_size]
            if self.detector is not None:
                batch, found = self.detector.crop(as_uint8_nhwc(batch), size=160, padding=0.0, square=False)
                self.last_no_face += int((~found).sum())
            x = to_rgb(as_float01_nchw(batch, self.device))
            x = F.interpolate(x, size=(160, 160), mode="bilinear", align_corners=False, antialias=True)
            out.append(self.net((x * 255 - 127.5) / 128.0).double().cpu().numpy())
        return np.concatenate(out)


class HogFeatures:
    """Histogram-of-oriented-gradients features (scikit-image) on grey images resized to `size`."""

    feature_name = "hog"

    def __init__(self, size: int = 32, pixels_per_cell: int = 8):
        self.size, self.ppc = size, pixels_per_cell

    def __call__(self, images, batch_size: int = 256) -> np.ndarray:
        """(N, F) float64 HOG descriptors."""
        from skimage.feature import hog

        x = as_float01_nchw(images)
        x = x.mean(dim=1, keepdim=True) if x.shape[1] == 3 else x
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return np.stack([hog(im[0].numpy(), pixels_per_cell=(self.ppc, self.ppc), cells_per_block=(2, 2))
                         for im in x]).astype(np.float64)


def _digits_features(weights=None, device=None):
    from .digits import load_digits_classifier  # the demo classifier's own extractor (FD-digits features)

    return load_digits_classifier(weights, device=device).feature_extractor()


FEATURES = {"facenet": FacenetEmbedder, "hog": HogFeatures, "digits": _digits_features}


def make_features(name: str, device=None, weights=None):
    """Feature extractor by name: 'facenet' (vggface2 embeddings), 'hog', or 'digits'."""
    if name not in FEATURES:
        raise UserError(f"unknown probe features {name!r}; choose one of {list(FEATURES)}")
    if name == "hog":
        return HogFeatures()
    return FEATURES[name](weights=weights, device=device)


# ----------------------------------------------------------------------------
# Linear probe


class LinearProbe:
    """Logistic regression on standardised features, trained from manual labels; retrain as labels come."""

    def __init__(self, classes=None, min_per_class: int = 2, C: float = 1.0, feature_name: str = ""):
        self.classes = list(classes) if classes is not None else None
        self.min_per_class, self.C, self.feature_name = min_per_class, C, feature_name
        self._x = np.zeros((0, 0))
        self._y: list[str] = []
        self.coef_ = self.intercept_ = self.mean_ = self.scale_ = None

    @property
    def n_labels(self) -> int:
        """Number of labelled examples the probe was trained on."""
        return len(self._y)

    def _check_labels(self, labels) -> list[str]:
        labels = [str(lab) for lab in labels]
        classes = self.classes or sorted(set(labels))
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise UserError(f"labels {unknown} are not among the probe's classes {classes}")
        counts = {c: labels.count(c) for c in classes}
        short = {c: k for c, k in counts.items() if k < self.min_per_class}
        if len(classes) < 2 or short:
            raise UserError(f"the probe needs at least {self.min_per_class} labelled examples of each of >= 2 "
                            f"classes; have {counts}. Label more images of {sorted(short) or classes}")
        self.classes = list(classes)
        return labels

    def fit(self, features, labels) -> "LinearProbe":
        """Train from scratch on (features, labels); keeps them so add_labels can retrain."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(features, dtype=np.float64)
        labels = self._check_labels(labels)
        if x.ndim != 2 or len(x) != len(labels):
            raise UserError(f"features {x.shape} and {len(labels)} labels do not match")
        self._x, self._y = x, labels
        self.mean_, self.scale_ = x.mean(0), x.std(0) + 1e-8
        y = np.array([self.classes.index(lab) for lab in labels])
        lr = LogisticRegression(C=self.C, max_iter=2000)  # lbfgs: deterministic
        lr.fit((x - self.mean_) / self.scale_, y)
        coef, icpt = lr.coef_, lr.intercept_
        if len(self.classes) == 2:  # sklearn keeps one row for two classes: expand to a softmax pair
            coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
        self.coef_, self.intercept_ = coef, icpt
        return self

    def add_labels(self, features, labels) -> "LinearProbe":
        """Append newly labelled examples and retrain on everything labelled so far."""
        x = np.asarray(features, dtype=np.float64)
        allx = x if self._x.size == 0 else np.concatenate([self._x, x])
        return self.fit(allx, self._y + [str(lab) for lab in labels])

    def predict_proba(self, features) -> np.ndarray:
        """(N, K) probabilities over self.classes."""
        if self.coef_ is None:
            raise UserError("the probe is not trained yet: call fit(features, labels) first")
        z = ((np.asarray(features, np.float64) - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def save(self, path) -> None:
        """npz with the weights, standardisation, classes, feature name and the training labels."""
        if self.coef_ is None:
            raise UserError("cannot save an untrained probe")
        meta = json.dumps({"format": "sims-linear-probe", "classes": self.classes, "feature": self.feature_name,
                           "min_per_class": self.min_per_class, "C": self.C})
        with open(path, "wb") as f:
            np.savez(f, coef=self.coef_, intercept=self.intercept_, mean=self.mean_, scale=self.scale_,
                     train_x=self._x, train_y=np.asarray(self._y, dtype=str), meta=np.asarray(meta))

    @classmethod
    def load(cls, path) -> "LinearProbe":
        """Inverse of save (allow_pickle=False)."""
        if not Path(path).is_file():
            raise UserError(f"probe file not found: {path} (train one with `python -m pipelines fit-probe`)")
        with np.load(path, allow_pickle=False) as d:
            meta = json.loads(str(d["meta"]))
            if meta.get("format") != "sims-linear-probe":
                raise UserError(f"{path} is not a SIMS linear probe")
            probe = cls(meta["classes"], meta["min_per_class"], meta["C"], meta["feature"])
            probe.coef_, probe.intercept_ = d["coef"], d["intercept"]
            probe.mean_, probe.scale_ = d["mean"], d["scale"]
            probe._x, probe._y = d["train_x"], [str(s) for s in d["train_y"]]
        return probe


class ProbeClassifier(Classifier):
    """Feature extractor + LinearProbe as a Classifier."""

    name = "facenet-probe"

    def __init__(self, features, probe: LinearProbe, device=None):
        super().__init__(device)
        self.features, self.probe = features, probe
        self.classes = list(probe.classes)
        digest = hashlib.sha256(np.ascontiguousarray(probe.coef_).tobytes()).hexdigest()[:16]
        framing = getattr(features, "framing", "whole image")  # crops and whole images embed differently
        self._cache_id = f"{self.name}:{probe.feature_name}:{framing}:{digest}"

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """Probe probabilities on the extractor's features."""
        return self.probe.predict_proba(self.features(images, batch_size))


def probe_factory(weights=None, device=None, feature_weights=None, **_ignored) -> ProbeClassifier:
    """Registry factory: a saved probe on the features it was trained on."""
    if weights is None:
        raise UserError("facenet-probe needs a trained probe file: pass --weights probe.npz "
                        "(train one with `python -m pipelines fit-probe SRC --labels labels.csv --out probe.npz`)")
    probe = LinearProbe.load(weights)
    return ProbeClassifier(make_features(probe.feature_name, device, feature_weights), probe, device)

