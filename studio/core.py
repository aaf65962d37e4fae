"""One studio instance: settings + database (migrated) + job runner."""
from __future__ import annotations

from dataclasses import dataclass, field

from .db import Database
from .jobs.runner import JobRunner
from .settings import Settings


@dataclass
class Studio:
    """What the UI needs to reach everything else."""
    settings: Settings
    db: Database
    runner: JobRunner | None = None
    notes: list[str] = field(default_factory=list)  # first-run messages shown on the Models tab

    def close(self, terminate_jobs: bool = False) -> None:
        """Stop the runner (optionally SIGTERM its workers) and release the database."""
        if self.runner is not None:
            self.runner.stop(terminate=terminate_jobs)
        self.db.dispose()


def open_studio(settings: Settings, start_runner: bool = True, demo: bool = True) -> Studio:
    """Create/open the data dir, run migrations, register the demo, start the runner."""
    settings.ensure_dirs()
    db = Database(settings.db_url)
    notes = []
    if demo:
        from .services.demo import bootstrap_demo
        notes = bootstrap_demo(db, settings)
    runner = JobRunner(db, settings).start() if start_runner else None
    return Studio(settings, db, runner, notes)
