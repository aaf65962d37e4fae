"""Studio jobs: worker processes, progress in the DB, cancel, killed worker -> interrupted -> resume."""
import os
import signal
import time

import pytest

from studio.core import open_studio
from studio.jobs.runner import JobRunner
from studio.models import JobState
from studio.services import jobs, pool, registry
from studio.settings import Settings
from studio.testing import expect_success, make_tiny_model, wait_for_job, wait_until

# every test here runs on SQLite and on PostgreSQL (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("db_backend")


@pytest.fixture
def studio(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", stale_after_s=5)
    st = open_studio(settings, demo=False)
    st.runner.poll_s = 0.1
    yield st
    st.close(terminate_jobs=True)


def _model(st, tmp_path):
    return registry.register_checkpoint(st.db, st.settings, make_tiny_model(tmp_path / "tiny.safetensors"))


@pytest.mark.sqlite_only
def test_database_is_sqlite_wal_at_head(studio):
    from alembic.script import ScriptDirectory
    from studio.db import alembic_config
    with studio.db.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        rev = c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert rev == ScriptDirectory.from_config(alembic_config(studio.db.url)).get_current_head()


def test_generate_job_fills_pool_with_seeds_and_hashes(studio, tmp_path):
    mid = _model(studio, tmp_path)
    job = pool.submit_generate(studio.db, mid, n=20, steps=4)
    view = expect_success(studio.db, job, timeout=120)
    assert view.result["new_samples"] == 20 and view.progress == 1.0
    page = pool.gallery_page(studio.db, mid, per_page=8)
    assert page.total == 20 and page.pages == 3 and [r["seed"] for r in page.rows] == list(range(8))
    assert all(studio.settings.abs(r["path"]).is_file() for r in page.rows)
    states = [e[1] for e in jobs.events(studio.db, job)]
    assert states == ["queued", "starting", "running", "succeeded"]
    # the next job continues with fresh seeds
    assert pool.next_seed(studio.db, mid) == 20


def test_cancel_running_job(studio, tmp_path):
    mid = _model(studio, tmp_path)
    job = pool.submit_generate(studio.db, mid, n=3000, steps=2, batch_size=8)
    wait_for_job(studio.db, job, states=("running",), timeout=60)
    wait_until(lambda: jobs.get(studio.db, job).progress > 0, 60, f"job #{job} to report progress")
    assert "Asked" in jobs.cancel(studio.db, job)
    view = wait_for_job(studio.db, job, timeout=60)
    assert view.state == "cancelled"
    assert 0 < pool.pool_size(studio.db, mid) < 5000


@pytest.mark.slow  # 27-37 s on 2 shared cores
def test_killed_worker_is_interrupted_and_resumes(studio, tmp_path):
    mid = _model(studio, tmp_path)
    job = pool.submit_generate(studio.db, mid, n=160, steps=2, batch_size=8)
    wait_for_job(studio.db, job, states=("running",), timeout=60)
    wait_until(lambda: pool.pool_size(studio.db, mid) > 0, 60, f"job #{job} to store its first samples")
    pid = jobs_pid = studio.runner.children[job].pid
    os.killpg(pid, signal.SIGKILL)
    view = wait_for_job(studio.db, job, timeout=30)
    assert view.state == "interrupted" and jobs_pid
    have = pool.pool_size(studio.db, mid)
    assert 0 < have < 160
    jobs.resume(studio.db, job)
    view = expect_success(studio.db, job, timeout=120)
    assert pool.pool_size(studio.db, mid) == 160  # the rest, no duplicates (unique seeds)
    assert view.attempts == 2


def test_restarted_studio_marks_dead_jobs_interrupted(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", stale_after_s=2)
    st = open_studio(settings, demo=False, start_runner=False)
    mid = _model(st, tmp_path)
    job = pool.submit_generate(st.db, mid, n=10, steps=2)
    # A previous studio had claimed the job and its worker died without a word.
    with st.db.session() as s:
        from studio.models import Job
        from studio.jobs.state import transition
        j = s.get(Job, job)
        transition(s, j, JobState.starting)
        transition(s, j, JobState.running, pid=2 ** 22 - 3, host="elsewhere")
    claimed = time.monotonic()
    runner = JobRunner(st.db, settings)
    runner.tick()  # what a restarted studio does first
    if time.monotonic() - claimed < 1.5:  # heartbeat still fresh (unless this machine stalled): the job stays
        assert jobs.get(st.db, job).state == "running"

    def stale():  # ... until no heartbeat came for stale_after_s
        runner.tick()
        return jobs.get(st.db, job).state == "interrupted"
    wait_until(stale, 30, f"job #{job} with a stale heartbeat to be marked interrupted", poll_s=0.2)
    view = jobs.get(st.db, job)
    assert view.state == "interrupted" and "heartbeat" in view.message
    st.close()


@pytest.mark.slow  # 27-37 s on 2 shared cores
def test_one_device_bound_job_at_a_time(studio, tmp_path):
    mid = _model(studio, tmp_path)
    a = pool.submit_generate(studio.db, mid, n=100, steps=2, batch_size=8)
    b = pool.submit_generate(studio.db, mid, n=10, steps=2)
    wait_for_job(studio.db, a, states=("running",), timeout=60)
    polls = 0
    end = time.monotonic() + 120
    while True:  # b waits for as long as a holds the device
        assert time.monotonic() < end, f"job #{a} still running after 120 s"
        b_state = jobs.get(studio.db, b).state  # read before a's: a still running after => b was queued
        if jobs.get(studio.db, a).state != "running":
            break
        assert b_state == "queued"
        polls += 1
        time.sleep(0.05)
    assert polls > 0
    expect_success(studio.db, a, timeout=120)
    expect_success(studio.db, b, timeout=120)


def test_orm_matches_the_migrations(studio):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from studio.models import Base
    with studio.db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == [], f"models.py changed without a migration: {diff}"
