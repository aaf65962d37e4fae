"""Checks on uploaded files: type, size, and that images really decode. Accepted files are copied into the data dir."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from pipelines.errors import UserError

IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CHECKPOINT_TYPES = (".safetensors", ".pkl")


def _check_size(path: Path, max_mb: int) -> None:
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path.name} is empty.")
    if size > max_mb * 2 ** 20:
        raise UserError(f"{path.name} is {size / 2 ** 20:.0f} MB; the limit is {max_mb} MB "
                        "(raise it with --max-upload-mb, or register the file by path instead).")


def check_checkpoint(path, max_mb: int) -> Path:
    """An uploaded model file: .safetensors (ours) or .pkl (EDM, imported safely), within the size limit."""
    path = Path(path)
    if path.suffix.lower() not in CHECKPOINT_TYPES:
        raise UserError(f"{path.name}: upload a .safetensors checkpoint or an EDM .pkl (got '{path.suffix or 'no extension'}').")
    _check_size(path, max_mb)
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix.lower() == ".pkl" and not (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise UserError(f"{path.name} does not look like a pickle (EDM checkpoints start with a pickle header).")
    return path


def decode_image_file(path: Path) -> np.ndarray:
    """Decode one image file fully, or say which file is not an image."""
    from pipelines.imageio import decode_image
    if path.suffix.lower() not in IMAGE_TYPES:
        raise UserError(f"{path.name} is not an image file (accepted: {', '.join(IMAGE_TYPES)}).")
    return decode_image(path.read_bytes(), path.name)


def import_reference_images(files, dest: Path, max_mb: int) -> int:
    """Check uploaded images (or one EDM-layout .zip) and store them as an EDM folder under `dest`; returns the count."""
    from pipelines.imageio import write_image_folder
    paths = [Path(getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        raise UserError("Choose image files (PNG/JPEG) or one .zip in EDM's layout to upload.")
    for p in paths:
        _check_size(p, max_mb)
    if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
        if not zipfile.is_zipfile(paths[0]):
            raise UserError(f"{paths[0].name} is not a valid zip archive.")
        from pipelines.imageio import read_images
        images, _ = read_images(paths[0])
    else:
        images = [decode_image_file(p) for p in paths]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise UserError(f"Uploaded images have different shapes {sorted(shapes)}; resize them to one size.")
        images = np.stack(images)
    if dest.exists():
        shutil.rmtree(dest)
    write_image_folder(dest, images)
    return len(images)


def store_upload(path, dest_dir: Path) -> Path:
    """Copy an accepted upload into the data directory (the temp copy may vanish)."""
    path = Path(path)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    shutil.copyfile(path, dest)
    return dest
