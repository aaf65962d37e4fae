"""Labels: classifier predictions, manual corrections (kept apart, and winning), not-preferred marks.

Each sample's effective group under every grouping of a classifier is kept in `assignments`
so the gallery can filter a 200k-sample pool with one indexed query. Manual labels are
append-only: every correction is a new row, the newest one counts, none is ever lost.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from sqlalchemy import delete, func, select, update

from pipelines.errors import UserError

from ..db import Database
from ..models import Assignment, Classifier, Grouping, Label, LabelSource, Sample
from .attributes import engine_grouping

CLEARED = None  # a manual row with class_name None withdraws the manual label


def store_classifier_labels(s, classifier: str, classes: Sequence[str], sample_ids: Sequence[int],
                            probs: np.ndarray) -> None:
    """Replace the classifier labels of these samples and refresh their assignments."""
    ids = [int(i) for i in sample_ids]
    s.execute(delete(Label).where(Label.sample_id.in_(ids), Label.classifier == classifier,
                                  Label.source == LabelSource.classifier))
    top = probs.argmax(axis=1)
    s.add_all([Label(sample_id=i, classifier=classifier, source=LabelSource.classifier,
                     probs=[round(float(v), 6) for v in p], class_name=str(classes[k]), confidence=float(p[k]),
                     author=f"classifier:{classifier}")
               for i, p, k in zip(ids, probs, top)])
    s.flush()
    refresh_assignments(s, classifier, ids)


def _latest_manual(s, classifier: str, ids: list[int]) -> dict[int, str | None]:
    newest = (select(Label.sample_id, func.max(Label.id).label("mid"))
              .where(Label.sample_id.in_(ids), Label.classifier == classifier, Label.source == LabelSource.manual)
              .group_by(Label.sample_id).subquery())
    rows = s.execute(select(Label.sample_id, Label.class_name).join(newest, Label.id == newest.c.mid)).all()
    return {sid: cls for sid, cls in rows}


def refresh_assignments(s, classifier: str, sample_ids: Iterable[int]) -> None:
    """Recompute the effective group of these samples under every grouping of `classifier`."""
    ids = [int(i) for i in sample_ids]
    if not ids:
        return
    clf = s.scalar(select(Classifier).where(Classifier.name == classifier))
    classes = list(clf.classes)
    groupings = s.scalars(select(Grouping).where(Grouping.classifier == classifier)).all()
    auto = dict(s.execute(select(Label.sample_id, Label.probs).where(
        Label.sample_id.in_(ids), Label.classifier == classifier, Label.source == LabelSource.classifier)).all())
    manual = {k: v for k, v in _latest_manual(s, classifier, ids).items() if v is not None}
    for g in groupings:
        eg = engine_grouping({"name": g.name, "groups": g.groups})
        rows = []
        auto_ids = [i for i in ids if i in auto and i not in manual]
        if auto_ids:
            labels, gp = eg.assign(np.asarray([auto[i] for i in auto_ids]), classes, g.threshold)
            rows += [dict(sample_id=i, grouping_id=g.id, group_name=str(lab), confidence=float(p.max()),
                          source=LabelSource.classifier) for i, lab, p in zip(auto_ids, labels, gp)]
        class_to_group = {c: name for name, members in g.groups.items() for c in members}
        rows += [dict(sample_id=i, grouping_id=g.id, group_name=class_to_group.get(cls, "uncertain"),
                      confidence=1.0, source=LabelSource.manual) for i, cls in manual.items()]
        s.execute(delete(Assignment).where(Assignment.grouping_id == g.id, Assignment.sample_id.in_(ids)))
        if rows:
            s.execute(Assignment.__table__.insert(), rows)


def set_manual_label(db: Database, sample_ids: Sequence[int], classifier: str, class_name: str | None,
                     author: str = "") -> int:
    """Label samples by hand as `class_name` (None withdraws the manual label); returns how many."""
    ids = sorted({int(i) for i in sample_ids})
    if not ids:
        raise UserError("Select at least one sample first (click thumbnails with 'Select' on, or type ids).")
    with db.session() as s:
        clf = s.scalar(select(Classifier).where(Classifier.name == classifier))
        if clf is None:
            raise UserError(f"Classifier {classifier!r} is not registered.")
        if class_name is not None and class_name not in clf.classes:
            raise UserError(f"{class_name!r} is not a class of {classifier} (classes: {', '.join(clf.classes)}).")
        found = set(s.scalars(select(Sample.id).where(Sample.id.in_(ids))))
        missing = [i for i in ids if i not in found]
        if missing:
            raise UserError(f"No samples with ids {missing[:10]}; they may belong to another model.")
        s.add_all([Label(sample_id=i, classifier=classifier, source=LabelSource.manual, class_name=class_name,
                         confidence=1.0, author=author or "user") for i in ids])
        s.flush()
        refresh_assignments(s, classifier, ids)
    return len(ids)


def set_not_preferred(db: Database, sample_ids: Sequence[int], flag: bool = True) -> int:
    """Mark (or unmark) samples as not preferred; returns how many changed."""
    ids = [int(i) for i in sample_ids]
    if not ids:
        raise UserError("Select at least one sample first.")
    with db.session() as s:
        return s.execute(update(Sample).where(Sample.id.in_(ids)).values(not_preferred=bool(flag))).rowcount


def sample_detail(db: Database, sample_id: int, classifier: str | None) -> dict:
    """A sample with its classifier probabilities, manual history and not-preferred flag."""
    with db.session(read_only=True) as s:
        smp = s.get(Sample, int(sample_id))
        if smp is None:
            raise UserError(f"No sample #{sample_id}.")
        out = {"id": smp.id, "seed": smp.seed, "path": smp.path, "hash": smp.content_hash,
               "not_preferred": smp.not_preferred, "steps": smp.steps, "classes": [], "probs": None,
               "manual": None, "history": []}
        if classifier:
            clf = s.scalar(select(Classifier).where(Classifier.name == classifier))
            out["classes"] = list(clf.classes) if clf else []
            auto = s.scalar(select(Label).where(Label.sample_id == smp.id, Label.classifier == classifier,
                                                Label.source == LabelSource.classifier))
            out["probs"] = list(auto.probs) if auto else None
            hist = s.scalars(select(Label).where(Label.sample_id == smp.id, Label.classifier == classifier,
                                                 Label.source == LabelSource.manual).order_by(Label.id)).all()
            out["history"] = [(f"{h.created_at:%Y-%m-%d %H:%M:%S}", h.author, h.class_name) for h in hist]
            out["manual"] = hist[-1].class_name if hist else None
        return out


def count_manual(db: Database, classifier: str) -> int:
    """Number of manual label rows ever written for a classifier."""
    with db.session(read_only=True) as s:
        return int(s.scalar(select(func.count()).select_from(Label).where(
            Label.classifier == classifier, Label.source == LabelSource.manual)))
