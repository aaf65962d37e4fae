"""The sample pool of a model: generate / label jobs, the paged and filtered gallery, group counts."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, select

from pipelines.attributes.groupings import EXCLUDED_LABELS, wilson_interval
from pipelines.errors import UserError

from ..db import Database
from ..settings import DEFAULT_STEPS
from ..models import Assignment, Sample
from ..jobs.specs import GenerateSpec, LabelSpec
from . import jobs as jobs_service

STATUSES = ("all", "unlabelled", "classifier", "manual", "not preferred")
MAX_POOL_JOB = 1_000_000


@dataclass
class GalleryPage:
    """One page of the gallery."""
    rows: list[dict]
    total: int
    page: int
    pages: int


def next_seed(db: Database, model_id: int) -> int:
    """First seed not yet used in this model's pool."""
    with db.session(read_only=True) as s:
        top = s.scalar(select(func.max(Sample.seed)).where(Sample.model_id == model_id))
        return 0 if top is None else int(top) + 1


def submit_generate(db: Database, model_id: int, n: int, steps: int = DEFAULT_STEPS, device: str = "cpu",
                    batch_size: int = 64) -> int:
    """Queue a job adding `n` samples (fresh seeds) to the model's pool; returns the job id."""
    n = int(n or 0)
    if not 1 <= n <= MAX_POOL_JOB:
        raise UserError(f"Number of samples must be between 1 and {MAX_POOL_JOB:,} (got {n}).")
    if not 1 <= int(steps) <= 1000:
        raise UserError(f"Sampler steps must be between 1 and 1000 (got {steps}).")
    start = next_seed(db, model_id)
    spec = GenerateSpec(model_id=int(model_id), seed_start=start, n=n, steps=int(steps), batch_size=int(batch_size))
    return jobs_service.submit(db, spec,
                               title=f"Generate {n} samples (model #{model_id}, seeds {start}-{start + n - 1})",
                               device=device)


def submit_label(db: Database, model_id: int, classifier: str, device: str = "cpu") -> int:
    """Queue a job labelling every not-yet-labelled sample of the pool with `classifier`."""
    if not classifier:
        raise UserError("Pick a classifier to label with.")
    return jobs_service.submit(db, LabelSpec(model_id=int(model_id), classifier=classifier),
                               title=f"Label pool of model #{model_id} with {classifier}", device=device)


def _filters(model_id, grouping_id, group, min_conf, max_conf, status):
    conds = [Sample.model_id == model_id]
    if status == "not preferred":
        conds.append(Sample.not_preferred.is_(True))
    if grouping_id is None:
        if group not in (None, "", "any") or status in ("classifier", "manual"):
            raise UserError("Pick a grouping to filter by group or label status.")
        return conds
    if status == "unlabelled":
        conds.append(Assignment.sample_id.is_(None))
    elif status == "classifier":
        conds.append(Assignment.source == "classifier")
    elif status == "manual":
        conds.append(Assignment.source == "manual")
    if group not in (None, "", "any"):
        conds.append(Assignment.group_name == group)
    if min_conf is not None and float(min_conf) > 0:
        conds.append(Assignment.confidence >= float(min_conf))
    if max_conf is not None and float(max_conf) < 1:
        conds.append(Assignment.confidence <= float(max_conf))
    return conds


def gallery_page(db: Database, model_id: int, grouping_id: int | None = None, group: str | None = None,
                 min_conf: float | None = None, max_conf: float | None = None, status: str = "all",
                 page: int = 1, per_page: int = 48) -> GalleryPage:
    """Samples matching the filters, one page at a time (never the whole pool)."""
    if status not in STATUSES:
        raise UserError(f"Unknown status filter {status!r}; choose one of {', '.join(STATUSES)}.")
    conds = _filters(int(model_id), grouping_id, group, min_conf, max_conf, status)
    join_on = and_(Assignment.sample_id == Sample.id, Assignment.grouping_id == (grouping_id or -1))
    with db.session(read_only=True) as s:
        base = select(Sample, Assignment).outerjoin(Assignment, join_on).where(*conds)
        total = s.scalar(select(func.count()).select_from(base.subquery()))
        pages = max(1, -(-int(total) // per_page))
        page = min(max(1, int(page or 1)), pages)
        rows = s.execute(base.order_by(Sample.id).offset((page - 1) * per_page).limit(per_page)).all()
        out = [{"id": smp.id, "seed": smp.seed, "path": smp.path, "not_preferred": smp.not_preferred,
                "group": a.group_name if a else None, "confidence": a.confidence if a else None,
                "source": (a.source.value if hasattr(a.source, "value") else a.source) if a else None}
               for smp, a in rows]
    return GalleryPage(out, int(total), page, pages)


def group_counts(db: Database, model_id: int, grouping_id: int) -> dict[str, int]:
    """Samples per effective group (including 'uncertain'/'no_face') in the pool."""
    with db.session(read_only=True) as s:
        rows = s.execute(select(Assignment.group_name, func.count()).join(Sample, Sample.id == Assignment.sample_id)
                         .where(Sample.model_id == model_id, Assignment.grouping_id == grouping_id)
                         .group_by(Assignment.group_name)).all()
    return {g: int(n) for g, n in rows}


def base_fractions(db: Database, model_id: int, grouping: dict) -> dict[str, dict]:
    """Group -> {fraction, lo, hi, count} among confidently assigned pool samples (Wilson 95% CI)."""
    counts = group_counts(db, model_id, grouping["id"])
    groups = list(grouping["groups"])
    n = sum(counts.get(g, 0) for g in groups)
    if n == 0:
        raise UserError("The pool has no labelled samples for this grouping yet: generate samples and "
                        "label them (Generate & label tab) before setting a target.")
    out = {}
    for g in groups:
        k = counts.get(g, 0)
        lo, hi = wilson_interval(k, n)
        out[g] = {"fraction": k / n, "lo": lo, "hi": hi, "count": k}
    out_of = {lab: counts.get(lab, 0) for lab in EXCLUDED_LABELS}
    return {"groups": out, "assigned": n, "excluded": out_of}


def pool_size(db: Database, model_id: int) -> int:
    """Number of samples in the model's pool."""
    with db.session(read_only=True) as s:
        return int(s.scalar(select(func.count()).select_from(Sample).where(Sample.model_id == model_id)))


def not_preferred_ids(db: Database, model_id: int) -> list[int]:
    """Ids of the samples the user marked not preferred."""
    with db.session(read_only=True) as s:
        return list(s.scalars(select(Sample.id).where(Sample.model_id == model_id,
                                                      Sample.not_preferred.is_(True)).order_by(Sample.id)))
