"""Image sets read lazily for labelling and metrics, content hashes, and an on-disk array cache.

A source is a folder of images (EDM dataset_tool layout `00000/img00000000.png`, searched
recursively, sorted by relative path; a root `dataset.json` is allowed and ignored here) or an
`.npz` with an `images` uint8 NHWC array (optional `names`). Images are read lazily in batches
so a 70k-image folder never sits in memory at once. Decoding and the array checks are
`pipelines.imageio`'s, and so is the .npz reader (imageio also writes EDM's layout and loads small sets whole).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import UserError
from .imageio import IMAGE_SUFFIXES, decode_image, read_npz


def _read_image(path: Path) -> np.ndarray:
    """One file -> uint8 HWC (grey kept as C = 1, everything else as RGB)."""
    return decode_image(path.read_bytes(), str(path))


class ImageSource:
    """A folder of image files or an npz of uint8 NHWC `images`, read in batches."""

    def __init__(self, src):
        self.src = Path(src)
        self._array = None
        if self.src.is_dir():
            files = sorted(p for p in self.src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.src}")
            self.files = files
            self.names = [p.relative_to(self.src).as_posix() for p in files]
        elif self.src.is_file() and self.src.suffix.lower() == ".npz":
            self.files = None
            self._array, self.names = _load_npz_images(self.src)
        elif not self.src.exists():
            raise UserError(f"image source not found: {self.src}")
        else:
            raise UserError(f"{self.src} is neither a folder of images nor an .npz with an 'images' array")

    def __len__(self) -> int:
        return len(self.names)

    def batches(self, batch_size: int = 64) -> Iterator[np.ndarray]:
        """Yield uint8 NHWC batches in source order (all images of a batch must share a size)."""
        for start in range(0, len(self), batch_size):
            yield self.read(start, min(start + batch_size, len(self)))

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images [start, stop) as one uint8 NHWC array."""
        stop = len(self) if stop is None else stop
        if self._array is not None:
            return self._array[start:stop]
        arrays = [_read_image(p) for p in self.files[start:stop]]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            if {s[:2] for s in shapes} == {arrays[0].shape[:2]}:  # grey and RGB mixed: promote
                arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
            else:
                raise UserError(f"images under {self.src} have different sizes {sorted(shapes)}; "
                                "resize them to one size first (EDM's dataset_tool --resolution does)")
        return np.stack(arrays)

    def content_hash(self) -> str:
        """sha256 over names and raw bytes: equal hash <=> same images in the same order."""
        h = hashlib.sha256()
        if self._array is not None:
            h.update(repr((self._array.shape, str(self._array.dtype))).encode())
            h.update(np.ascontiguousarray(self._array).tobytes())
            return h.hexdigest()
        for name, path in zip(self.names, self.files):
            h.update(name.encode() + b"\0")
            h.update(path.read_bytes())
        return h.hexdigest()


def _load_npz_images(path: Path) -> tuple[np.ndarray, list[str]]:
    npz = read_npz(path)
    return npz.images, npz.names or [f"{i:08d}" for i in range(len(npz.images))]


def array_hash(images: np.ndarray) -> str:
    """sha256 of an in-memory image array (shape, dtype and bytes)."""
    a = np.ascontiguousarray(images)
    h = hashlib.sha256(repr((a.shape, str(a.dtype))).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def file_fingerprint(path) -> str:
    """Cheap identity of a (possibly large) file for cache keys: resolved path, size, mtime."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cached_array(cache_dir, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the array stored under `key` in `cache_dir`, computing and storing it if absent."""
    if cache_dir is None:
        return compute()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    safe = hashlib.sha256(key.encode()).hexdigest()[:32]
    path = cache_dir / f"{safe}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    value = np.asarray(compute())
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, value)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return value
