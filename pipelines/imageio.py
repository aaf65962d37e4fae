"""Image sets on disk: EDM dataset_tool layout (folder or ZIP_STORED zip) and .npz.

Layout (as EDM's dataset_tool writes it): `{idx // 1000:05d}/img{idx:08d}.png` plus a root `dataset.json`
holding `{"labels": [[relpath, label], ...]}` or `{"labels": null}`. Images are uint8 NHWC
arrays with 1 or 3 channels; greyscale PNGs are written as mode "L".

The readers live here and nowhere else: `read_npz` (an .npz set, never unpickled), `ImageFiles`
(a folder/zip in that layout, checked up front: one square power-of-two size, 1 or 3 channels,
labels for all or none) and `read_images` (either, whole, into memory). `data.py`'s training
datasets and `image_source.ImageSource` build on them; this module imports neither.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import UserError

RESIZE_HINT = ("resize them all to one square power-of-two size, e.g. with EDM's "
               "`dataset_tool.py convert --resolution=64x64` or PIL's Image.resize(..., Image.LANCZOS)")
# PIL modes -> channel count we train on (modes that decode_image converts to L or RGB).
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "P": 3, "YCbCr": 3}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def image_relpath(idx: int) -> str:
    """Relative path of image `idx` in EDM's layout."""
    return f"{idx // 1000:05d}/img{idx:08d}.png"


def _check_batch(images, labels):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"Expected uint8 images shaped [N, H, W, 1 or 3], got {images.dtype} {images.shape}.")
    if labels is not None and len(labels) != len(images):
        raise UserError(f"{len(images)} images but {len(labels)} labels; pass one label per image.")
    return images


def _png_bytes(img: np.ndarray) -> bytes:
    pil = Image.fromarray(img[:, :, 0], "L") if img.shape[2] == 1 else Image.fromarray(img, "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="png", compress_level=0)  # uncompressed like dataset_tool: fast to read
    return buf.getvalue()


def _merge_labels(old: list | None, new: list | None, n_old: int) -> list | None:
    """Labels of an append: all images labelled, or none (a mix would make dataset.json ambiguous)."""
    if new is None and (old is None or n_old == 0):
        return None
    if new is None or (old is None and n_old > 0):
        raise UserError("Cannot mix labelled and unlabelled images in one dataset; label all or none.")
    return (old or []) + new


def write_image_folder(out_dir, images_uint8_nhwc, labels: Sequence[int] | None = None,
                       start_index: int = 0) -> list[str]:
    """Write PNGs in EDM's layout under `out_dir` (appending from `start_index`); returns relpaths."""
    images = _check_batch(images_uint8_nhwc, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rel = [image_relpath(start_index + i) for i in range(len(images))]
    for path, img in zip(rel, images):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(_png_bytes(img))
    meta_path = out / "dataset.json"
    old = json.loads(meta_path.read_text()).get("labels") if meta_path.exists() else None
    new = None if labels is None else [[p, int(lab)] for p, lab in zip(rel, labels)]
    merged = _merge_labels(old, new, start_index)
    if merged is not None:
        merged = sorted({p: lab for p, lab in merged}.items())  # later writes replace same paths
        merged = [[p, lab] for p, lab in merged]
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"labels": merged}))
    tmp.replace(meta_path)
    return rel


def write_image_zip(out_zip, images_uint8_nhwc, labels: Sequence[int] | None = None) -> list[str]:
    """Write a new ZIP_STORED archive in EDM's layout; returns relpaths."""
    images = _check_batch(images_uint8_nhwc, labels)
    rel = [image_relpath(i) for i in range(len(images))]
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_suffix(out_zip.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for path, img in zip(rel, images):
            zf.writestr(path, _png_bytes(img))
        lab = None if labels is None else [[p, int(lab)] for p, lab in zip(rel, labels)]
        zf.writestr("dataset.json", json.dumps({"labels": lab}))
    tmp.replace(out_zip)
    return rel


def save_npz(path, images_uint8_nhwc, labels: Sequence[int] | None = None, **extra) -> Path:
    """Save images (key `images`) and optional `labels` (+ any extra arrays) to an .npz file."""
    images = _check_batch(images_uint8_nhwc, labels)
    arrays = {"images": images, **{k: np.asarray(v) for k, v in extra.items()}}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def decode_image(data: bytes, name: str = "") -> np.ndarray:
    """PNG/JPEG bytes -> uint8 HWC array (greyscale keeps one channel; RGBA/palette become RGB)."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            if pil.mode not in ("L", "RGB"):
                pil = pil.convert("L" if pil.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
            arr = np.array(pil)  # a writable copy (torch.from_numpy warns on read-only arrays)
    except (OSError, ValueError) as e:
        raise UserError(f"{name or 'image'} is not a readable image ({e}); remove or re-export it.") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


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


# ----------------------------------------------------------------------------
# Readers: .npz and EDM-layout folders/zips. Every other reader (training datasets, ImageSource) builds on these.


@dataclass
class NpzSet:
    """What an .npz image set holds: uint8 NHWC `images` (or float `points`), optional labels and names."""

    images: np.ndarray | None
    labels: np.ndarray | None
    names: list[str] | None
    points: np.ndarray | None = None


def read_npz(path, points: bool = False) -> NpzSet:
    """Read an .npz with `images` (uint8 NHWC, or NHW grey) and optional `labels` / `names`
    (with points=True, a `points` [N, D] array instead of images); never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No such file: {path}.")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = sorted(f.keys())
            labels = f["labels"] if "labels" in f else None
            names = [str(n) for n in f["names"]] if "names" in f else None
            if points and "points" in f:
                return NpzSet(None, labels, names, f["points"])
            if "images" not in f:
                wanted = "'images' (uint8 NHWC) nor 'points' ([N, D])" if points else "no 'images' array"
                raise UserError(f"{path} has {'neither ' if points else ''}{wanted} (keys: {keys}); "
                                "save a uint8 NHWC array under the key 'images' (pipelines.imageio.save_npz).")
            images = f["images"]
    except (OSError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot read {path} as npz: {e}") from None
    if images.dtype == np.uint8 and images.ndim == 3:
        images = images[..., None]  # NHW grey
    images = _check_batch(images, labels)
    if names is not None and len(names) != len(images):
        raise UserError(f"{path}: {len(names)} names for {len(images)} images")
    return NpzSet(images, labels, names)


class ImageFiles:
    """PNG images in a folder or zip (EDM layout), optional labels from the root dataset.json; checked up front."""

    labels: np.ndarray | None = None

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
        table = {str(p): lab for p, lab in raw}
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
    def hwc(self) -> tuple[int, int, int]:
        """The common (H, W, C) of every image."""
        return self._hwc

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

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None  # zip handles do not pickle; reopened lazily in the worker
        return state


def read_images(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a whole folder/zip (EDM layout) or .npz into memory: (uint8 NHWC, int64 labels or None)."""
    path = Path(path)
    if path.suffix == ".npz":
        s = read_npz(path)
        return s.images, (None if s.labels is None else s.labels.astype(np.int64))
    ds = ImageFiles(path)
    images = np.stack([ds.read_uint8_hwc(i) for i in range(len(ds))])
    return images, (None if ds.labels is None else np.asarray(ds.labels, dtype=np.int64))
