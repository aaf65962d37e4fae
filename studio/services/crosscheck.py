"""Classifier cross-check: two groupings with the same groups from different classifiers (e.g.
fairface-gender and deepface-gender) compared on the same pool samples.

Attribute classifiers are wrong often enough that a second opinion pays: the agreement rate (with a
Wilson interval) over the samples both assign to a group, the (A, B) count table, and the samples
they disagree on, one gallery page at a time, so a user can relabel them by hand.
"""
from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.orm import aliased

from pipelines.errors import UserError

from ..db import Database
from ..models import Assignment, Grouping, Sample
from .pool import GalleryPage

SMALL = 100


def partners(db: Database, grouping_id: int) -> list[dict]:
    """Groupings of other classifiers with exactly the same group names (candidates for a cross-check)."""
    with db.session(read_only=True) as s:
        g = s.get(Grouping, int(grouping_id))
        if g is None:
            raise UserError("Pick a grouping first.")
        rows = s.scalars(select(Grouping).where(Grouping.classifier != g.classifier).order_by(Grouping.id)).all()
        return [{"id": r.id, "name": r.name, "classifier": r.classifier} for r in rows
                if set(r.groups) == set(g.groups)]


def _check_pair(db: Database, a: int, b: int) -> tuple[Grouping, Grouping]:
    with db.session(read_only=True) as s:
        ga, gb = s.get(Grouping, int(a)), s.get(Grouping, int(b))
        if ga is None or gb is None:
            raise UserError("Pick two groupings to compare.")
        if ga.classifier == gb.classifier:
            raise UserError(f"Both groupings use classifier {ga.classifier!r}; a cross-check needs two classifiers.")
        if set(ga.groups) != set(gb.groups):
            raise UserError(f"The groupings' groups differ ({sorted(ga.groups)} vs {sorted(gb.groups)}); "
                            "compare groupings of the same attribute with the same group names.")
        s.expunge(ga)
        s.expunge(gb)
        return ga, gb


def _pairs(model_id: int, a: int, b: int):
    """Samples of the model that both groupings assign to a group: (sample, group by A, group by B)."""
    xa, xb = aliased(Assignment), aliased(Assignment)
    return (select(Sample.id, xa.group_name, xb.group_name)
            .join(xa, and_(xa.sample_id == Sample.id, xa.grouping_id == int(a)))
            .join(xb, and_(xb.sample_id == Sample.id, xb.grouping_id == int(b)))
            .where(Sample.model_id == int(model_id), xa.group_name.is_not(None), xb.group_name.is_not(None)))


def agreement(db: Database, model_id: int, grouping_a: int, grouping_b: int) -> dict:
    """Agreement rate of two classifiers' groupings on the model's pool, with a Wilson 95% interval."""
    from pipelines.attributes.groupings import wilson_interval
    ga, gb = _check_pair(db, grouping_a, grouping_b)
    with db.session(read_only=True) as s:
        rows = s.execute(_pairs(model_id, ga.id, gb.id)).all()
    groups = list(ga.groups)
    table = {x: {y: 0 for y in groups} for x in groups}
    for _, x, y in rows:
        table[x][y] += 1
    n, agree = len(rows), sum(1 for _, x, y in rows if x == y)
    out = {"a": f"{ga.classifier} · {ga.name}", "b": f"{gb.classifier} · {gb.name}", "n": n, "agree": agree,
           "disagree": n - agree, "table": table, "warnings": [],
           "how": "samples both classifiers assign to a group (below-threshold and no-face samples left out); "
                  "Wilson 95% interval"}
    if n == 0:
        out["warnings"].append("no sample is assigned by both: label the pool with both classifiers")
        out["rate"] = None
        return out
    lo, hi = wilson_interval(agree, n)
    out["rate"] = {"value": agree / n, "ci": [lo, hi]}
    if n < SMALL:
        out["warnings"].append(f"only {n} samples assigned by both: the interval is wide")
    return out


def disagreement_page(db: Database, model_id: int, grouping_a: int, grouping_b: int, page: int = 1,
                      per_page: int = 48) -> GalleryPage:
    """Gallery filter 'classifiers disagree': the samples the two groupings put in different groups."""
    ga, gb = _check_pair(db, grouping_a, grouping_b)
    xa, xb = aliased(Assignment), aliased(Assignment)
    q = (select(Sample, xa.group_name, xb.group_name)
         .join(xa, and_(xa.sample_id == Sample.id, xa.grouping_id == ga.id))
         .join(xb, and_(xb.sample_id == Sample.id, xb.grouping_id == gb.id))
         .where(Sample.model_id == int(model_id), xa.group_name.is_not(None), xb.group_name.is_not(None),
                xa.group_name != xb.group_name))
    with db.session(read_only=True) as s:
        total = int(s.scalar(select(func.count()).select_from(q.subquery())))
        pages = max(1, -(-total // per_page))
        page = min(max(1, int(page or 1)), pages)
        rows = s.execute(q.order_by(Sample.id).offset((page - 1) * per_page).limit(per_page)).all()
        out = [{"id": smp.id, "seed": smp.seed, "path": smp.path, "group_a": x, "group_b": y} for smp, x, y in rows]
    return GalleryPage(out, total, page, pages)
