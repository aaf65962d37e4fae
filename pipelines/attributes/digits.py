"""The demo digits classifier: a small CNN on scikit-learn's 8x8 handwritten digits.

Pixel convention: sklearn digits hold ink intensities 0..16 (ink bright, background 0). As an
image that is uint8 = v * 255 / 16 (white digit on black). Inputs of any size and channel count
are converted to grey (ITU-R 601) and area-resized to 8x8, so 32x32 renders of the digits world
classify the same as the 8x8 originals. Its penultimate layer (128-d) feeds FD-digits, the
offline stand-in for FID (never called FID).

`build_digits_classifier(out_path, seed)` trains it on sklearn's real labels with a fixed,
stratified held-out split and writes one safetensors file whose metadata records the split,
the recipe and the measured held-out accuracy (rebuild: `python -m pipelines build-digits-classifier`).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Classifier, FeatureSpace, as_float01_nchw, to_grey
from ..image_source import file_fingerprint
from ..resources import ASSETS

DEFAULT_PATH = ASSETS / "digits_classifier.safetensors"
CLASSES = [str(d) for d in range(10)]
FORMAT = "sims-digits-classifier"
FEATURE_DIM = 128
FEATURE_SPACE = FeatureSpace("FD-digits", "digits", FEATURE_DIM)  # a Fréchet distance, never called FID

# Training recipe (recorded in the file's metadata).
RECIPE = dict(test_size=0.2, split_seed=0, epochs=40, batch_size=64, lr=2e-3, weight_decay=1e-4,
              noise_std_max=0.1, gain_range=(0.8, 1.2), shift_prob=0.25)


class DigitsNet(nn.Module):
    """conv3x3(32) -> conv3x3(64) -> maxpool 2 -> fc 128 (features) -> fc 10, on 8x8 grey in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, len(CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) -> (N, 128) penultimate activations."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) -> (N, 10) logits."""
        return self.fc2(self.features(x))


def to_digit_input(x: torch.Tensor) -> torch.Tensor:
    """float NCHW in [0, 1], any size -> (N, 1, 8, 8) grey, area-resized."""
    x = to_grey(x)
    if x.shape[-2:] != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="area")
    return x


class DigitsClassifier(Classifier):
    """Images of digits -> probabilities over '0'..'9' (and 128-d features for FD-digits)."""

    name = "digits"
    classes = CLASSES
    feature_space = FEATURE_SPACE

    def __init__(self, net: DigitsNet, meta: dict | None = None, device=None, weights_sha: str | None = None):
        super().__init__(device)
        self.net = net.to(self.device).eval()
        self.meta = meta or {}
        self.weights_sha = weights_sha  # sha256 of the weights file (features cache key); None for an unsaved net

    def feature_extractor(self) -> "DigitsFeatureExtractor":
        """Its own penultimate features: the Fréchet distance on them is 'FD-digits'."""
        return DigitsFeatureExtractor(self)

    def _predict_batch(self, x: torch.Tensor) -> np.ndarray:
        return torch.softmax(self.net(to_digit_input(x)).double(), dim=1).cpu().numpy()

    @torch.inference_mode()
    def features(self, images, batch_size: int = 256) -> np.ndarray:
        """(N, 128) float64 penultimate features (FD-digits)."""
        out = [np.zeros((0, FEATURE_DIM))]
        for start in range(0, int(images.shape[0]), batch_size):
            x = as_float01_nchw(images[start:start + batch_size], self.device)
            out.append(self.net.features(to_digit_input(x)).double().cpu().numpy())
        return np.concatenate(out)


class DigitsFeatureExtractor:
    """A DigitsClassifier's 128-d penultimate features, with metrics.fid's extractor contract."""

    metric = FEATURE_SPACE.metric
    dims = FEATURE_DIM
    feature_name = "digits"  # what a LinearProbe trained on them records

    def __init__(self, clf: DigitsClassifier):
        if clf.weights_sha is None:
            raise ValueError("features of an unsaved digits net have no cache identity; load it from its file")
        self.clf = clf
        self.feature_id = f"digits-penultimate:{clf.weights_sha[:16]}"

    def features_of_batches(self, batches) -> np.ndarray:
        """Features of an iterable of image batches."""
        return np.concatenate([np.zeros((0, self.dims))] + [self.clf.features(b) for b in batches])

    def __call__(self, images, batch_size: int = 256) -> np.ndarray:
        """(N, 128) features."""
        return self.clf.features(images, batch_size)


# ----------------------------------------------------------------------------
# Save / load


def save_digits_classifier(path, net: DigitsNet, meta: dict) -> None:
    """One safetensors file; JSON metadata under the key 'sims'."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"sims": json.dumps({"format": FORMAT, **meta})})


def load_digits_classifier(path=None, device=None) -> DigitsClassifier:
    """Load the bundled (or a given) digits classifier."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise UserError(f"digits classifier not found at {path}; rebuild it with "
                        f"`python -m pipelines build-digits-classifier --out {path}`")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("sims", "{}"))
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a SIMS digits classifier (metadata format {meta.get('format')!r})")
    net = DigitsNet()
    net.load_state_dict(load_file(str(path)))
    clf = DigitsClassifier(net, meta, device=device, weights_sha=hashlib.sha256(path.read_bytes()).hexdigest())
    clf._cache_id = f"digits:{file_fingerprint(path)}"
    return clf


_LOADED: dict[tuple, DigitsClassifier] = {}


def features(images, path=None, device=None, batch_size: int = 256) -> np.ndarray:
    """(N, 128) FD-digits features of images from the bundled (or given) classifier, loaded once."""
    key = (str(path or DEFAULT_PATH), str(device))
    if key not in _LOADED:
        _LOADED[key] = load_digits_classifier(path, device=device)
    return _LOADED[key].features(images, batch_size)


def factory(weights=None, device=None, **_ignored) -> DigitsClassifier:
    """Registry factory: the bundled (or a given) weights file."""
    return load_digits_classifier(weights, device=device)


# ----------------------------------------------------------------------------
# Training


def digits_split(seed: int = RECIPE["split_seed"]):
    """sklearn digits as float (N, 1, 8, 8) in [0, 1] and int labels: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=RECIPE["test_size"],
                                              random_state=seed, stratify=d.target)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild robustness to generated samples: random gain, pixel noise, occasional 1-px shift."""
    n = x.shape[0]
    lo, hi = RECIPE["gain_range"]
    x = x * (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g))
    x = x + RECIPE["noise_std_max"] * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    shift = torch.rand(n, generator=g) < RECIPE["shift_prob"]
    if shift.any():
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        x[shift] = torch.roll(F.pad(x[shift], (1, 1, 1, 1)), (dy, dx), dims=(2, 3))[..., 1:-1, 1:-1]
    return x.clamp(0, 1)


def train_digits_net(x_tr, y_tr, seed: int = 0, epochs: int | None = None) -> DigitsNet:
    """Train DigitsNet with Adam + cross-entropy on (x_tr, y_tr) (deterministic for a seed)."""
    epochs = RECIPE["epochs"] if epochs is None else epochs
    threads = torch.get_num_threads()
    # A net this small trains fastest (and reproducibly) on one thread; restored below.
    torch.set_num_threads(1)
    try:
        return _train(x_tr, y_tr, seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(x_tr, y_tr, seed: int, epochs: int) -> DigitsNet:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), RECIPE["batch_size"]):
            idx = perm[start:start + RECIPE["batch_size"]]
            loss = F.cross_entropy(net(_augment(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return net.eval()


def heldout_accuracy(clf: "DigitsClassifier") -> float:
    """Accuracy of a classifier on the fixed held-out split, fed as uint8 images like any user image."""
    _, _, x_te, y_te = digits_split()
    images = np.round(x_te[:, 0] * 255).astype(np.uint8)[..., None]
    return float((clf.predict_proba(images).argmax(1) == y_te).mean())


def build_digits_classifier(out_path=DEFAULT_PATH, seed: int = 0, epochs: int | None = None) -> dict:
    """Train on sklearn digits, measure held-out accuracy, save to out_path; returns the metrics."""
    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = digits_split()
    net = train_digits_net(x_tr, y_tr, seed=seed, epochs=epochs)
    acc = heldout_accuracy(DigitsClassifier(net, device="cpu"))
    metrics = {
        "heldout_accuracy": acc,
        "heldout_errors": int(round((1 - acc) * len(y_te))),
        "n_train": int(len(y_tr)), "n_heldout": int(len(y_te)), "epochs": epochs or RECIPE["epochs"],
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    meta = {
        "classes": CLASSES, "feature_dim": FEATURE_DIM, "seed": seed, "recipe": RECIPE, "metrics": metrics,
        "input": "grey 8x8 in [0,1] = sklearn digits / 16 (uint8 images: v*255/16), larger inputs area-resized",
        "provenance": {"data": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
                       "split": f"train_test_split(test_size={RECIPE['test_size']}, stratify=target, "
                                f"random_state={RECIPE['split_seed']})",
                       "torch": torch.__version__,
                       "command": "python -m pipelines build-digits-classifier --out PATH --seed SEED"},
    }
    save_digits_classifier(out_path, net, meta)
    return metrics
