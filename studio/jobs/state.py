"""Job state transitions, each recorded as a JobEvent with its time."""
from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.orm import Session

from ..models import Job, JobEvent, JobState, utcnow

# Transitions allowed from each state (anything else is a bug or a race we lost).
ALLOWED = {
    JobState.queued: {JobState.starting, JobState.running, JobState.cancelled, JobState.interrupted},
    JobState.starting: {JobState.running, JobState.interrupted, JobState.failed, JobState.cancelled},
    JobState.running: {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.interrupted},
    # A worker wrongly presumed dead (slow heartbeat) may still report how it really ended.
    JobState.interrupted: {JobState.queued, JobState.cancelled, JobState.succeeded, JobState.failed},
    JobState.failed: {JobState.queued},
    JobState.cancelled: {JobState.queued},
    JobState.succeeded: set(),
}
TAIL_CHARS = 4000


def transition(s: Session, job: Job, state: JobState, message: str = "", **fields) -> bool:
    """Move `job` to `state` if allowed; record the event; returns False when not allowed."""
    if state not in ALLOWED[JobState(job.state)]:
        return False
    job.state = state
    for k, v in fields.items():
        setattr(job, k, v)
    if message:
        job.message = message
    job.updated_at = utcnow()
    s.add(JobEvent(job_id=job.id, state=state.value, message=message[:2000]))
    return True


def log_path(data_dir: Path, job_id: int) -> Path:
    """File that receives a worker's stdout/stderr."""
    return Path(data_dir) / "logs" / "jobs" / f"{job_id}.log"


def read_tail(path: Path, chars: int = TAIL_CHARS) -> str:
    """Last `chars` characters of a log, with tqdm's carriage-return redraws collapsed."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4 * chars))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [re.split(r"\r", line)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in text.split("\n")]
    return "\n".join(lines)[-chars:]
