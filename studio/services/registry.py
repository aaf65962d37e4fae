"""Model registry: register base models (bundled demo, our checkpoints, EDM pickles by path/URL, uploads).

Checkpoints are copied into the data directory (so the studio serves and keeps only its own
files) and de-duplicated by content hash. EDM pickles and URLs are imported by a job
(`import_model`) through the engine's safe importer; nothing is unpickled here.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from pipelines.checkpoints.download import sha256_file
from pipelines.errors import UserError
from pipelines.resources import ASSETS

from ..db import Database
from ..models import Model, Sample
from ..settings import Settings
from ..jobs.specs import ImportModelSpec
from . import jobs as jobs_service

DEMO_MODEL = ASSETS / "demo" / "digits_base.safetensors"  # in the checkout, or installed under share/


@dataclass
class ModelCard:
    """What the Models tab shows about one model."""
    id: int
    name: str
    source: str
    source_ref: str | None
    path: str
    content_hash: str
    backbone: str
    precond: str
    resolution: int
    channels: int
    network: dict
    dataset: dict
    training: dict
    provenance: dict
    pool_size: int
    created_at: str


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "model"


def register_checkpoint(db: Database, settings: Settings, src, name: str | None = None, source: str = "path",
                        source_ref: str | None = None) -> int:
    """Validate a native checkpoint, copy it into the data dir and register it; returns the model id.

    Registering the same file twice returns the existing id (matched by content hash).
    """
    from pipelines.checkpoints.native import read_metadata
    src = Path(src)
    meta = read_metadata(src)  # raises UserError with the fix for pickles, folders, foreign files
    digest = sha256_file(src)
    with db.session() as s:
        existing = s.scalar(select(Model).where(Model.content_hash == digest))
        if existing is not None:
            return existing.id
    name = (name or meta.get("provenance", {}).get("name") or src.stem).strip()
    with db.session(read_only=True) as s:
        if s.scalar(select(Model.id).where(Model.name == name)) is not None:
            name = f"{name} ({digest[:8]})"
    dest = settings.path("models", f"{digest[:12]}-{_slug(name)}.safetensors")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    net = meta["model"].get("network", {})
    with db.session() as s:
        row = Model(name=name, path=settings.rel(dest), content_hash=digest, source=source,
                    source_ref=source_ref or str(src), config=meta["model"],
                    meta={k: meta.get(k, {}) for k in ("dataset", "training", "provenance")},
                    resolution=int(net.get("img_resolution", 0)), channels=int(net.get("img_channels", 0)))
        s.add(row)
        s.flush()
        return row.id


def register_demo(db: Database, settings: Settings) -> int:
    """Register the bundled digits model (idempotent)."""
    if not DEMO_MODEL.is_file():
        raise UserError(f"The bundled demo model is missing ({DEMO_MODEL}). Rebuild it with "
                        "`python -m pipelines build-demo` (about an hour on 2 CPU cores).")
    return register_checkpoint(db, settings, DEMO_MODEL, name="digits demo (bundled)", source="demo",
                               source_ref=DEMO_MODEL.relative_to(ASSETS.parent).as_posix())


def submit_import(db: Database, settings: Settings, src: str, name: str = "") -> int:
    """Queue a job that imports an EDM pickle (path or URL) or copies a native checkpoint; returns the job id."""
    src = (src or "").strip()
    if not src:
        raise UserError("Enter a checkpoint path or an http(s) URL (e.g. an official EDM .pkl).")
    is_url = src.lower().startswith(("http://", "https://"))
    if not is_url:
        p = Path(src).expanduser()
        if not p.exists():
            raise UserError(f"No file at {p}. Check the path (it is read on the studio's machine) or paste a URL.")
        if p.suffix not in (".pkl", ".safetensors"):
            raise UserError(f"{p.name}: expected an EDM pickle (.pkl) or one of our .safetensors checkpoints.")
        src = str(p.resolve())
    # the studio's --allow-private-urls travels with the job: the worker checks the URL against it
    spec = ImportModelSpec(src=src, name=name.strip(), allow_private_urls=bool(settings.allow_private_urls))
    return jobs_service.submit(db, spec,
                               title=f"Import {Path(src).name}")


def list_models(db: Database) -> list[dict]:
    """All registered models with their pool sizes, newest first."""
    with db.session(read_only=True) as s:
        counts = dict(s.execute(select(Sample.model_id, func.count()).group_by(Sample.model_id)).all())
        return [{"id": m.id, "name": m.name, "source": m.source,
                 "architecture": f"{m.config.get('backbone')} {m.resolution}x{m.resolution}x{m.channels}",
                 "pool": counts.get(m.id, 0), "created": f"{m.created_at:%Y-%m-%d %H:%M}"}
                for m in s.scalars(select(Model).order_by(Model.id.desc()))]


def get_model(db: Database, model_id: int) -> Model:
    """The model row or a UserError."""
    with db.session(read_only=True) as s:
        m = s.get(Model, int(model_id)) if model_id is not None else None
        if m is None:
            raise UserError("Pick a model first (Models tab), or register the bundled demo.")
        s.expunge(m)
        return m


def card(db: Database, model_id: int) -> ModelCard:
    """The model card: architecture, dataset, provenance, pool size."""
    m = get_model(db, model_id)
    with db.session(read_only=True) as s:
        pool = s.scalar(select(func.count()).select_from(Sample).where(Sample.model_id == m.id))
    return ModelCard(id=m.id, name=m.name, source=m.source, source_ref=m.source_ref, path=m.path,
                     content_hash=m.content_hash, backbone=m.config.get("backbone", "?"),
                     precond=m.config.get("precond", "?"), resolution=m.resolution, channels=m.channels,
                     network=m.config.get("network", {}), dataset=m.meta.get("dataset", {}),
                     training=m.meta.get("training", {}), provenance=m.meta.get("provenance", {}),
                     pool_size=int(pool or 0), created_at=f"{m.created_at:%Y-%m-%d %H:%M}")


def register_upload(db: Database, settings: Settings, path) -> tuple[str, int]:
    """An uploaded checkpoint: ours is registered now ('model', id); an EDM pickle is imported by a job ('job', id)."""
    from ..uploads import check_checkpoint, store_upload
    path = check_checkpoint(path, settings.max_upload_mb)
    if path.suffix.lower() == ".safetensors":
        try:
            return "model", register_checkpoint(db, settings, path, source="upload", source_ref=path.name)
        except UserError as e:  # name the user's file, not the server's temporary copy
            raise UserError(f"{path.name} is not a checkpoint this studio can register: "
                            f"{_plain_message(str(e), path)}") from None
    stored = store_upload(path, settings.path("uploads"))
    return "job", submit_import(db, settings, str(stored), name=path.stem)


def _plain_message(text: str, path: Path | None = None) -> str:
    """A library's message without server paths or Python object reprs (users act on file names)."""
    if path is not None:
        text = text.replace(str(path), path.name).replace(str(path.parent) + "/", "")
    text = re.sub(r"/tmp/gradio/[0-9a-f]+/", "", text)
    return re.sub(r"cannot identify image file <[^>]*>", "not a PNG or JPEG image", text)


def set_reference_images(db: Database, settings: Settings, model_id: int, files) -> int:
    """Store checked real images as the model's reference set (per-group FD); returns how many."""
    from ..uploads import import_reference_images
    get_model(db, model_id)
    try:
        n = import_reference_images(files, settings.path("reference", f"m{int(model_id)}"), settings.max_upload_mb)
    except UserError as e:
        raise UserError(_plain_message(str(e)) + " Upload PNG/JPEG files, or one .zip of them in EDM's layout.") \
            from None
    for old in settings.path("cache", "refstats").glob(f"m{int(model_id)}-*.npz"):
        old.unlink()  # statistics of the previous reference set are stale
    return n
