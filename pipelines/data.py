"""Training datasets: image folders/zips in EDM's layout, scikit-learn digits, in-memory sets, 2-D points.

Every dataset yields `(x, label)`: images as uint8 CHW tensors (training converts them with
uint8/127.5 - 1), points as float32 vectors; label is an int, -1 when the set is unlabelled.
Image sets are checked up front (same shape, square, power-of-two side, 1 or 3 channels) so
a bad set fails with a message naming an offending file instead of deep inside training.
"""
from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .imageio import IMAGE_SUFFIXES, decode_image

RESIZE_HINT = ("resize them all to one square power-of-two size, e.g. with EDM's "
               "`dataset_tool.py convert --resolution=64x64` or PIL's Image.resize(..., Image.LANCZOS)")
# PIL modes -> channel count we train on (modes that decode_image converts to L or RGB).
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "P": 3, "YCbCr": 3}


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
        return torch.stack([x for x, _ in items]), torch.tensor([l for _, l in items], dtype=torch.int64)

    def describe(self) -> dict:
        """JSON-able summary recorded in checkpoints and used to check a resumed run."""
        return {"name": self.name, "size": len(self), "shape": list(self.shape), "label_dim": self.label_dim}


def check_image_shapes(shapes: list[tuple[int, int, int]], names: list[str], where: str) -> tuple[int, int, int]:
    """Validate HWC shapes of an image set; returns the common (H, W, C) or raises UserError."""
    if not shapes:
        raise UserError(f"No images found in {where}. Expected PNGs in EDM's layout "
                        f"(00000/img00000000.png, ...); write them with pipelines.imageio.write_image_folder.")
    h, w, c = shapes[0]
    for name, shape in zip(names, shapes):
        if shape != shapes[0]:
            if shape[:2] != (h, w):
                raise UserError(f"{where}: mixed resolutions: {names[0]} is {w}x{h}, {name} is "
                                f"{shape[1]}x{shape[0]}; {RESIZE_HINT}.")
            raise UserError(f"{where}: mixed channel counts: {names[0]} has {c}, {name} has {shape[2]}; "
                            "convert all images to RGB (or all to greyscale 'L').")
    if c not in (1, 3):
        raise UserError(f"{where}: {names[0]} has {c} channels; images must have 1 (greyscale) or 3 (RGB). "
                        "Convert them, e.g. PIL's Image.convert('RGB').")
    if h != w:
        raise UserError(f"{where}: images must be square; {names[0]} is {w}x{h}. Crop or {RESIZE_HINT}.")
    if h < 4 or h & (h - 1):
        raise UserError(f"{where}: resolution must be a power of two >= 4 (the UNet halves it per level); "
                        f"{names[0]} is {w}x{h}. {RESIZE_HINT[0].upper() + RESIZE_HINT[1:]}.")
    return h, w, c


#----------------------------------------------------------------------------
# Image folder / zip in EDM dataset_tool layout (`{idx // 1000:05d}/img{idx:08d}.png` + dataset.json).

class ImageDataset(BaseDataset):
    """PNG images in a folder or zip (EDM layout), optional labels from the root dataset.json."""

    def __init__(self, path):
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.exists():
            raise UserError(f"Dataset not found: {self.path}. Pass a folder or .zip of images in EDM's layout.")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = None
        if self.path.is_dir():
            self._is_zip = False
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif zipfile.is_zipfile(self.path):
            self._is_zip = True
            names = [n for n in self._zipfile().namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise UserError(f"{self.path} is neither a folder nor a zip archive; pass a folder or .zip of PNGs "
                            "(or an .npz with an 'images' array).")
        self.files = sorted(names)
        self._hwc = check_image_shapes([self._header_shape(n) for n in self.files], self.files, self.name)
        self.labels = self._read_labels()

    def _zipfile(self) -> zipfile.ZipFile:
        # One handle per process: DataLoader workers must not share the parent's file offset.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def _open(self, name: str):
        return self._zipfile().open(name, "r") if self._is_zip else open(self.path / name, "rb")

    def _header_shape(self, name: str) -> tuple[int, int, int]:
        try:
            with self._open(name) as f, Image.open(f) as pil:
                w, h = pil.size
                mode = pil.mode
        except (OSError, ValueError) as e:
            raise UserError(f"{self.name}: {name} is not a readable image ({e}); remove or re-export it.") from None
        if mode not in _MODE_CHANNELS:
            raise UserError(f"{self.name}: {name} has PIL mode {mode} ({len(mode)} channels, e.g. alpha); "
                            "images must be greyscale or RGB: convert with PIL's Image.convert('RGB').")
        return h, w, _MODE_CHANNELS[mode]

    def _read_labels(self) -> np.ndarray | None:
        try:
            with self._open("dataset.json") as f:
                raw = json.load(f).get("labels")
        except (FileNotFoundError, KeyError):
            return None
        except (json.JSONDecodeError, AttributeError) as e:
            raise UserError(f"{self.name}: dataset.json is not valid ({e}); it must be "
                            '{"labels": [["00000/img00000000.png", 3], ...]} or {"labels": null}.') from None
        if raw is None:
            return None
        table = {str(p): l for p, l in raw}
        missing = [n for n in self.files if n not in table]
        if missing:
            raise UserError(f"{self.name}: dataset.json has no label for {missing[0]} ({len(missing)} images "
                            "unlabelled); label every image or set \"labels\" to null.")
        bad = [n for n in self.files if not isinstance(table[n], int) or table[n] < 0]
        if bad:
            raise UserError(f"{self.name}: label of {bad[0]} is {table[bad[0]]!r}; labels must be class "
                            "indices (integers >= 0).")
        return np.array([table[n] for n in self.files], dtype=np.int64)

    @property
    def shape(self):
        h, w, c = self._hwc
        return (c, h, w)

    def __len__(self):
        return len(self.files)

    def read_uint8_hwc(self, idx: int) -> np.ndarray:
        """Decoded image `idx` as uint8 HWC."""
        name = self.files[idx]
        with self._open(name) as f:
            img = decode_image(f.read(), f"{self.name}/{name}")
        if img.shape != self._hwc:
            raise UserError(f"{self.name}: {name} decodes to {img.shape}, expected {self._hwc}; re-export it.")
        return img

    def __getitem__(self, idx):
        return torch.from_numpy(self.read_uint8_hwc(idx)).permute(2, 0, 1).contiguous(), self.label(idx)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None  # zip handles do not pickle; reopened lazily in the worker
        return state


#----------------------------------------------------------------------------
# In-memory sets.

class TensorImageDataset(BaseDataset):
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

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx], self.label(idx)

    def get_batch(self, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        lab = torch.from_numpy(self.labels)[idx] if self.has_labels else torch.full((len(idx),), -1)
        return self.images[idx], lab


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


class PointDataset(BaseDataset):
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

    def __len__(self):
        return len(self.points)

    def __getitem__(self, idx):
        return self.points[idx], self.label(idx)

    def get_batch(self, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        lab = torch.from_numpy(self.labels)[idx] if self.has_labels else torch.full((len(idx),), -1)
        return self.points[idx], lab


#----------------------------------------------------------------------------

def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """Dataset batch -> float32 model input: uint8 images to [-1, 1] (EDM), floats unchanged."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 127.5 - 1
    return x.to(torch.float32)


def _open_npz(path: Path) -> BaseDataset:
    with np.load(path, allow_pickle=False) as f:
        labels = f["labels"] if "labels" in f else None
        if "points" in f:
            return PointDataset(f["points"], labels, name=str(path))
        if "images" in f:
            return TensorImageDataset(f["images"], labels, name=str(path))
        raise UserError(f"{path} has neither 'images' (uint8 NHWC) nor 'points' ([N, D]) "
                        f"(keys: {sorted(f.keys())}).")


def open_dataset(spec) -> BaseDataset:
    """'digits', 'digits:16', 'digits:32:bilinear', a folder, a .zip or an .npz -> dataset."""
    if isinstance(spec, BaseDataset):
        return spec
    text = str(spec)
    if text == "digits" or text.startswith("digits:"):
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
        if not path.is_file():
            raise UserError(f"Dataset not found: {path}.")
        return _open_npz(path)
    return ImageDataset(path)
