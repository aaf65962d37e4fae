"""Files under the data directory: sample PNGs, content hashes, grids."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import UserError


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 HWC (C = 1 or 3) -> PNG bytes."""
    pil = Image.fromarray(img[:, :, 0], "L") if img.shape[2] == 1 else Image.fromarray(img, "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="png")
    return buf.getvalue()


def write_png(path: Path, img: np.ndarray) -> str:
    """Write one image atomically; returns its content hash."""
    data = png_bytes(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return sha256_bytes(data)


def read_png(path: Path, what: str = "") -> np.ndarray:
    """PNG -> uint8 HWC (grey keeps one channel). A missing, truncated or damaged file raises a UserError
    naming `what` (e.g. "sample #12") and the file, not Pillow's bare "image file is truncated"."""
    try:
        with Image.open(path) as pil:
            pil.load()  # decode now: a truncated file fails here, inside the try
            arr = np.asarray(pil.convert("L") if pil.mode not in ("L", "RGB") else pil)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports damaged data as any of these
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"Cannot read {what + ' ' if what else ''}from {path}: {why}. The file is missing or "
                        f"damaged (e.g. written while the disk was full, or a copy cut short): restore it, or "
                        f"build the set again without it.") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_pngs(paths, names=None) -> np.ndarray:
    """Many PNGs of one shape -> uint8 NHWC; `names` (e.g. "sample #12") name a file that cannot be read."""
    names = names if names is not None else [""] * len(paths)
    return np.stack([read_png(Path(p), n) for p, n in zip(paths, names, strict=True)])


def sample_relpath(model_id: int, seed: int) -> str:
    """Where a pool sample lives, relative to the data directory (1000 files per folder)."""
    return f"samples/m{model_id}/{seed // 1000:05d}/{seed:08d}.png"


def upscale(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale of a small uint8 HWC image to about `size` pixels (crisp pixels)."""
    k = max(1, size // img.shape[0])
    return img.repeat(k, axis=0).repeat(k, axis=1)


def grid(images: np.ndarray, cols: int | None = None, cell: int = 64, pad: int = 2,
         total: int | None = None) -> np.ndarray:
    """Tile uint8 NHWC images into one RGB uint8 image with nearest-neighbour upscaling.

    `total` > len(images) lays out that many cells and leaves the missing ones empty (a grid still rendering).
    """
    n = max(len(images), total or 0)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    k = max(1, cell // images.shape[1])
    h, w = images.shape[1] * k, images.shape[2] * k
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 24, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        big = upscale(img, h)
        if big.shape[2] == 1:
            big = np.repeat(big, 3, axis=2)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = big
    return out
