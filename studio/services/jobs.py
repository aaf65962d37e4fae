"""Jobs service: submit, cancel, resume, list; the UI's only way to touch jobs."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..jobs.registry import DEVICE_BOUND, TASKS
from ..jobs.specs import JobSpec, spec_to_json
from ..jobs.state import transition
from ..models import Job, JobEvent, JobState


@dataclass
class JobView:
    """What the UI shows about a job."""
    id: int
    kind: str
    title: str
    state: str
    progress: float
    message: str
    log_tail: str
    device: str | None
    params: dict
    result: dict
    traceback: str | None
    created_at: str
    updated_at: str
    attempts: int

    @property
    def active(self) -> bool:
        return JobState(self.state).active


def _view(job: Job) -> JobView:
    return JobView(id=job.id, kind=job.kind, title=job.title, state=JobState(job.state).value,
                   progress=job.progress, message=job.message, log_tail=job.log_tail, device=job.device,
                   params=dict(job.params or {}), result=dict(job.result or {}), traceback=job.traceback,
                   created_at=f"{job.created_at:%Y-%m-%d %H:%M:%S}", updated_at=f"{job.updated_at:%H:%M:%S}",
                   attempts=job.attempts)


def submit(db: Database, spec: JobSpec, title: str = "", device: str | None = None) -> int:
    """Queue a job of spec's kind; device-bound kinds need a device ('cpu', 'cuda', 'cuda:1', ...)."""
    kind = spec.kind
    if kind not in TASKS:
        raise UserError(f"Unknown job kind {kind!r}.")
    if kind in DEVICE_BOUND and not device:
        raise UserError(f"A {kind} job needs a device (cpu or cuda).")
    with db.session() as s:
        job = Job(kind=kind, title=title or kind, params=spec_to_json(spec),
                  device=device if kind in DEVICE_BOUND else None,
                  state=JobState.queued, message="waiting for a free slot", log_tail="", progress=0.0)
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, state=JobState.queued.value, message="submitted"))
        return job.id


_SUBMIT_LOCK = threading.Lock()  # one studio process serves every browser: check-then-insert is atomic here


def submit_once(db: Database, spec: JobSpec, title: str = "", device: str | None = None) -> tuple[int, bool]:
    """Queue a job unless an identical one (same kind, params and device) is still queued or running.

    Returns (job id, True when newly queued). A double click thus gives one job, and both clicks show it.
    """
    kind, params = spec.kind, spec_to_json(spec)
    with _SUBMIT_LOCK:
        with db.session(read_only=True) as s:
            active = [j for j in JobState if j.active]
            for job in s.scalars(select(Job).where(Job.kind == kind, Job.state.in_(active)).order_by(Job.id.desc())):
                if dict(job.params or {}) == params and job.device == (device if kind in DEVICE_BOUND else None):
                    return job.id, False
        return submit(db, spec, title, device), True


def get(db: Database, job_id: int) -> JobView:
    """One job, or a UserError if it does not exist."""
    with db.session(read_only=True) as s:
        return _view(_job(s, job_id))


def _job(s, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise UserError(f"No job #{job_id}.")
    return job


def list_jobs(db: Database, kind: str | None = None, limit: int = 200) -> list[JobView]:
    """Newest first."""
    with db.session(read_only=True) as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if kind:
            q = q.where(Job.kind == kind)
        return [_view(j) for j in s.scalars(q)]


def events(db: Database, job_id: int) -> list[tuple[str, str, str]]:
    """(time, state, message) of each transition."""
    with db.session(read_only=True) as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(f"{e.at:%Y-%m-%d %H:%M:%S}", e.state, e.message) for e in rows]


def cancel(db: Database, job_id: int) -> str:
    """Cancel a queued/interrupted job at once, or ask a running one to stop."""
    with db.session() as s:
        job = _job(s, job_id)
        state = JobState(job.state)
        if state in (JobState.queued, JobState.interrupted):
            transition(s, job, JobState.cancelled, "cancelled by the user")
            return f"Job #{job_id} cancelled."
        if state in (JobState.running, JobState.starting):
            job.cancel_requested = True
            return f"Asked job #{job_id} to stop; it ends at its next progress report."
        raise UserError(f"Job #{job_id} is already {state.value}; nothing to cancel.")


def resume(db: Database, job_id: int) -> str:
    """Queue an interrupted (or failed/cancelled) job again; fine-tunes continue from their last checkpoint."""
    with db.session() as s:
        job = _job(s, job_id)
        state = JobState(job.state)
        if state not in (JobState.interrupted, JobState.failed, JobState.cancelled):
            raise UserError(f"Job #{job_id} is {state.value}; only interrupted, failed or cancelled jobs resume.")
        transition(s, job, JobState.queued, "resumed by the user", cancel_requested=False, traceback=None)
        return f"Job #{job_id} queued again."


