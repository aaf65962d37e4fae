"""Training datasets: image folders/zips in EDM's layout, scikit-learn digits, in-memory sets, 2-D points.

Every dataset yields `(x, label)`: images as uint8 CHW tensors (training converts them with
uint8/127.5 - 1), points as float32 vectors; label is an int, -1 when the set is unlabelled.
Image sets are checked up front (same shape, square, power-of-two side, 1 or 3 channels) so
a bad set fails with a message naming an offending file instead of deep inside training.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .imageio import ImageFiles, check_image_shapes, read_npz



class BaseDataset(torch.utils.data.Dataset):
    """Common interface: shape, labels, batch access and a description for checkpoint metadata."""

    name: str = "dataset"
    labels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def label_dim(self) -> int:
        """Number of classes (max label + 1), 0 when unlabelled."""
        return int(self.labels.max()) + 1 if self.has_labels and len(self.labels) else 0

    def label(self, idx: int) -> int:
        return int(self.labels[idx]) if self.has_labels else -1

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack items `indices` into (x [n, ...], labels int64 [n])."""
        items = [self[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([lab for _, lab in items], dtype=torch.int64)

    def describe(self) -> dict:
        """JSON-able summary recorded in checkpoints and used to check a resumed run."""
        return {"name": self.name, "size": len(self), "shape": list(self.shape), "label_dim": self.label_dim}


#----------------------------------------------------------------------------
# Image folder / zip in EDM dataset_tool layout (`{idx // 1000:05d}/img{idx:08d}.png` + dataset.json).

class ImageDataset(ImageFiles, BaseDataset):
    """A folder or zip in EDM's layout as a training set (reading and checks: imageio.ImageFiles)."""

    @property
    def shape(self):
        h, w, c = self.hwc
        return (c, h, w)

    def __getitem__(self, idx):
        return torch.from_numpy(self.read_uint8_hwc(idx)).permute(2, 0, 1).contiguous(), self.label(idx)


#----------------------------------------------------------------------------
# In-memory sets.

class _InMemoryDataset(BaseDataset):
    """Items are rows of one tensor (`_rows()`), batches are indexed from it directly."""

    def _rows(self) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self):
        return len(self._rows())

    def __getitem__(self, idx):
        return self._rows()[idx], self.label(idx)

    def get_batch(self, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        lab = torch.from_numpy(self.labels)[idx] if self.has_labels else torch.full((len(idx),), -1)
        return self._rows()[idx], lab


class TensorImageDataset(_InMemoryDataset):
    """Images already in memory (e.g. a synthetic set), uint8 NHWC, optional int labels."""

    def __init__(self, images_uint8_nhwc, labels=None, name: str = "in-memory images"):
        images = torch.as_tensor(np.asarray(images_uint8_nhwc))
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise UserError(f"{name}: expected uint8 images shaped [N, H, W, C], got {images.dtype} "
                            f"{tuple(images.shape)}. Convert floats in [-1, 1] with pipelines.sampler.to_uint8.")
        check_image_shapes([tuple(images.shape[1:])] if len(images) else [], ["image 0"], name)
        self.images = images.permute(0, 3, 1, 2).contiguous()  # NCHW once, not per item
        self.labels = None if labels is None else _check_labels(labels, len(images), name)
        self.name = name

    @property
    def shape(self):
        return tuple(self.images.shape[1:])

    def _rows(self) -> torch.Tensor:
        return self.images


def _check_labels(labels, n: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise UserError(f"{name}: labels must be {n} integers >= 0 (got {labels.dtype} {labels.shape}).")
    return labels.astype(np.int64)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float [1797, 8, 8] in 0..16, labels int) of scikit-learn's digits.

    Reads the CSV that `sklearn.datasets.load_digits` reads (shipped inside the scikit-learn
    package) without importing scikit-learn, whose import costs seconds per process (DDP
    workers, job subprocesses); falls back to load_digits if the file is not where expected."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images, d.target.astype(np.int64)


class DigitsDataset(TensorImageDataset):
    """scikit-learn's digits: 1797 real 8x8 greyscale images, labels 0-9, shipped with the package.

    Pixels are 0..16 in the source; scaled to uint8 by round(v * 255 / 16). Resolution 16 or 32
    upsamples: 'nearest' replicates pixels (keeps the 17 grey levels), 'bilinear' interpolates
    (torch, align_corners=False) and rounds back to uint8.
    """

    def __init__(self, resolution: int = 8, mode: str = "nearest"):
        if resolution not in (8, 16, 32, 64):
            raise UserError(f"digits resolution must be 8, 16, 32 or 64 (got {resolution}).")
        if mode not in ("nearest", "bilinear"):
            raise UserError(f"digits upsampling must be 'nearest' or 'bilinear' (got {mode!r}).")
        images, target = load_digits_arrays()
        x = torch.from_numpy(np.round(images * (255.0 / 16.0))).to(torch.float32)[:, None]  # [N,1,8,8]
        if resolution != 8:
            kw = {} if mode == "nearest" else {"align_corners": False}
            x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode=mode, **kw)
        imgs = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        super().__init__(imgs, target, name=f"digits:{resolution}" + ("" if mode == "nearest" else f":{mode}"))
        self.mode = mode


class PointDataset(_InMemoryDataset):
    """Flat float data (e.g. 2-D points); items are float32 vectors, used as-is by training."""

    def __init__(self, points, labels=None, name: str = "points"):
        pts = torch.as_tensor(np.asarray(points), dtype=torch.float32)
        if pts.ndim != 2 or len(pts) == 0:
            raise UserError(f"{name}: points must be a non-empty [N, D] array (got shape {tuple(pts.shape)}).")
        if not torch.isfinite(pts).all():
            raise UserError(f"{name}: points contain NaN or inf; clean the data first.")
        self.points = pts
        self.labels = None if labels is None else _check_labels(labels, len(pts), name)
        self.name = name

    @property
    def shape(self):
        return (self.points.shape[1],)

    def _rows(self) -> torch.Tensor:
        return self.points


#----------------------------------------------------------------------------

def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """Dataset batch -> float32 model input: uint8 images to [-1, 1] (EDM), floats unchanged."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 127.5 - 1
    return x.to(torch.float32)


def _open_npz(path: Path) -> BaseDataset:
    s = read_npz(path, points=True)
    if s.points is not None:
        return PointDataset(s.points, s.labels, name=str(path))
    return TensorImageDataset(s.images, s.labels, name=str(path))


def is_bundled(spec) -> bool:
    """True for a dataset shipped with the package ('digits', 'digits:16', ...): it needs no file."""
    text = str(spec)
    return text == "digits" or text.startswith("digits:")


def open_dataset(spec) -> BaseDataset:
    """'digits', 'digits:16', 'digits:32:bilinear', a folder, a .zip or an .npz -> dataset."""
    if isinstance(spec, BaseDataset):
        return spec
    text = str(spec)
    if is_bundled(text):
        parts = text.split(":")
        try:
            res = int(parts[1]) if len(parts) > 1 else 8
        except ValueError:
            raise UserError(f"Bad digits spec {text!r}; use digits, digits:16 or digits:32:bilinear.") from None
        if len(parts) > 3:
            raise UserError(f"Bad digits spec {text!r}; use digits, digits:16 or digits:32:bilinear.")
        return DigitsDataset(res, parts[2] if len(parts) > 2 else "nearest")
    path = Path(text)
    if path.suffix == ".npz":
        return _open_npz(path)
    return ImageDataset(path)
