"""Verify a model's sample pool: each stored PNG still holds the bytes it was written with and decodes.

A bad sample (missing, damaged, truncated, replaced) is regenerated from its stored seed and step count
with the model that made it. The sampler is deterministic per seed, so on the same model file and the
same device type the PNG comes back byte for byte; the new bytes are written only when their hash equals
the stored content hash, so a regeneration never silently swaps a labelled image for a different one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from sqlalchemy import func, select

from pipelines.errors import UserError

from ..db import Database
from ..models import Job, Model, Sample
from ..settings import Settings
from ..storage import png_bytes, sha256_bytes
from ..jobs.specs import VerifyPoolSpec
from . import jobs as jobs_service

CHUNK = 512          # samples read from the database at a time while checking
REGEN_BATCH = 64     # seeds sampled together when regenerating (the generate job's default batch)


@dataclass
class BadSample:
    """A pool sample whose file does not hold its stored bytes."""
    id: int
    seed: int
    steps: int
    path: str
    content_hash: str
    reason: str
    made_on: str | None = None   # device of the job that generated it (None: that job row is gone)


@dataclass
class VerifyReport:
    """What a verification found and did."""
    checked: int = 0
    bad: list[BadSample] = field(default_factory=list)
    regenerated: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)   # (sample id, why it was not regenerated)

    def message(self) -> str:
        """One line for the job panel."""
        text = (f"checked {self.checked:,} samples: {len(self.bad)} bad, {len(self.regenerated)} regenerated "
                f"bit-identical, {len(self.failed)} could not be regenerated")
        if self.failed:
            sid, why = self.failed[0]
            text += f" (e.g. sample #{sid}: {why})"
        return text

    def as_result(self, limit: int = 50) -> dict:
        """JSON for the job's result (lists cut to `limit` entries)."""
        return {"message": self.message(), "checked": self.checked, "bad": len(self.bad),
                "regenerated": len(self.regenerated), "could_not_regenerate": len(self.failed),
                "bad_samples": [{"id": b.id, "seed": b.seed, "path": b.path, "reason": b.reason}
                                for b in self.bad[:limit]],
                "failures": [{"id": i, "reason": why} for i, why in self.failed[:limit]]}


def unreadable_reason(path: Path) -> str | None:
    """None when the PNG decodes, else why not (missing, truncated, not an image)."""
    try:
        with Image.open(path) as pil:
            pil.load()
    except FileNotFoundError:
        return "the file is missing"
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports damaged data as any of these
        return f"the file does not decode ({e})"
    return None


def check_file(path: Path, content_hash: str) -> str | None:
    """None when the file holds exactly the stored bytes, else what is wrong with it.

    Matching bytes imply a readable PNG (the hash was taken of the PNG as written); only a mismatch is decoded,
    to say whether the file is damaged or was replaced by another valid image."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "the file is missing"
    except OSError as e:
        return f"the file cannot be read ({e.strerror or e})"
    if sha256_bytes(data) == content_hash:
        return None
    return unreadable_reason(path) or "the file decodes but is not the image that was stored (content hash differs)"


def find_bad(db: Database, settings: Settings, model_id: int, progress=None) -> tuple[int, list[BadSample]]:
    """(samples checked, the bad ones) of a model's pool, read in chunks (never the whole pool at once)."""
    with db.session(read_only=True) as s:
        total = int(s.scalar(select(func.count()).select_from(Sample).where(Sample.model_id == model_id)))
    checked, bad, last = 0, [], 0
    while True:
        with db.session(read_only=True) as s:
            rows = s.execute(select(Sample.id, Sample.seed, Sample.steps, Sample.path, Sample.content_hash,
                                    Job.device).outerjoin(Job, Job.id == Sample.job_id)
                             .where(Sample.model_id == model_id, Sample.id > last)
                             .order_by(Sample.id).limit(CHUNK)).all()
        if not rows:
            return checked, bad
        for sid, seed, steps, path, digest, device in rows:
            why = check_file(settings.abs(path), digest)
            if why is not None:
                bad.append(BadSample(sid, seed, steps, path, digest, why, device))
        checked += len(rows)
        last = rows[-1][0]
        if progress is not None:
            progress(checked, total)


def _load_maker(db: Database, settings: Settings, model_id: int, device: str):
    """The model that made the pool, after checking its file is still the registered one."""
    from pipelines.checkpoints.native import load_model
    from pipelines.checkpoints.download import sha256_file
    with db.session(read_only=True) as s:
        row = s.get(Model, int(model_id))
        if row is None:
            raise UserError(f"Model #{model_id} is no longer registered; its samples cannot be regenerated.")
        path, digest, name = settings.abs(row.path), row.content_hash, row.name
    if not path.is_file():
        raise UserError(f"The file of model {name} ({path}) is missing; restore it to regenerate its samples.")
    if sha256_file(path) != digest:
        raise UserError(f"The file of model {name} ({path}) is not the one registered (content hash differs), "
                        "so it would not give back the same samples; restore the original file.")
    model, _ = load_model(path, device=device)
    return model


def regenerate(db: Database, settings: Settings, model_id: int, bad: list[BadSample], device: str,
               progress=None) -> tuple[list[int], list[tuple[int, str]]]:
    """Sample the bad seeds again; write each PNG whose bytes match the stored hash.

    Returns (regenerated sample ids, [(sample id, why not)])."""
    from pipelines.generate import generate_images
    from pipelines.sampler import SamplerConfig
    if not bad:
        return [], []
    try:
        model = _load_maker(db, settings, model_id, device)
    except UserError as e:
        return [], [(b.id, str(e)) for b in bad]
    done, failed, count = [], [], 0
    by_steps: dict[int, list[BadSample]] = {}
    for b in bad:
        by_steps.setdefault(int(b.steps), []).append(b)
    for steps, group in sorted(by_steps.items()):
        for start in range(0, len(group), REGEN_BATCH):
            chunk = group[start:start + REGEN_BATCH]
            images = generate_images(model, [b.seed for b in chunk], SamplerConfig(num_steps=steps),
                                     batch_size=REGEN_BATCH, device=device)
            for b, img in zip(chunk, images):
                data = png_bytes(img)
                if sha256_bytes(data) != b.content_hash:
                    where = f"made on {b.made_on}" if b.made_on else "made on a device no longer recorded"
                    failed.append((b.id, f"the regenerated image differs from the stored one ({where}, "
                                         f"regenerated on {device}); the file was left as it is"))
                    continue
                dest = settings.abs(b.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(dest)  # atomic: a reader sees the damaged file or the restored one, never half of one
                done.append(b.id)
            count += len(chunk)
            if progress is not None:
                progress(count, len(bad))
    return done, failed


def verify_pool(db: Database, settings: Settings, model_id: int, device: str = "cpu", regenerate_bad: bool = True,
                progress=None) -> VerifyReport:
    """Check every sample of the pool and (optionally) regenerate the bad ones.

    progress(fraction, text) if given: checking is the first 80%, regenerating the rest."""
    def checking(k, n):
        if progress is not None:
            progress(0.8 * k / max(n, 1), f"checked {k:,}/{n:,} samples")

    def regenerating(k, n):
        if progress is not None:
            progress(0.8 + 0.2 * k / max(n, 1), f"regenerated {k}/{n} bad samples")

    report = VerifyReport()
    report.checked, report.bad = find_bad(db, settings, int(model_id), checking)
    if regenerate_bad:
        report.regenerated, report.failed = regenerate(db, settings, int(model_id), report.bad, device,
                                                       regenerating)
    return report


def submit_verify(db: Database, model_id: int, device: str = "cpu") -> int:
    """Queue a job verifying (and repairing) a model's pool; returns the job id."""
    with db.session(read_only=True) as s:
        if model_id is None or s.get(Model, int(model_id)) is None:
            raise UserError("Pick a registered model first (Models tab).")
    return jobs_service.submit(db, VerifyPoolSpec(model_id=int(model_id)),
                               title=f"Verify pool of model #{model_id}", device=device)
