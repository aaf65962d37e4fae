"""First run: register the bundled digits model, the demo classifier and the digits groupings (idempotent)."""
from __future__ import annotations

from pipelines.errors import UserError

from ..db import Database
from ..settings import Settings
from . import attributes, registry


def bootstrap_demo(db: Database, settings: Settings) -> list[str]:
    """Register what ships in assets/; returns notes about anything missing (shown in the UI)."""
    notes = []
    attributes.register_classifier(db, "digits")
    attributes.register_builtin_groupings(db, "digits")
    try:
        registry.register_demo(db, settings)
    except UserError as e:
        notes.append(str(e))
    status = attributes.classifier_status(db, "digits")
    if status != "ready":
        notes.append(status)
    return notes
