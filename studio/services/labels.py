"""Labels: classifier predictions, manual corrections (kept apart, and winning), not-preferred marks.

Each sample's effective group under every grouping of a classifier is kept in `assignments`
so the gallery can filter a 200k-sample pool with one indexed query. Manual labels are
append-only: every correction is a new row, the newest one counts, none is ever lost.
"""
from __future__ import annotations

import json
import re
from typing import Iterable, Sequence

import numpy as np
from sqlalchemy import BigInteger, any_, bindparam, delete, func, literal_column, select, text, update
from sqlalchemy.types import ARRAY

from pipelines.errors import UserError

from ..db import Database
from ..models import Assignment, Classifier, Grouping, Label, LabelSource, Sample, utcnow
from .attributes import engine_grouping

CLEARED = None  # a manual row with class_name None withdraws the manual label


def store_classifier_labels(s, classifier: str, classes: Sequence[str], sample_ids: Sequence[int],
                            probs: np.ndarray) -> None:
    """Replace the classifier labels of these samples and refresh their assignments."""
    ids = [int(i) for i in sample_ids]
    lock_classifier(s, classifier)
    conn = s.connection()  # Core statements: no ORM object per row
    for part in _chunks(ids):
        conn.execute(delete(Label.__table__).where(id_in(conn, Label.sample_id, part), Label.classifier == classifier,
                                                   Label.source == LabelSource.classifier))
    top = probs.argmax(axis=1)
    if ids:
        conn.execute(Label.__table__.insert(), [
            dict(sample_id=i, classifier=classifier, source=LabelSource.classifier,
                 probs=[round(float(v), 6) for v in p], class_name=str(classes[k]), confidence=float(p[k]),
                 author=f"classifier:{classifier}", created_at=utcnow())
            for i, p, k in zip(ids, probs, top)])
    refresh_assignments(s, classifier, ids)


def lock_classifier(s, classifier: str) -> None:
    """Serialise writers of one classifier's labels and assignments until the transaction ends.

    Assignments are written after counting the stored rows, and a bulk action finds its label rows as
    the ones newer than the newest before it; two PostgreSQL transactions doing that at once could
    both insert the same assignment or take each other's labels. Locking the classifier's row first
    makes the second wait for the first to commit (SQLite writers are already serialised by BEGIN
    IMMEDIATE; the lock is a no-op there)."""
    s.connection().execute(select(Classifier.id).where(Classifier.name == classifier).with_for_update())


CHUNK = 20_000  # ids per statement (one bound parameter, see id_in)


def _chunks(ids: list[int]):
    for k in range(0, len(ids), CHUNK):
        yield ids[k:k + CHUNK]


def id_in(conn, col, ids: Sequence[int]):
    """`col IN (ids)` as ONE bound parameter: a JSON array read by json_each on SQLite, an integer
    array (`= ANY`) on PostgreSQL. SQLAlchemy's plain IN list binds one parameter per id, renders each
    name separately (for 5,000 ids that costs more than the query) and SQLite allows at most 32,766."""
    ids = [int(i) for i in ids]
    if conn.dialect.name == "sqlite":
        return col.in_(select(literal_column("value")).select_from(func.json_each(bindparam(None, json.dumps(ids)))))
    if conn.dialect.name == "postgresql":
        return col == any_(bindparam(None, ids, type_=ARRAY(BigInteger)))
    return col.in_(ids)


def _latest_manual(conn, classifier: str, ids: list[int]) -> dict[int, str | None]:
    """The newest manual label (class or None = withdrawn) of each sample that has one."""
    out: dict[int, str | None] = {}
    for part in _chunks(ids):
        newest = (select(Label.sample_id, func.max(Label.id).label("mid"))
                  .where(id_in(conn, Label.sample_id, part), Label.classifier == classifier,
                         Label.source == LabelSource.manual)
                  .group_by(Label.sample_id).subquery())
        out.update(conn.execute(select(Label.sample_id, Label.class_name)
                                .join(newest, Label.id == newest.c.mid)).all())
    return out


def _groupings(conn, classifier: str) -> list:
    return conn.execute(select(Grouping.id, Grouping.name, Grouping.groups, Grouping.threshold)
                        .where(Grouping.classifier == classifier).order_by(Grouping.id)).all()


def _class_to_group(g) -> dict[str, str]:
    return {c: name for name, members in g.groups.items() for c in members}


def _desired(conn, classifier: str, ids: list[int], groupings) -> dict[tuple[int, int], tuple]:
    """(sample, grouping) -> (group, confidence, source) recomputed from the labels: the newest
    manual label wins, else the classifier's probabilities under the grouping's threshold;
    a sample with neither has no assignment."""
    classes = list(conn.execute(select(Classifier.classes).where(Classifier.name == classifier)).scalar_one())
    auto: dict[int, list] = {}
    for part in _chunks(ids):
        auto.update(conn.execute(select(Label.sample_id, Label.probs).where(
            id_in(conn, Label.sample_id, part), Label.classifier == classifier,
            Label.source == LabelSource.classifier)).all())
    manual = {k: v for k, v in _latest_manual(conn, classifier, ids).items() if v is not None}
    auto_ids = [i for i in ids if i in auto and i not in manual]
    probs = np.asarray([auto[i] for i in auto_ids]) if auto_ids else None
    out: dict[tuple[int, int], tuple] = {}
    for g in groupings:
        if auto_ids:
            eg = engine_grouping({"name": g.name, "groups": g.groups})
            labels, gp = eg.assign(probs, classes, g.threshold)
            out.update(zip(zip(auto_ids, [g.id] * len(auto_ids)),
                           zip(map(str, labels), gp.max(axis=1).tolist(), ["classifier"] * len(auto_ids))))
        to_group = _class_to_group(g)
        out.update({(i, g.id): (to_group.get(cls, "uncertain"), 1.0, "manual") for i, cls in manual.items()})
    return out


def _executemany(conn, sql: str, rows: list[tuple]) -> int:
    """One statement with `?` placeholders for many rows of plain values, handed to the driver as
    tuples: SQLAlchemy's per-row parameter processing costs more than the database's work for
    60,000 rows. Other placeholder styles than SQLite's and psycopg's go through SQLAlchemy.
    Returns the rows the statements changed, summed."""
    style = conn.dialect.paramstyle
    if style == "qmark":
        return conn.exec_driver_sql(sql, rows).rowcount
    if style in ("format", "pyformat"):
        return conn.exec_driver_sql(sql.replace("?", "%s"), rows).rowcount
    names = [f"p{k}" for k in range(len(rows[0]))]
    stmt = text(re.sub(r"\?", lambda _, it=iter(names): ":" + next(it), sql))
    return conn.execute(stmt, [dict(zip(names, r)) for r in rows]).rowcount


def _write(conn, ids: list[int], gids: list[int], desired: dict[tuple[int, int], tuple]) -> int:
    """Make the stored assignments of these samples under these groupings equal `desired`, writing only
    rows whose value differs; returns how many rows were written.

    No stored row is read back: one count per sample says which samples already have a row under
    every grouping; their rows are UPDATEd in one executemany whose WHERE leaves equal rows alone.
    The other samples' rows (none, or some groupings missing) are deleted and INSERTed afresh, and
    samples no label supports any more lose theirs."""
    a = Assignment.__table__
    complete: set[int] = set()
    stored: set[int] = set()
    for part in _chunks(ids):
        for sid, count in conn.execute(select(a.c.sample_id, func.count()).where(
                id_in(conn, a.c.sample_id, part), a.c.grouping_id.in_(gids)).group_by(a.c.sample_id)):
            stored.add(sid)
            if count == len(gids):
                complete.add(sid)
    labelled = {sid for sid, _ in desired}
    written = 0
    drop = sorted(stored - (complete & labelled))  # rows to replace (partial) or remove (no label left)
    for part in _chunks(drop):
        written += conn.execute(delete(a).where(id_in(conn, a.c.sample_id, part), a.c.grouping_id.in_(gids))).rowcount
    update_rows = [(grp, conf, src, sid, gid, grp, conf, src)
                   for (sid, gid), (grp, conf, src) in desired.items() if sid in complete]
    insert_rows = [(sid, gid, grp, conf, src) for (sid, gid), (grp, conf, src) in desired.items() if sid not in complete]
    differs = "IS DISTINCT FROM" if conn.dialect.name == "postgresql" else "IS NOT"
    if update_rows:
        written += _executemany(conn, "UPDATE assignments SET group_name = ?, confidence = ?, source = ? "
                                      f"WHERE sample_id = ? AND grouping_id = ? AND (group_name {differs} ? "
                                      "OR confidence <> ? OR source <> ?)", update_rows)
    if insert_rows:
        written += _executemany(conn, "INSERT INTO assignments (sample_id, grouping_id, group_name, confidence, "
                                      "source) VALUES (?, ?, ?, ?, ?)", insert_rows)
    return written


def refresh_assignments(s, classifier: str, sample_ids: Iterable[int]) -> int:
    """Recompute the effective group of these samples under every grouping of `classifier`, rewriting
    only the assignment rows whose value changed; returns how many rows were written."""
    ids = sorted({int(i) for i in sample_ids})
    if not ids:
        return 0
    lock_classifier(s, classifier)
    conn = s.connection()
    groupings = _groupings(conn, classifier)
    if not groupings:
        return 0
    return _write(conn, ids, [g.id for g in groupings], _desired(conn, classifier, ids, groupings))


def add_manual_labels(s, sample_ids: Sequence[int], classifier: str, class_name: str | None,
                      author: str = "") -> list[int]:
    """Append a manual label row per sample (one batched INSERT) and update their assignments;
    returns the new label rows' ids. The caller checked the class and the sample ids."""
    ids = sorted({int(i) for i in sample_ids})
    lock_classifier(s, classifier)  # before the insert: the newest label is also the last one applied
    conn = s.connection()
    to_db = Label.__table__.c.created_at.type.bind_processor(conn.dialect)  # the column's own storage format
    now = to_db(utcnow()) if to_db else utcnow()
    before = conn.execute(select(func.coalesce(func.max(Label.id), 0))).scalar()
    _executemany(conn, "INSERT INTO labels (sample_id, classifier, source, class_name, confidence, author, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 [(i, classifier, LabelSource.manual.value, class_name, 1.0, author or "user", now) for i in ids])
    # Ours are exactly the newer manual rows of this classifier: its writers wait for the lock above.
    label_ids = conn.execute(select(Label.id).where(Label.id > before, Label.classifier == classifier,
                                                    Label.source == LabelSource.manual,
                                                    id_in(conn, Label.sample_id, ids))).scalars().all()
    if len(label_ids) != len(ids):
        raise RuntimeError(f"stored {len(ids)} manual labels but found {len(label_ids)} new rows; nothing was saved")
    if class_name is None:  # withdrawn: the previous manual label or the classifier's counts again
        refresh_assignments(s, classifier, ids)
    else:  # the new row is the newest manual label of each sample: it decides every grouping
        groupings = _groupings(conn, classifier)
        rows = {}
        for g in groupings:
            row = (_class_to_group(g).get(class_name, "uncertain"), 1.0, "manual")
            rows.update(dict.fromkeys(zip(ids, [g.id] * len(ids)), row))
        _write(conn, ids, [g.id for g in groupings], rows)
    return label_ids


def check_manual_label(s, sample_ids: Sequence[int], classifier: str, class_name: str | None) -> list[int]:
    """Sorted unique ids after checking the classifier, the class and that every sample exists."""
    ids = sorted({int(i) for i in sample_ids})
    if not ids:
        raise UserError("Select at least one sample first (click thumbnails with 'Select' on, or type ids).")
    clf = s.scalar(select(Classifier).where(Classifier.name == classifier))
    if clf is None:
        raise UserError(f"Classifier {classifier!r} is not registered.")
    if class_name is not None and class_name not in clf.classes:
        raise UserError(f"{class_name!r} is not a class of {classifier} (classes: {', '.join(clf.classes)}).")
    found: set[int] = set()
    conn = s.connection()
    for part in _chunks(ids):
        found.update(conn.execute(select(Sample.id).where(id_in(conn, Sample.id, part))).scalars())
    missing = [i for i in ids if i not in found]
    if missing:
        raise UserError(f"No samples with ids {missing[:10]}; they may belong to another model.")
    return ids


def set_manual_label(db: Database, sample_ids: Sequence[int], classifier: str, class_name: str | None,
                     author: str = "") -> int:
    """Label samples by hand as `class_name` (None withdraws the manual label); returns how many."""
    with db.session() as s:
        ids = check_manual_label(s, sample_ids, classifier, class_name)
        add_manual_labels(s, ids, classifier, class_name, author)
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
