"""Image sets on disk: EDM dataset_tool layout (folder or ZIP_STORED zip) and .npz.

Layout (as EDM's dataset_tool writes it): `{idx // 1000:05d}/img{idx:08d}.png` plus a root `dataset.json`
holding `{"labels": [[relpath, label], ...]}` or `{"labels": null}`. Images are uint8 NHWC
arrays with 1 or 3 channels; greyscale PNGs are written as mode "L".
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import UserError

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
    new = None if labels is None else [[p, int(l)] for p, l in zip(rel, labels)]
    merged = _merge_labels(old, new, start_index)
    if merged is not None:
        merged = sorted({p: l for p, l in merged}.items())  # later writes replace same paths
        merged = [[p, l] for p, l in merged]
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
        lab = None if labels is None else [[p, int(l)] for p, l in zip(rel, labels)]
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


def read_images(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a whole folder/zip (EDM layout) or .npz into memory: (uint8 NHWC, int64 labels or None)."""
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserError(f"No such file: {path}.")
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise UserError(f"{path} has no 'images' array (keys: {sorted(f.keys())}); "
                                "save with pipelines.imageio.save_npz.")
            images = _check_batch(f["images"], None)
            labels = f["labels"].astype(np.int64) if "labels" in f else None
        return images, labels
    from .data import ImageDataset  # the dataset does the layout checks
    ds = ImageDataset(path)
    images = np.stack([ds.read_uint8_hwc(i) for i in range(len(ds))])
    return images, (np.asarray(ds.labels, dtype=np.int64) if ds.has_labels else None)
