"""Live Guide renders share the device with jobs (the runner's per-device slot), and their cache key
holds everything that changes the pixels: the device kind and the precision included."""
import threading

import pytest

from studio.jobs.device_slot import DeviceSlot, SlotBusy, device_slot, holders
from studio.models import Job, JobState, utcnow
from studio.services import evaluate, guide
from studio.testing import tiny_finetuned_world

pytestmark = pytest.mark.usefixtures("db_backend")  # the lease's count-and-insert on SQLite and PostgreSQL
GS = guide.GuideSettings(preview_steps=2, preview_count=4, steps=2, n=16)
DEADLINE_S = 120  # generous: the machine may be loaded; a pass never waits this long


def key(**kw):
    args = dict(base_hash="h", checkpoint_id=1, omega=1.0, interval=None, seeds=[0, 1], steps=12,
                shared_encoder=False)
    return evaluate.render_key(**{**args, **kw})


def test_render_key_holds_device_kind_and_precision():
    cpu = key(device="cpu")
    assert cpu == key() == key(device="cpu", precision="fp32")  # CPU fp32 keys stay those already cached
    assert key(device="cuda") != cpu and key(device="cuda:1") == key(device="cuda")  # the kind, not the index
    assert key(precision="bf16") != cpu
    assert len({cpu, key(device="cuda"), key(precision="bf16"), key(device="cuda", precision="bf16")}) == 4
    assert evaluate.device_kind("CUDA:0") == "cuda" and evaluate.device_kind(None) == "cpu"


@pytest.fixture(scope="module")
def world(tmp_path_factory, db_backend):
    st, mid, g, cks = tiny_finetuned_world(tmp_path_factory.mktemp(f"slot-{db_backend}") / "data", total_kimg=0.016)
    yield st, cks[-1]["id"]
    st.close()


def hold_slot_with_job(st, device="cpu") -> int:
    """A job running on `device` (as the runner leaves it after starting a worker)."""
    with st.db.session() as s:
        job = Job(kind="finetune", title="held", params={}, device=device, state=JobState.running,
                  heartbeat_at=utcnow(), pid=None, host="elsewhere")
        s.add(job)
        s.flush()
        return job.id


def end_job(st, job_id):
    with st.db.session() as s:
        s.get(Job, job_id).state = JobState.succeeded


def test_lease_counts_as_a_busy_slot_and_is_removed_after(world):
    st, _ = world
    assert st.settings.jobs_per_device == 1
    with device_slot(st.db, st.settings, "cpu", title="probe") as lease:
        assert [h[0] for h in holders(st.db, "cpu")] == [lease]
        with pytest.raises(SlotBusy, match="busy with job #"):
            with device_slot(st.db, st.settings, "cpu", wait_s=0):  # the second one finds it full
                pass
        with device_slot(st.db, st.settings, "cuda", wait_s=0):  # another device has its own slot
            pass
    assert holders(st.db, "cpu") == []
    with st.db.session(read_only=True) as s:
        assert s.get(Job, lease) is None  # a lease leaves no job behind


def test_uncached_render_waits_for_the_held_slot_then_renders(world):
    st, ck = world
    job = hold_slot_with_job(st)
    waited, result, errors = threading.Event(), {}, []

    def scrub():
        try:
            for kind, *rest in guide.preview_stream(st.db, st.settings, ck, 1.25, GS, "cpu", slot_wait_s=DEADLINE_S):
                if kind == "waiting":
                    result.setdefault("holders", rest[0])
                    waited.set()
                elif kind == "done":
                    result["done"] = rest[0]
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    t = threading.Thread(target=scrub)
    t.start()
    try:
        assert waited.wait(DEADLINE_S), "the render never reported waiting for the slot"
        assert "done" not in result  # nothing rendered while the job holds the device
        assert [h[0] for h in result["holders"]] == [job]
    finally:
        end_job(st, job)
    t.join(DEADLINE_S)
    assert not t.is_alive() and not errors, errors
    assert result["done"]["cached"] is False and holders(st.db, "cpu") == []


def test_cached_grid_never_waits_for_the_slot(world):
    st, ck = world
    guide.preview(st.db, st.settings, ck, 0.5, GS, "cpu")  # rendered and cached
    job = hold_slot_with_job(st)
    try:
        items = list(guide.preview_stream(st.db, st.settings, ck, 0.5, GS, "cpu", slot_wait_s=0))
        assert [i[0] for i in items] == ["done"] and items[0][1]["cached"]
        with pytest.raises(SlotBusy, match="did not start"):  # an uncached one gives up at its wait limit
            list(guide.preview_stream(st.db, st.settings, ck, 2.75, GS, "cpu", slot_wait_s=0))
    finally:
        end_job(st, job)


def test_slot_lease_is_refused_to_the_runner(world):
    """While a render holds the slot the runner does not start a queued job on that device."""
    from studio.jobs.runner import JobRunner
    st, _ = world
    with st.db.session() as s:
        queued = Job(kind="generate", title="queued", params={}, device="cpu", state=JobState.queued)
        s.add(queued)
        s.flush()
        qid = queued.id
    runner = JobRunner(st.db, st.settings)
    try:
        with device_slot(st.db, st.settings, "cpu"):
            assert runner._claim_each() == []
    finally:
        with st.db.session() as s:
            s.delete(s.get(Job, qid))


def test_slot_acquire_yields_holders_until_free(world):
    st, _ = world
    job = hold_slot_with_job(st)
    slot = DeviceSlot(st.db, st.settings, "cpu", wait_s=DEADLINE_S, poll_s=0.01)
    seen = []
    for held in slot.acquire():
        seen.append(held)
        end_job(st, job)  # the job ends while the render waits
    try:
        assert seen and seen[0][0][0] == job and slot.lease is not None
    finally:
        slot.release()
    assert holders(st.db, "cpu") == []


def test_a_waiting_render_takes_the_grid_a_job_renders_meanwhile(world):
    """The job holding the device (e.g. the preview job after a fine-tune) renders the grid: the waiting
    render returns it from the cache instead of rendering it again."""
    st, ck = world
    job = hold_slot_with_job(st)
    waited, items, errors = threading.Event(), [], []

    def scrub():
        try:
            for item in guide.preview_stream(st.db, st.settings, ck, 1.75, GS, "cpu", slot_wait_s=DEADLINE_S):
                items.append(item[0])
                if item[0] == "waiting":
                    waited.set()
                else:
                    items.append(item[1])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    t = threading.Thread(target=scrub)
    t.start()
    try:
        assert waited.wait(DEADLINE_S)
        # the job's own render (no slot: the job holds it), as tasks/sweep.py renders previews
        evaluate.render_cached(st.db, st.settings, ck, 1.75, range(GS.preview_count), GS.preview_steps,
                               GS.interval(GS.preview_steps), GS.shared_encoder, "cpu")
        t.join(DEADLINE_S)
    finally:
        end_job(st, job)
        t.join(DEADLINE_S)
    assert not t.is_alive() and not errors, errors
    assert items[-2] == "done" and items[-1]["cached"] is True  # taken from the cache, not rendered again
    assert holders(st.db, "cpu") == []


def test_cancelling_a_lease_never_signals_the_studio(world, monkeypatch):
    """The runner SIGTERMs the process group of a cancelled job that does not stop; a lease names no pid,
    so a Cancel on it can never reach the web process itself."""
    from datetime import timedelta

    from studio.jobs import runner as runner_module
    st, _ = world
    signals = []
    monkeypatch.setattr(runner_module.os, "killpg", lambda pid, sig: signals.append((pid, sig)))
    with device_slot(st.db, st.settings, "cpu") as lease:
        with st.db.session() as s:
            job = s.get(Job, lease)
            assert job.pid is None
            job.cancel_requested = True
            job.updated_at = utcnow() - timedelta(seconds=runner_module.CANCEL_GRACE_S + 60)
        runner_module.JobRunner(st.db, st.settings).tick_cancel()
    assert signals == []
