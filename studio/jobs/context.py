"""What a task sees while it runs: progress reporting, cancellation, metrics (its parameters come as a spec).

Progress writes are throttled; a heartbeat thread keeps `heartbeat_at` fresh (and copies the
log tail and the cancel flag) even while one network call takes a long time.
"""
from __future__ import annotations

import sys
import threading
import time
from datetime import datetime

from ..db import Database
from ..models import Job, Metric, utcnow
from ..settings import Settings
from .state import log_path, read_tail


class JobCancelled(Exception):
    """Raised inside a task when the user asked to cancel it."""


class JobContext:
    """Handle a task uses to report progress and notice cancellation."""

    def __init__(self, db: Database, settings: Settings, job_id: int, heartbeat_s: float = 2.0,
                 min_progress_interval_s: float = 0.5):
        self.db = db
        self.settings = settings
        self.job_id = job_id
        with db.session(read_only=True) as s:
            job = s.get(Job, job_id)
            self.kind = job.kind
            self.stored_params = dict(job.params or {})  # JSON as stored; the worker loads it into the spec
            self.device = job.device or "cpu"
            self.attempt = job.attempts
        self._heartbeat_s = heartbeat_s
        self._min_interval = min_progress_interval_s
        self._last_write = 0.0
        self._cancel = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        """Start the background heartbeat."""
        self._thread = threading.Thread(target=self._beat_loop, name=f"heartbeat-{self.job_id}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat (before the final state is written)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self.beat()
            except Exception as e:  # a DB hiccup must not kill the job; the next beat retries
                print(f"heartbeat failed: {e}", file=sys.stderr, flush=True)

    def beat(self) -> None:
        """Write heartbeat + log tail, read the cancel flag."""
        tail = read_tail(log_path(self.settings.data_dir, self.job_id))
        with self.db.session() as s:
            job = s.get(Job, self.job_id)
            job.heartbeat_at = utcnow()
            job.log_tail = tail
            self._cancel = bool(job.cancel_requested)

    # -- reporting -----------------------------------------------------------------------------------
    def progress(self, fraction: float, message: str | None = None, force: bool = False, **result) -> None:
        """Report progress in [0, 1] (throttled unless `force`); raises JobCancelled when asked to stop."""
        now = time.monotonic()
        if force or now - self._last_write >= self._min_interval:
            self._last_write = now
            with self.db.session() as s:
                job = s.get(Job, self.job_id)
                job.progress = float(min(max(fraction, 0.0), 1.0))
                if message is not None:
                    job.message = message[:2000]
                if result:
                    job.result = {**(job.result or {}), **result}
                job.heartbeat_at = utcnow()
                self._cancel = bool(job.cancel_requested)
        self.check_cancel()

    def log(self, message: str) -> None:
        """One line in the job's log (stdout goes to the log file)."""
        print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)

    def should_stop(self) -> bool:
        """True once the user asked to cancel (polled by long loops such as training)."""
        return self._cancel

    def check_cancel(self) -> None:
        """Raise JobCancelled if the user asked to cancel."""
        if self._cancel:
            raise JobCancelled()

    def metrics(self, rows: list[dict]) -> None:
        """Store measured numbers (dicts of Metric fields) for this job."""
        with self.db.session() as s:
            s.add_all([Metric(job_id=self.job_id, **row) for row in rows])
