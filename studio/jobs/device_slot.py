"""A device slot held by work done inside the web process (the Guide's live renders).

The job runner starts a queued job only while its device has fewer than `Settings.jobs_per_device`
jobs starting or running. A live render takes one of those slots the same way: it adds a `jobs` row
(kind "render", state running, this host and pid) in one write transaction that first counts the
device's busy slots, so neither a job start nor another render can fill the same slot; the runner
sees the row as busy and waits. The row is deleted when the render ends. If the process dies while
holding it, the runner's stale check marks it interrupted once its heartbeat is older than
`Settings.stale_after_s`, which frees the slot; the next release removes such leftovers.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sqlalchemy import delete, func, or_, select, text, update

from pipelines.errors import UserError

from ..db import Database
from ..models import Job, JobState, utcnow
from ..settings import Settings

KIND = "render"


class SlotBusy(UserError):
    """The device stayed busy past the wait limit."""


_LOCAL: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


def _local_lock(device: str) -> threading.Lock:
    with _LOCAL_GUARD:
        return _LOCAL.setdefault(device, threading.Lock())


def holders(db: Database, device: str) -> list[tuple[int, str, str]]:
    """(job id, kind, title) of the jobs and renders holding the device's slots now."""
    with db.session(read_only=True) as s:
        return [tuple(r) for r in s.execute(select(Job.id, Job.kind, Job.title).where(
            Job.device == device, Job.state.in_([JobState.running, JobState.starting])).order_by(Job.id))]


def _try_take(db: Database, settings: Settings, device: str, title: str) -> int | None:
    """Insert the lease row if the device has a free slot (count and insert in one write transaction)."""
    with db.session() as s:
        if db.engine.dialect.name == "postgresql":  # the runner's claim takes the same lock before counting
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"sims-device:{device}"})
        busy = s.scalar(select(func.count()).select_from(Job).where(
            Job.device == device, Job.state.in_([JobState.running, JobState.starting])))
        if busy >= settings.jobs_per_device:
            return None
        now = utcnow()
        # no pid: the runner would SIGTERM a cancelled job's process group, here the studio itself; a lease
        # of a dead studio is found by its heartbeat instead (stale after Settings.stale_after_s)
        job = Job(kind=KIND, title=title, params={"web_pid": os.getpid()}, device=device, state=JobState.running,
                  message="live render in the web process", log_tail="", progress=0.0, pid=None,
                  host=socket.gethostname(), heartbeat_at=now, attempts=1)
        s.add(job)
        s.flush()
        return job.id


class DeviceSlot:
    """One of `device`'s job slots for a piece of in-process work.

    `acquire()` is a generator: it yields the current holders [(job id, kind, title)] each time it finds
    the slot full (so a streaming caller can tell the user who holds it) and returns once the slot is
    held; after `wait_s` seconds (None: no limit) it raises SlotBusy. `release()` gives it back. While
    held, a heartbeat thread keeps the lease fresh, so a long render is not taken for a dead one.
    """

    def __init__(self, db: Database, settings: Settings, device: str, title: str = "live render",
                 wait_s: float | None = 30.0, poll_s: float = 0.2):
        self.db, self.settings, self.device, self.title = db, settings, str(device), title
        self.wait_s, self.poll_s = wait_s, poll_s
        self.lease: int | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def acquire(self) -> Iterator[list]:
        deadline = None if self.wait_s is None else time.monotonic() + float(self.wait_s)
        # Renders of this process queue on a lock first (one thread polls the database, not one per tab):
        # a process gains nothing from two grids sampling at once on one device.
        local = _local_lock(self.device)
        while not local.acquire(timeout=self.poll_s):
            yield self._check_deadline(deadline, holders(self.db, self.device))
        try:
            while (lease := _try_take(self.db, self.settings, self.device, self.title)) is None:
                yield self._check_deadline(deadline, holders(self.db, self.device))
                time.sleep(self.poll_s)
        except BaseException:
            local.release()
            raise
        self._local, self.lease = local, lease
        self._stop.clear()
        self._beater = threading.Thread(target=self._beat, name=f"render-lease-{lease}", daemon=True)
        self._beater.start()

    def _check_deadline(self, deadline, held: list) -> list:
        if deadline is not None and time.monotonic() >= deadline:
            who = ", ".join(f"job #{i} ({k})" for i, k, _ in held) or "another render of this studio"
            raise SlotBusy(f"The device {self.device} is busy with {who} ({self.settings.jobs_per_device} "
                           f"job(s) per device), so the render did not start. Move ω again when that work "
                           f"has ended, or precompute the ω grid to queue the renders behind it.")
        return held

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.settings.stale_after_s / 3)):
            with self.db.session() as s:
                s.execute(update(Job).where(Job.id == self.lease).values(heartbeat_at=utcnow()))

    def release(self) -> None:
        if self.lease is None:
            return
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
        try:
            with self.db.session() as s:  # also leases of a process that died (the runner marked them interrupted)
                s.execute(delete(Job).where(or_(Job.id == self.lease,
                                                (Job.kind == KIND) & (Job.state != JobState.running))))
        finally:
            self.lease = None
            self._local.release()


@contextmanager
def device_slot(db: Database, settings: Settings, device: str, title: str = "live render",
                wait_s: float | None = 30.0, poll_s: float = 0.2,
                on_wait: Callable[[list], None] | None = None) -> Iterator[int]:
    """Hold one of `device`'s job slots for the body (see DeviceSlot); yields the lease's job id.
    `on_wait(holders)` is called each time the slot is found full."""
    slot = DeviceSlot(db, settings, device, title, wait_s, poll_s)
    for held in slot.acquire():
        if on_wait is not None:
            on_wait(held)
    try:
        yield slot.lease
    finally:
        slot.release()
