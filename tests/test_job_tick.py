"""The job panels' timer: its ticks run off Gradio's queue, read the jobs once for every page together and never
wait for one another (a page with a running job would otherwise hold a queue stream open, and many pages would
each run a dozen queries a second)."""
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from studio.services import jobs, pool
from studio.testing import tiny_studio
from studio.ui import app


@pytest.fixture
def studio(tmp_path):
    st, mid = tiny_studio(tmp_path / "data")
    yield st, mid
    st.close()


def _tick_dependency(demo):
    deps = [d for d in demo.get_config_file()["dependencies"] if any(t[1] == "tick" for t in d["targets"])]
    assert len(deps) == 1, deps
    return deps[0]


def test_the_tick_runs_off_the_queue_and_adopts_a_queued_job(studio):
    st, mid = studio
    demo = app.build_ui(st)
    dep = _tick_dependency(demo)
    assert dep["queue"] is False and dep["trigger_mode"] == "once"
    n = len(dep["inputs"])  # one job id per panel
    job = pool.submit_generate(st.db, mid, 4, steps=2)  # no runner: it stays queued (active)
    out = demo.fns[dep["id"]].fn(*[None] * n)
    adopted = out[-2 - n:-2]
    assert job in adopted  # the generate panel took up the new job by itself
    assert out[-1].active is True  # and the timer keeps ticking while it is active
    assert [r[0] for r in out[-2]] == [job]  # the jobs table
    jobs.cancel(st.db, job)
    time.sleep(app.TICK_S)  # the shared snapshot is at most half a tick old
    out = demo.fns[dep["id"]].fn(*[job if a == job else None for a in adopted])
    assert out[-1].active is False  # nothing active: the page stops ticking


def test_many_ticks_share_one_read(studio, monkeypatch):
    st, _ = studio
    calls = []
    real = jobs.list_jobs
    monkeypatch.setattr(app.jobs, "list_jobs", lambda db: calls.append(1) or real(db))
    snap = app.JobsSnapshot(st.db, max_age_s=0.3)
    for _ in range(20):
        snap.views()
    assert len(calls) == 1
    time.sleep(0.35)
    snap.views()
    assert len(calls) == 2


def test_a_tick_does_not_wait_for_another_ticks_read(studio, monkeypatch):
    st, mid = studio
    snap = app.JobsSnapshot(st.db, max_age_s=0.0)
    assert snap.views() == []
    entered, release = threading.Event(), threading.Event()
    real = jobs.list_jobs

    def slow(db):
        entered.set()
        release.wait(10)
        return real(db)

    monkeypatch.setattr(app.jobs, "list_jobs", slow)
    job = pool.submit_generate(st.db, mid, 4, steps=2)
    reader = threading.Thread(target=snap.views)
    reader.start()
    try:
        assert entered.wait(10)
        t0 = time.monotonic()
        assert snap.views() == []  # the snapshot before, at once
        assert time.monotonic() - t0 < 1.0
        assert snap.get(job).id == job  # a job newer than the snapshot is read by itself
    finally:
        release.set()
        reader.join(10)
    assert [v.id for v in snap.views()] == [job]
    assert snap.get(job + 1000) is None  # a deleted (or never made) job: no panel, no error


def test_live_extras_are_computed_once_per_change_of_the_job():
    calls = []
    follower = SimpleNamespace(live=lambda jid: calls.append(jid) or ["stats", "curve"], live_outputs=[1, 2])
    view = SimpleNamespace(id=7, state="running", progress=0.1, message="", updated_at="12:00:00",
                           result={"kimg": 1})
    cache = app.LiveCache(max_age_s=60)
    for _ in range(5):
        assert cache.values(0, follower, view) == ["stats", "curve"]
    assert calls == [7]
    view.result = {"kimg": 2}  # the task reported progress
    cache.values(0, follower, view)
    assert calls == [7, 7]


def test_a_tick_leaves_live_extras_alone_while_another_computes_them():
    entered, release = threading.Event(), threading.Event()

    def live(jid):
        entered.set()
        release.wait(10)
        return ["stats"]

    follower = SimpleNamespace(live=live, live_outputs=[1])
    view = SimpleNamespace(id=7, state="running", progress=0.1, message="", updated_at="12:00:00", result={})
    cache = app.LiveCache()
    other = threading.Thread(target=cache.values, args=(0, follower, view))
    other.start()
    try:
        assert entered.wait(10)
        skipped = cache.values(0, follower, view)
        assert len(skipped) == 1 and skipped[0] == gr.skip()
    finally:
        release.set()
        other.join(10)
    assert cache.values(0, follower, view) == ["stats"]
