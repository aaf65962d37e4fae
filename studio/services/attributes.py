"""Classifiers and groupings known to the studio (classifier plug-ins live in pipelines.attributes)."""
from __future__ import annotations

import json
from functools import lru_cache

from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..models import Classifier, Grouping


def _classes_without_weights(name: str) -> list[str]:
    # The class list of a classifier whose weights are absent, read off its built-in groupings.
    from pipelines.attributes import builtin_groupings
    classes: list[str] = []
    for g in builtin_groupings(name).values():
        for members in g.groups.values():
            classes += [c for c in members if c not in classes]
    return classes


def register_classifier(db: Database, name: str, options: dict | None = None) -> int:
    """Add (or update the options of) a classifier plug-in by name; idempotent; returns its id."""
    from pipelines.attributes import classifier_descriptions
    desc = classifier_descriptions()
    if name not in desc:
        raise UserError(f"Unknown classifier {name!r}; available: {', '.join(desc)}.")
    with db.session() as s:
        row = s.scalar(select(Classifier).where(Classifier.name == name))
        if row is None:
            row = Classifier(name=name, classes=_classes_without_weights(name), description=desc[name],
                             options=dict(options or {}))
            s.add(row)
        elif options is not None:
            row.options = dict(options)
        s.flush()
        return row.id


_LOADED: dict[tuple, object] = {}  # (name, options, device) -> classifier; failures are never cached


def load_classifier(db: Database, name: str, device: str = "cpu"):
    """Instantiate a registered classifier (once per process); missing weights raise the plug-in's UserError."""
    from pipelines.attributes import get_classifier
    with db.session(read_only=True) as s:
        row = s.scalar(select(Classifier).where(Classifier.name == name))
        if row is None:
            raise UserError(f"Classifier {name!r} is not registered in this studio.")
        options = dict(row.options or {})
    key = (name, json.dumps(options, sort_keys=True), str(device))
    if key in _LOADED:
        return _LOADED[key]
    clf = get_classifier(name, device=device, **options)
    _LOADED[key] = clf
    with db.session() as s:  # the real class list, now that the weights loaded
        row = s.scalar(select(Classifier).where(Classifier.name == name))
        if list(row.classes) != list(clf.classes):
            row.classes = list(clf.classes)
    return clf


def classifier_status(db: Database, name: str) -> str:
    """'ready' or the plug-in's message about what is missing (shown in the UI)."""
    try:
        load_classifier(db, name)
        return "ready"
    except UserError as e:
        return str(e)


def list_classifiers(db: Database) -> list[dict]:
    """Registered classifiers."""
    with db.session(read_only=True) as s:
        return [{"name": c.name, "classes": list(c.classes), "description": c.description}
                for c in s.scalars(select(Classifier).order_by(Classifier.id))]


def register_grouping(db: Database, classifier: str, name: str, groups: dict[str, list[str]],
                      threshold: float = 0.5, builtin: bool = False) -> int:
    """Add a grouping (idempotent by (classifier, name)); validated against the classifier's classes."""
    from pipelines.attributes import Grouping as EngineGrouping
    g = EngineGrouping(name, {k: list(v) for k, v in groups.items()})  # raises on empty/overlapping groups
    with db.session() as s:
        clf = s.scalar(select(Classifier).where(Classifier.name == classifier))
        if clf is None:
            raise UserError(f"Register classifier {classifier!r} before its groupings.")
        if clf.classes:
            g.check_classes(clf.classes)
        row = s.scalar(select(Grouping).where(Grouping.classifier == classifier, Grouping.name == name))
        if row is not None:
            return row.id
        row = Grouping(classifier=classifier, name=name, groups=g.groups, threshold=float(threshold),
                       builtin=builtin)
        s.add(row)
        s.flush()
        return row.id


def register_builtin_groupings(db: Database, classifier: str) -> list[int]:
    """Register every built-in grouping of a classifier (idempotent)."""
    from pipelines.attributes import builtin_groupings
    return [register_grouping(db, classifier, g.name, g.groups, builtin=True)
            for g in builtin_groupings(classifier).values()]


def list_groupings(db: Database, classifier: str | None = None) -> list[dict]:
    """Groupings (optionally of one classifier)."""
    with db.session(read_only=True) as s:
        q = select(Grouping).order_by(Grouping.id)
        if classifier:
            q = q.where(Grouping.classifier == classifier)
        return [{"id": g.id, "name": g.name, "classifier": g.classifier, "groups": dict(g.groups),
                 "threshold": g.threshold} for g in s.scalars(q)]


def get_grouping(db: Database, grouping_id) -> dict:
    """One grouping as a dict, or a UserError."""
    with db.session(read_only=True) as s:
        g = s.get(Grouping, int(grouping_id)) if grouping_id not in (None, "") else None
        if g is None:
            raise UserError("Pick a grouping first (Generate & label tab).")
        return {"id": g.id, "name": g.name, "classifier": g.classifier, "groups": dict(g.groups),
                "threshold": g.threshold}


@lru_cache(maxsize=64)
def _engine_grouping(name: str, items: tuple) -> "object":
    from pipelines.attributes import Grouping as EngineGrouping
    return EngineGrouping(name, {k: list(v) for k, v in items})


def engine_grouping(g: dict):
    """The engine's Grouping object for a grouping dict (cached)."""
    return _engine_grouping(g["name"], tuple((k, tuple(v)) for k, v in g["groups"].items()))


def get_classes(db: Database, classifier: str) -> list[str]:
    """Class names of a registered classifier."""
    with db.session(read_only=True) as s:
        row = s.scalar(select(Classifier).where(Classifier.name == classifier))
        if row is None:
            raise UserError(f"Classifier {classifier!r} is not registered.")
        return list(row.classes)
