"""The job queue and the migrations on both databases: SQLite (a file) and PostgreSQL (throwaway cluster).

Three runner processes share one queue of twenty jobs. Each runner claims with its real code path
(`JobRunner.tick_start`); only the worker launch is replaced by an in-process stand-in that records
who ran the job and how many jobs were occupying the device at that moment, then finishes the job.
"""
import multiprocessing as mp
import time

import pytest
from sqlalchemy import func, select

from studio.db import Database, alembic_config
from studio.jobs.runner import JobRunner
from studio.jobs.specs import GenerateSpec, ImportModelSpec
from studio.jobs.state import transition
from studio.models import Job, JobEvent, JobState
from studio.services import jobs as jobs_service
from studio.settings import Settings

N_JOBS, N_RUNNERS, SLOTS = 20, 3, 2


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue("pg_url")


class RecordingRunner(JobRunner):
    """A JobRunner whose 'worker' runs inside it: records the claim, then marks the job done."""

    def __init__(self, *a, name: str, out, **k):
        super().__init__(*a, **k)
        self.name, self.out = name, out

    def _spawn(self, job_id: int) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            busy = s.scalar(select(func.count()).select_from(Job).where(
                Job.device == job.device, Job.state.in_([JobState.starting, JobState.running]))) \
                if job.device else 0
            transition(s, job, JobState.running, "started", pid=0)
        self.out.put((self.name, job_id, busy))
        time.sleep(0.02)  # the job's work: long enough for the other runners to contend
        with self.db.session() as s:
            transition(s, s.get(Job, job_id), JobState.succeeded, "done")


def _runner_process(url: str, data_dir: str, name: str, go, out) -> None:
    db = Database(url, migrate=False)
    settings = Settings(data_dir=data_dir, db_url=url, jobs_per_device=SLOTS)
    runner = RecordingRunner(db, settings, name=name, out=out)
    go.wait(60)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        runner.tick_start()
        with db.session(read_only=True) as s:
            queued = s.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.queued))
            if not queued and s.scalar(select(func.count()).select_from(Job)) >= N_JOBS:
                break
        time.sleep(0.01)
    db.dispose()
    out.put((name, None, None))


def test_three_runners_run_each_of_twenty_jobs_exactly_once(url, tmp_path):
    db = Database(url)
    settings = Settings(data_dir=tmp_path / "data", db_url=url)
    settings.ensure_dirs()
    # half device-bound (at most SLOTS at once on 'cpu'), half not; half queued before the runners
    # start, half while they run (new rows that two runners can see at once)
    def submit(i):
        return jobs_service.submit(db, GenerateSpec(model_id=1, seed_start=i, n=1, steps=1), device="cpu") if i % 2 \
            else jobs_service.submit(db, ImportModelSpec(src=f"model-{i}.pkl"))
    ids = [submit(i) for i in range(N_JOBS // 2)]
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_runner_process, args=(url, str(settings.data_dir), f"runner{i}", go, out))
             for i in range(N_RUNNERS)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let all three import and connect, then release them at once
    go.set()
    for i in range(N_JOBS // 2, N_JOBS):
        ids.append(submit(i))
        time.sleep(0.01)
    runs, finished = [], 0
    while finished < N_RUNNERS:
        name, job_id, busy = out.get(timeout=120)
        if job_id is None:
            finished += 1
        else:
            runs.append((name, job_id, busy))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ran = sorted(j for _, j, _ in runs)
    assert ran == sorted(ids), f"some job ran twice or never: {ran}"
    assert max(b for _, _, b in runs) <= SLOTS, "a device held more jobs than its slots"
    with db.session(read_only=True) as s:
        assert set(s.scalars(select(Job.state))) == {JobState.succeeded}
        assert set(s.scalars(select(Job.attempts))) == {1}
        starts = s.execute(select(JobEvent.job_id, func.count()).where(JobEvent.state == "starting")
                           .group_by(JobEvent.job_id)).all()
        assert len(starts) == N_JOBS and {n for _, n in starts} == {1}
    by_runner = {n: sum(1 for r, _, _ in runs if r == n) for n in {r for r, _, _ in runs}}
    print(f"{db.engine.dialect.name}: jobs per runner {by_runner}")
    db.dispose()


def test_migrations_go_up_down_and_up_again_and_match_the_models(url):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from studio.models import Base
    db = Database(url)  # upgrade head
    cfg = alembic_config(url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    for target in ("base", "head"):
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if target == "base" else command.upgrade)(cfg, target)
        with db.engine.connect() as c:
            rev = MigrationContext.configure(c).get_current_revision()
            assert rev == (None if target == "base" else head)
    with db.engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    db.dispose()


class PausingRunner(JobRunner):
    """Holds its claim transaction open after its locks, until told to go on (spawns nothing)."""

    def __init__(self, *a, inside=None, proceed=None, **k):
        super().__init__(*a, **k)
        self.inside, self.proceed = inside, proceed

    def _busy(self, s):
        if self.inside is not None:
            self.inside.set()
            self.proceed.wait(10)
        return JobRunner._busy(s)

    def _spawn(self, job_id: int) -> None:
        pass


@pytest.mark.postgres
def test_two_runners_cannot_both_fill_the_last_slot_of_a_device(pg_url, tmp_path):
    # Runner A is inside its claim (job 1 locked, device lock held) when job 2 arrives for the same
    # device; runner B locks job 2 (A's row is skipped) and must wait for the device, then see A's claim.
    import threading
    db_a, db_b = Database(pg_url), Database(pg_url, migrate=False)
    settings = Settings(data_dir=tmp_path / "data", db_url=pg_url, jobs_per_device=1)
    inside, proceed = threading.Event(), threading.Event()
    a = PausingRunner(db_a, settings, inside=inside, proceed=proceed)
    b = PausingRunner(db_b, settings)
    first = jobs_service.submit(db_a, GenerateSpec(model_id=1, seed_start=0, n=1, steps=1), device="cpu")
    ta = threading.Thread(target=a.tick_start)
    ta.start()
    assert inside.wait(30)
    second = jobs_service.submit(db_b, GenerateSpec(model_id=1, seed_start=0, n=2, steps=1), device="cpu")
    tb = threading.Thread(target=b.tick_start)
    tb.start()
    tb.join(1.5)
    assert tb.is_alive(), "runner B claimed without waiting for the device lock"
    proceed.set()
    ta.join(30)
    tb.join(30)
    with db_a.session(read_only=True) as s:
        states = dict(s.execute(select(Job.id, Job.state)).all())
    assert states == {first: JobState.starting, second: JobState.queued}
    db_a.dispose()
    db_b.dispose()
