"""Curation at scale: the pool's embedding map, selections, bulk labels with undo, near-duplicates.

Features and their 2-D projection are cached per (pool, classifier) under
`<data>/cache/embedding/m<model>-<classifier>/` (features.npz, projection.npz). Features are
computed only for samples that have none yet; the projection is redone whenever the pool's ids
differ from the ones it was made of, so a grown pool never shows a silently partial map.

The last bulk action of each pool is kept in `<data>/curation/undo-m<model>.json`: the manual
label rows it added and the not-preferred flags it overwrote. Undo deletes exactly those rows
and restores exactly those flags, so labels (manual and automatic) are what they were.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sqlalchemy import String, and_, delete, func, select, type_coerce, update

from pipelines.errors import UserError

from ..db import Database
from ..models import Assignment, Label, Sample, SetMember, SyntheticSet
from ..settings import Settings
from ..storage import read_pngs
from ..jobs.specs import EmbedSpec
from . import jobs as jobs_service
from .labels import add_manual_labels, check_manual_label, id_in, lock_classifier, refresh_assignments
from .pool import STATUSES, GalleryPage, _filters

CHUNK = 20_000  # ids per SQL statement (one bound parameter, see labels.id_in)


# ----------------------------------------------------------------------------- cache files

def cache_dir(settings: Settings, model_id: int, classifier: str) -> Path:
    """Folder of one (pool, classifier) map."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", classifier)
    return settings.path("cache", "embedding", f"m{int(model_id)}-{safe}")


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load_npz(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: never unpickle
        return {k: z[k] for k in z.files}


def _driver_rows(conn, stmt) -> list[tuple]:
    """The rows of a Core SELECT whose parameters are integers only, as the driver's plain tuples.

    For the 50,000 rows of a pool, SQLAlchemy's Row objects and result processing cost several
    times the query. The integers are rendered into the SQL; values come back as the driver returns
    them (SQLite: booleans as 0/1)."""
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


def pool_ids(db: Database, model_id: int) -> np.ndarray:
    """Sorted sample ids of the pool."""
    with db.session(read_only=True) as s:
        rows = _driver_rows(s.connection(), select(Sample.id).where(Sample.model_id == int(model_id))
                            .order_by(Sample.id))
    return np.asarray([r[0] for r in rows], dtype=np.int64)


# ----------------------------------------------------------------------------- features + projection

def submit_map(db: Database, model_id: int, classifier: str, device: str = "cpu") -> int:
    """Queue a job computing the features of new pool samples and the 2-D map; returns the job id."""
    if not classifier:
        raise UserError("Pick a grouping first: the map uses its classifier's features.")
    return jobs_service.submit(db, EmbedSpec(model_id=int(model_id), classifier=classifier),
                               title=f"Embedding map of model #{model_id} ({classifier} features)", device=device)


def compute_map(db: Database, settings: Settings, model_id: int, classifier: str, device: str = "cpu",
                method: str = "auto", progress: Callable[[int, int], None] | None = None,
                batch_size: int = 256, extractor=None) -> dict:
    """Features for samples lacking them, then the projection of the whole pool; returns a summary.

    `extractor` (name, fn) replaces the classifier's own features (tests, benchmarks).
    """
    from pipelines.embedding import feature_extractor
    if extractor is None:
        from .attributes import load_classifier
        extractor = feature_extractor(load_classifier(db, classifier, device=device), device=device)
    name, fn = extractor
    folder = cache_dir(settings, model_id, classifier)
    ids = pool_ids(db, model_id)
    if len(ids) < 2:
        raise UserError(f"The pool has {len(ids)} sample(s); generate some before drawing its map.")
    old = _load_npz(folder / "features.npz")
    if old is not None and str(old["feature"]) == name:
        keep = np.isin(old["ids"], ids)
        have_ids, have = old["ids"][keep], old["features"][keep]
    else:  # first map, or the classifier's weights changed: start over
        have_ids, have = np.zeros(0, np.int64), None
    todo = ids[~np.isin(ids, have_ids)]
    with db.session(read_only=True) as s:
        paths = dict(s.execute(select(Sample.id, Sample.path).where(Sample.model_id == int(model_id))).all())
    new = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        new.append(np.asarray(fn(read_pngs([settings.abs(paths[int(i)]) for i in chunk])), dtype=np.float32))
        if progress is not None:
            progress(start + len(chunk), len(todo))
    parts = ([have] if have is not None and len(have) else []) + new
    feats = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    all_ids = np.concatenate([have_ids, todo])
    order = np.argsort(all_ids)
    return {**store_map(settings, model_id, classifier, all_ids[order], feats[order], name, method),
            "computed": int(len(todo))}


def store_map(settings: Settings, model_id: int, classifier: str, ids: np.ndarray, feats: np.ndarray, name: str,
              method: str = "auto") -> dict:
    """Cache features (sorted by sample id) and their 2-D projection; returns n, method, dims, projection_s."""
    from pipelines.embedding import project_2d
    folder = cache_dir(settings, model_id, classifier)
    _save_npz(folder / "features.npz", ids=ids, features=feats, feature=np.array(name))
    t0 = time.perf_counter()
    xy, used = project_2d(feats, method)
    seconds = time.perf_counter() - t0
    _save_npz(folder / "projection.npz", ids=ids, xy=xy, method=np.array(used), feature=np.array(name))
    return {"n": int(len(ids)), "method": used, "feature": name, "dims": int(feats.shape[1]),
            "projection_s": round(seconds, 3)}


def load_map(db: Database, settings: Settings, model_id: int, classifier: str) -> dict | None:
    """The cached map with `missing` = pool samples added since it was made (None: no map yet)."""
    proj = _load_npz(cache_dir(settings, model_id, classifier) / "projection.npz")
    if proj is None:
        return None
    ids = pool_ids(db, model_id)
    inside = np.isin(proj["ids"], ids)  # samples deleted since are dropped from view
    return {"ids": proj["ids"][inside], "xy": proj["xy"][inside], "method": str(proj["method"]),
            "feature": str(proj["feature"]), "missing": int((~np.isin(ids, proj["ids"])).sum())}


def point_attributes(db: Database, model_id: int, grouping_id: int | None, ids: np.ndarray) -> dict:
    """Per map point: group (None: unlabelled), confidence (nan: unlabelled), not-preferred flag."""
    join_on = and_(Assignment.sample_id == Sample.id, Assignment.grouping_id == int(grouping_id or -1))
    with db.session(read_only=True) as s:  # one query over the pool, then numpy lookups
        rows = _driver_rows(s.connection(), select(Sample.id, Sample.not_preferred, Assignment.group_name,
                                                   Assignment.confidence, Assignment.sample_id)
                            .outerjoin(Assignment, join_on).where(Sample.model_id == int(model_id))
                            .order_by(Sample.id))
    group = np.full(len(ids), None, dtype=object)
    conf = np.full(len(ids), np.nan)
    np_flag = np.zeros(len(ids), dtype=bool)
    if not rows:
        return {"group": group, "confidence": conf, "not_preferred": np_flag}
    sid, flag, grp, cf, assigned = zip(*rows)
    sid = np.asarray(sid, dtype=np.int64)
    pos = np.searchsorted(sid, ids)
    found = (pos < len(sid)) & (sid[np.minimum(pos, len(sid) - 1)] == ids)
    src = pos[found]
    np_flag[found] = np.asarray(flag, dtype=bool)[src]
    labelled = np.asarray([a is not None for a in assigned], dtype=bool)[src]
    grp_arr = np.asarray([g if g is not None else "uncertain" for g in grp], dtype=object)[src]
    conf_arr = np.asarray([c if c is not None else np.nan for c in cf], dtype=float)[src]
    where = np.flatnonzero(found)[labelled]
    group[where] = grp_arr[labelled]
    conf[where] = conf_arr[labelled]
    return {"group": group, "confidence": conf, "not_preferred": np_flag}


def ids_in_box(m: dict, x0: float, x1: float, y0: float, y1: float) -> list[int]:
    """Sample ids of the map points inside a rectangle (what a box selection picks)."""
    xy = m["xy"]
    inside = (xy[:, 0] >= min(x0, x1)) & (xy[:, 0] <= max(x0, x1)) & (xy[:, 1] >= min(y0, y1)) & \
             (xy[:, 1] <= max(y0, y1))
    return [int(i) for i in m["ids"][inside]]


def ids_in_lasso(m: dict, xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Sample ids of the map points inside a lasso polygon."""
    from matplotlib.path import Path as Polygon
    if len(xs) < 3 or len(xs) != len(ys):
        raise UserError("A lasso needs at least 3 points; draw it again.")
    inside = Polygon(np.column_stack([xs, ys])).contains_points(m["xy"])
    return [int(i) for i in m["ids"][inside]]


def ids_in_selection(m: dict, geometry: dict) -> list[int]:
    """Ids inside a map selection: {'box': [x0, x1, y0, y1]} or {'lasso': [[x, ...], [y, ...]]}."""
    if "box" in geometry:
        return ids_in_box(m, *[float(v) for v in geometry["box"]])
    if "lasso" in geometry:
        xs, ys = geometry["lasso"]
        return ids_in_lasso(m, [float(v) for v in xs], [float(v) for v in ys])
    raise UserError(f"Unknown map selection {sorted(geometry)}; use the box or lasso tool.")


# ----------------------------------------------------------------------------- selections

def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise UserError(f"Unknown status filter {status!r}; choose one of {', '.join(STATUSES)}.")


def _filtered(model_id, grouping_id, group, min_conf, max_conf, status):
    _check_status(status)
    join_on = and_(Assignment.sample_id == Sample.id, Assignment.grouping_id == (grouping_id or -1))
    conds = _filters(int(model_id), grouping_id, group, min_conf, max_conf, status)
    return join_on, conds


def matching_ids(db: Database, model_id: int, grouping_id: int | None = None, group: str | None = None,
                 min_conf: float | None = None, max_conf: float | None = None, status: str = "all") -> list[int]:
    """Every sample id matching the gallery's filters (for 'select all matching')."""
    join_on, conds = _filtered(model_id, grouping_id, group, min_conf, max_conf, status)
    with db.session(read_only=True) as s:  # Core: fetched in one call, no ORM per row
        return s.connection().execute(select(Sample.id).outerjoin(Assignment, join_on).where(*conds)
                                      .order_by(Sample.id)).scalars().all()


def selection_page(db: Database, model_id: int, ids: Sequence[int], grouping_id: int | None = None,
                   group: str | None = None, min_conf: float | None = None, max_conf: float | None = None,
                   status: str = "all", page: int = 1, per_page: int = 48) -> GalleryPage:
    """A gallery page of the selected samples that also match the filters.

    Two indexed queries restricted to the selection (passed as one parameter, see labels.id_in): its
    count and one page; neither reads the rest of the pool.
    """
    wanted = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64)).tolist()
    join_on, conds = _filtered(model_id, grouping_id, group, min_conf, max_conf, status)
    with db.session(read_only=True) as s:
        conn = s.connection()
        where = [*conds, id_in(conn, Sample.id, wanted)]
        total = int(conn.execute(select(func.count()).select_from(Sample).outerjoin(Assignment, join_on)
                                 .where(*where)).scalar())
        pages = max(1, -(-total // per_page))
        page = min(max(1, int(page or 1)), pages)
        rows = conn.execute(select(Sample.id, Sample.seed, Sample.path, Sample.not_preferred, Assignment.group_name,
                                   Assignment.confidence, type_coerce(Assignment.source, String))
                            .outerjoin(Assignment, join_on).where(*where).order_by(Sample.id)
                            .limit(per_page).offset((page - 1) * per_page)).all()
    out = [{"id": sid, "seed": seed, "path": path, "not_preferred": bool(flag), "group": grp, "confidence": conf,
            "source": src} for sid, seed, path, flag, grp, conf, src in rows]
    return GalleryPage(out, total, page, pages)


# ----------------------------------------------------------------------------- bulk actions + undo

def _undo_path(settings: Settings, model_id: int) -> Path:
    return settings.path("curation", f"undo-m{int(model_id)}.json")


def _write_undo(settings: Settings, model_id: int, record: dict) -> None:
    path = _undo_path(settings, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def _own_ids(db: Database, model_id: int, ids: Sequence[int]) -> list[int]:
    """The ids, checked to be samples of this pool (clear error otherwise)."""
    wanted = sorted({int(i) for i in ids})
    if not wanted:
        raise UserError("Select at least one sample first (click thumbnails in select mode, 'Select page', "
                        "'Select all matching', or a box/lasso on the map).")
    pool = pool_ids(db, model_id)
    missing = np.asarray(wanted)[~np.isin(wanted, pool)]
    if len(missing):
        raise UserError(f"Samples {missing[:10].tolist()} are not in this model's pool; clear the selection "
                        "and select again.")
    return wanted


def bulk_label(db: Database, settings: Settings, model_id: int, ids: Sequence[int], classifier: str,
               class_name: str, author: str = "studio (bulk)") -> int:
    """Give every selected sample the manual label `class_name`, recording how to undo it; returns how many.

    One transaction: a batched INSERT of the label rows (their ids come back for undo) and a rewrite
    of only the assignment rows whose value changes (see labels.add_manual_labels)."""
    wanted = _own_ids(db, model_id, ids)
    with db.session() as s:
        check_manual_label(s, wanted, classifier, class_name)
        added = add_manual_labels(s, wanted, classifier, class_name, author=author)
    _write_undo(settings, model_id, {"action": "label", "classifier": classifier, "class": class_name,
                                     "label_ids": sorted(added), "sample_ids": wanted, "at": time.time()})
    return len(wanted)


def bulk_not_preferred(db: Database, settings: Settings, model_id: int, ids: Sequence[int], flag: bool) -> int:
    """Mark (or unmark) every selected sample not preferred, recording the previous flags; returns how many."""
    wanted = _own_ids(db, model_id, ids)
    with db.session() as s:
        conn, prev = s.connection(), {}
        for k in range(0, len(wanted), CHUNK):
            part = wanted[k:k + CHUNK]
            prev.update({str(i): bool(f) for i, f in conn.execute(
                select(Sample.id, Sample.not_preferred).where(id_in(conn, Sample.id, part)))})
            conn.execute(update(Sample.__table__).where(id_in(conn, Sample.id, part)).values(not_preferred=bool(flag)))
    _write_undo(settings, model_id, {"action": "not_preferred", "flag": bool(flag), "previous": prev,
                                     "sample_ids": wanted, "at": time.time()})
    return len(wanted)


def last_action(settings: Settings, model_id: int) -> dict | None:
    """The bulk action undo would revert (None: nothing to undo)."""
    path = _undo_path(settings, model_id)
    return json.loads(path.read_text()) if path.is_file() else None


def describe(action: dict | None) -> str:
    """One line about the last bulk action."""
    if action is None:
        return "Nothing to undo."
    n = len(action["sample_ids"])
    if action["action"] == "label":
        what = f"labelled {n} samples '{action['class']}'" if action["class"] else f"withdrew {n} manual labels"
    else:
        what = f"{'marked' if action['flag'] else 'unmarked'} {n} samples not preferred"
    return f"Last bulk action: {what} ({time.strftime('%H:%M:%S', time.localtime(action['at']))})."


def undo_last(db: Database, settings: Settings, model_id: int) -> str:
    """Revert the last bulk action of this pool exactly; returns what was undone."""
    action = last_action(settings, model_id)
    if action is None:
        raise UserError("Nothing to undo: no bulk action was recorded for this pool (only the last one is kept).")
    if action["action"] == "label":
        ids = action["label_ids"]
        with db.session() as s:
            lock_classifier(s, action["classifier"])
            conn = s.connection()
            for k in range(0, len(ids), CHUNK):
                conn.execute(delete(Label.__table__).where(id_in(conn, Label.id, ids[k:k + CHUNK])))
            refresh_assignments(s, action["classifier"], action["sample_ids"])
    else:
        by_flag: dict[bool, list[int]] = {True: [], False: []}
        for sid, f in action["previous"].items():
            by_flag[bool(f)].append(int(sid))
        with db.session() as s:
            conn = s.connection()
            for f, sids in by_flag.items():
                for k in range(0, len(sids), CHUNK):
                    conn.execute(update(Sample.__table__).where(id_in(conn, Sample.id, sids[k:k + CHUNK]))
                                 .values(not_preferred=f))
    text = describe(action).replace("Last bulk action: ", "Undone: ")
    _undo_path(settings, model_id).unlink()
    return text


# ----------------------------------------------------------------------------- S from a selection

def build_set_from_selection(db: Database, model_id: int, ids: Sequence[int], grouping: dict | None,
                             name: str = "", exclude: Sequence[int] = ()) -> int:
    """S = the selected samples less `exclude` (e.g. near-duplicate extra copies), kind 'selection',
    composition by the grouping; returns the set id."""
    wanted = [i for i in _own_ids(db, model_id, ids) if i not in set(int(e) for e in exclude)]
    if not wanted:
        raise UserError("Nothing left to build S from: every selected sample is an excluded near-duplicate.")
    groups = {}
    if grouping is not None:
        with db.session(read_only=True) as s:
            conn = s.connection()
            for k in range(0, len(wanted), CHUNK):
                groups.update(conn.execute(select(Assignment.sample_id, Assignment.group_name).where(
                    Assignment.grouping_id == grouping["id"], id_in(conn, Assignment.sample_id, wanted[k:k + CHUNK]))).all())
    member_group = {i: groups.get(i) or "unlabelled" for i in wanted}
    counts: dict[str, int] = {}
    for g in member_group.values():
        counts[g] = counts.get(g, 0) + 1
    with db.session() as s:
        row = SyntheticSet(name=name or f"selection ({len(wanted)})", model_id=int(model_id),
                           grouping_id=grouping["id"] if grouping else None, kind="selection", n_s=len(wanted),
                           counts=counts, state="ready")
        s.add(row)
        s.flush()
        s.add_all([SetMember(set_id=row.id, sample_id=i, group_name=member_group[i], position=k)
                   for k, i in enumerate(wanted)])
        return row.id


# ----------------------------------------------------------------------------- near-duplicates

def near_duplicates(db: Database, settings: Settings, model_id: int, classifier: str,
                    threshold: float) -> dict:
    """Groups of pool sample ids whose features' cosine exceeds `threshold` (from the cached map features)."""
    from pipelines.embedding import near_duplicate_groups
    feats = _load_npz(cache_dir(settings, model_id, classifier) / "features.npz")
    if feats is None:
        raise UserError("Compute the embedding map first: near-duplicates use the same cached features.")
    ids = pool_ids(db, model_id)
    inside = np.isin(feats["ids"], ids)
    fids, x = feats["ids"][inside], feats["features"][inside]
    groups = [[int(fids[i]) for i in g] for g in near_duplicate_groups(x, float(threshold))]
    return {"groups": groups, "searched": int(len(fids)), "missing": int((~np.isin(ids, fids)).sum()),
            "feature": str(feats["feature"]), "threshold": float(threshold)}
