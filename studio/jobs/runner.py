"""Job runner: a thread in the studio process that starts queued jobs as worker processes.

Each tick it (1) reaps workers that exited, (2) marks running jobs whose heartbeat went stale
(or whose process is gone) as interrupted, (3) escalates unanswered cancels to SIGTERM and
(4) starts queued jobs while their device has a free slot (one GPU-bound job per device by
default). Workers run in their own session so a studio restart does not kill them; a
restarted runner adopts live ones and marks dead ones interrupted.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, text, update

from ..db import Database
from ..models import Job, JobEvent, JobState, utcnow
from ..settings import Settings
from .state import log_path, read_tail, transition

REPO_ROOT = Path(__file__).resolve().parents[2]
CANCEL_GRACE_S = 20.0


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists on this host."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class JobRunner:
    """Starts and watches worker processes for queued jobs."""

    def __init__(self, db: Database, settings: Settings, poll_s: float = 0.5):
        self.db = db
        self.settings = settings
        self.poll_s = poll_s
        self.host = socket.gethostname()
        self.children: dict[int, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> "JobRunner":
        """Recover jobs left by a previous studio, then tick in a daemon thread."""
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self, terminate: bool = False) -> None:
        """Stop ticking; with `terminate`, SIGTERM the workers (they record 'interrupted')."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if terminate:
            for job_id, proc in list(self.children.items()):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in self.children.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            self.tick_reap()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception as e:  # keep the runner alive through DB hiccups
                print(f"job runner tick failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def tick(self) -> None:
        """One pass: reap, detect stale, escalate cancels, start queued."""
        self.tick_reap()
        self.tick_stale()
        self.tick_cancel()
        self.tick_start()

    # -- steps ---------------------------------------------------------------------------------------
    def tick_reap(self) -> None:
        """Workers that exited without writing an end state (killed, crashed) -> interrupted."""
        for job_id, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[job_id]
            with self.db.session() as s:
                job = s.get(Job, job_id)
                if job is not None and JobState(job.state) in (JobState.running, JobState.starting):
                    transition(s, job, JobState.interrupted, f"worker exited with code {code}",
                               log_tail=read_tail(log_path(self.settings.data_dir, job_id)))

    def tick_stale(self) -> None:
        """Running jobs without a fresh heartbeat, or whose process is gone, -> interrupted."""
        now = utcnow()
        stale = now - timedelta(seconds=self.settings.stale_after_s)
        with self.db.session() as s:
            jobs = s.scalars(select(Job).where(Job.state.in_([JobState.running, JobState.starting]))).all()
            for job in jobs:
                if job.id in self.children:
                    continue  # our own child: tick_reap sees its exit directly
                beat = _aware(job.heartbeat_at or job.updated_at)
                gone = job.host == self.host and job.pid and not pid_alive(job.pid)
                if gone or beat < stale:
                    why = "worker process is gone" if gone else \
                        f"no heartbeat for {int((now - beat).total_seconds())} s"
                    transition(s, job, JobState.interrupted, why)

    def tick_cancel(self) -> None:
        """A cancel the worker has not acted on within the grace period -> SIGTERM."""
        grace = utcnow() - timedelta(seconds=CANCEL_GRACE_S)
        with self.db.session(read_only=True) as s:
            rows = s.execute(select(Job.id, Job.pid, Job.host, Job.updated_at).where(
                Job.state == JobState.running, Job.cancel_requested.is_(True))).all()
        for job_id, pid, host, updated in rows:
            if host == self.host and pid and _aware(updated) < grace and pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def tick_start(self) -> None:
        """Start queued jobs, oldest first, while their device has a free slot."""
        claimed = self._claim_locked() if self.db.engine.dialect.name == "postgresql" else self._claim_each()
        for job_id in claimed:
            self._spawn(job_id)

    def _claim_each(self) -> list[int]:
        # SQLite: one writer at a time (BEGIN IMMEDIATE), so counting a device's jobs and the atomic
        # queued -> starting update in one write transaction never starts a job twice nor overfills a
        # device, even with several runners. The read beforehand only skips devices already full.
        with self.db.session(read_only=True) as s:
            busy = self._busy(s)
            queued = s.execute(select(Job.id, Job.device).where(Job.state == JobState.queued)
                               .order_by(Job.id)).all()
        claimed = []
        for job_id, device in queued:
            if device is not None and busy.get(device, 0) >= self.settings.jobs_per_device:
                continue
            if self._claim(job_id, device):
                claimed.append(job_id)
                if device is not None:
                    busy[device] = busy.get(device, 0) + 1
        return claimed

    def _claim_locked(self) -> list[int]:
        # PostgreSQL: several runners (studios, or worker hosts sharing one database) claim at once.
        # FOR UPDATE SKIP LOCKED hands each runner queued rows no other runner is claiming right now,
        # without waiting on them; a per-device advisory lock, held until commit, makes the slot count
        # and the claims on one device one step, so two runners cannot both fill its last free slot.
        with self.db.session() as s:
            queued = s.execute(select(Job.id, Job.device).where(Job.state == JobState.queued)
                               .order_by(Job.id).with_for_update(skip_locked=True)).all()
            for device in sorted({d for _, d in queued if d is not None}):
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"sims-device:{device}"})
            busy = self._busy(s)  # read after the locks: sees every claim committed before them
            claimed = []
            for job_id, device in queued:
                if device is not None:
                    if busy.get(device, 0) >= self.settings.jobs_per_device:
                        continue
                    busy[device] = busy.get(device, 0) + 1
                claimed.append(job_id)
            if claimed:
                now = utcnow()
                s.execute(update(Job).where(Job.id.in_(claimed)).values(
                    state=JobState.starting, updated_at=now, heartbeat_at=now, host=self.host,
                    cancel_requested=False, attempts=Job.attempts + 1))
                for job_id, attempts in s.execute(select(Job.id, Job.attempts).where(Job.id.in_(claimed))):
                    s.add(JobEvent(job_id=job_id, state=JobState.starting.value, message=f"attempt {attempts}"))
        return claimed

    @staticmethod
    def _busy(s) -> dict[str, int]:
        """Jobs starting or running per device."""
        busy: dict[str, int] = {}
        for dev in s.scalars(select(Job.device).where(
                Job.state.in_([JobState.running, JobState.starting]), Job.device.is_not(None))):
            busy[dev] = busy.get(dev, 0) + 1
        return busy

    def _claim(self, job_id: int, device: str | None = None) -> bool:
        # Atomic queued -> starting (only if the device still has a free slot), one write transaction.
        with self.db.session() as s:
            if device is not None and self._busy(s).get(device, 0) >= self.settings.jobs_per_device:
                return False
            n = s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.queued).values(
                state=JobState.starting, updated_at=utcnow(), heartbeat_at=utcnow(), host=self.host,
                cancel_requested=False, attempts=Job.attempts + 1)).rowcount
            if n:
                job = s.get(Job, job_id)
                s.add(JobEvent(job_id=job_id, state=JobState.starting.value, message=f"attempt {job.attempts}"))
            return bool(n)

    def _spawn(self, job_id: int) -> None:
        log = log_path(self.settings.data_dir, job_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                   PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        cmd = [sys.executable, "-m", "studio.jobs.worker", str(job_id),
               "--data-dir", str(self.settings.data_dir), "--db", self.db.url]
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(REPO_ROOT), env=env, start_new_session=True)
        self.children[job_id] = proc
        with self.db.session() as s:
            job = s.get(Job, job_id)
            job.pid = proc.pid


def _aware(dt):
    # SQLite hands back naive datetimes; they were written as UTC.
    from datetime import timezone
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=timezone.utc)
