"""Target shares, building S (messages for impossible plans), fine-tuning the auxiliary model."""
import os
import signal

import pytest
from safetensors.torch import load_file

from pipelines.errors import UserError
from studio.jobs.runner import JobRunner
from studio.services import attributes, finetune, jobs, labels, pool, sets, target
from studio.testing import expect_success, run_now, tiny_studio, wait_for_job, wait_until


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    st, mid = tiny_studio(tmp_path_factory.mktemp("shift") / "data", n_pool=80)
    g = next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == "digits 0-4 vs 5-9")
    yield st, mid, g
    st.close()


def test_normalise_keeps_the_moved_slider_and_sums_to_100():
    out = target.normalise([70, 50, 50], changed=0)
    assert out[0] == 70 and sum(out) == pytest.approx(100) and out[1] == out[2] == 15
    out = target.normalise([10, 0, 0, 0], changed=0)
    assert out == [10, 30, 30, 30]
    assert sum(target.normalise([33.3, 33.3, 33.3, 0.2, 7])) == pytest.approx(100)


def test_shares_not_summing_to_100_are_refused_with_the_sum():
    with pytest.raises(UserError, match=r"sum to 90\.0%, not 100%.*Normalise"):
        target.check_shares(["a", "b"], [60, 30])
    assert target.check_shares(["a", "b"], [70, 30]) == {"a": 0.7, "b": 0.3}


def test_suggested_mix_matches_the_papers_example():
    mix = target.suggest_mix({"f": 0.5, "m": 0.5}, {"f": 0.7, "m": 0.3}, omega0=1.0)
    assert mix == pytest.approx({"f": 0.3, "m": 0.7})
    with pytest.raises(UserError, match="no samples in the labelled pool"):
        target.suggest_mix({"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}, 1.0)


def test_base_fractions_have_wilson_intervals(world):
    st, mid, g = world
    bf = pool.base_fractions(st.db, mid, g)
    fr = bf["groups"]
    assert sum(v["count"] for v in fr.values()) == bf["assigned"] <= 80
    assert all(v["lo"] <= v["fraction"] <= v["hi"] for v in fr.values())


def test_impossible_sets_are_refused_with_clear_messages(world):
    st, mid, g = world
    have = pool.group_counts(st.db, mid, g["id"])
    big = max(have, key=lambda k: have.get(k, 0))
    with pytest.raises(UserError, match="more than the labelled pool can supply"):
        sets.plan(st.db, mid, g, {"0-4": 0.5, "5-9": 0.5}, n_s=1000, grow=False)
    with pytest.raises(UserError, match="too rare"):
        sets.plan(st.db, mid, g, {"0-4": 0.5, "5-9": 0.5}, n_s=1000, grow=True, max_pool=300)
    with pytest.raises(UserError, match="sum to 100%"):
        sets.plan(st.db, mid, g, {"0-4": 0.5, "5-9": 0.4}, n_s=10, grow=False)
    g10 = next(x for x in attributes.list_groupings(st.db, "digits") if x["name"] == "all ten digits")
    counts10 = pool.group_counts(st.db, mid, g10["id"])
    empty = next(d for d in g10["groups"] if counts10.get(d, 0) == 0)
    mix = {d: (1.0 if d == empty else 0.0) for d in g10["groups"]}
    with pytest.raises(UserError, match=f"Group '{empty}' is empty"):
        sets.plan(st.db, mid, g10, mix, n_s=5, grow=True)
    assert big in have


def test_build_set_grows_the_pool_when_short(world):
    st, mid, g = world
    have = pool.group_counts(st.db, mid, g["id"])
    small = min(("0-4", "5-9"), key=lambda k: have.get(k, 0))
    other = "5-9" if small == "0-4" else "0-4"
    n_small = have[small] + 5  # more than the pool holds: the job must generate and label more
    mix = {small: n_small / (n_small + 10), other: 10 / (n_small + 10)}
    set_id, job = sets.submit_build(st.db, mid, g["id"], mix, n_s=n_small + 10, grow=True, steps=2)
    view = run_now(st, job)
    assert view.state == "succeeded", view.message
    s = sets.get_set(st.db, set_id)
    assert s["state"] == "ready" and s["counts"] == {small: n_small, other: 10}
    assert sets.member_count(st.db, set_id) == n_small + 10
    assert pool.pool_size(st.db, mid) > 80


def test_the_last_plan_comes_back_for_its_model_and_grouping(world):
    st, mid, g = world
    tgt, mix = {"0-4": 0.3, "5-9": 0.7}, {"0-4": 0.6, "5-9": 0.4}
    set_id, job = sets.submit_build(st.db, mid, g["id"], mix, n_s=10, target=tgt, grow=True, steps=2)
    assert run_now(st, job).state == "succeeded"
    assert sets.latest_plan(st.db, mid, g["id"], ["0-4", "5-9"]) == (tgt, mix)
    other = next(x for x in attributes.list_groupings(st.db, "digits") if x["id"] != g["id"])
    assert sets.latest_plan(st.db, mid, other["id"], list(other["groups"])) is None


def test_not_preferred_set(world):
    st, mid, g = world
    ids = [r["id"] for r in pool.gallery_page(st.db, mid, per_page=6).rows]
    with pytest.raises(UserError, match="not preferred"):
        sets.build_not_preferred(st.db, 10 ** 6)
    labels.set_not_preferred(st.db, ids)
    sid = sets.build_not_preferred(st.db, mid)
    assert sets.get_set(st.db, sid)["n_s"] == 6 and sets.member_count(st.db, sid) == 6


def _set(st, mid, g, n=24):
    return sets.build_not_preferred(st.db, mid) if n is None else \
        run_now(st, sets.submit_build(st.db, mid, g["id"], {"0-4": 0.5, "5-9": 0.5}, n_s=n, steps=2)[1]) and \
        sets.list_sets(st.db, mid)[0]["id"]


def test_finetune_registers_budget_checkpoints_and_bad_settings_are_refused(world):
    st, mid, g = world
    sid = _set(st, mid, g)
    with pytest.raises(UserError, match="checkpoint interval"):
        finetune.submit(st.db, sid, total_kimg=0.1, checkpoint_kimg=0.5, lr=1e-3, batch_size=8, previews=False)
    job = finetune.submit(st.db, sid, total_kimg=0.064, checkpoint_kimg=0.032, lr=1e-3, batch_size=8)
    view = run_now(st, job)
    assert view.state == "succeeded", view.traceback
    previews = [j for j in jobs.list_jobs(st.db, kind="sweep") if j.state == "queued"]
    assert previews and previews[0].params["preview_checkpoint"] == finetune.checkpoints(st.db, job)[-1]["id"]
    jobs.cancel(st.db, previews[0].id)
    assert view.result["nimg"] == 64
    assert [c["kimg"] for c in finetune.checkpoints(st.db, job)] == [0.032, 0.064]
    curve = finetune.loss_curve(st.settings, st.db, job)
    assert curve and curve[-1]["nimg"] == 64


@pytest.mark.slow
def test_killed_finetune_is_interrupted_then_resumes_to_the_same_result(world):
    """Kill the worker mid-run, restart the runner: interrupted; resume: same images seen, same weights."""
    st, mid, g = world
    sid = _set(st, mid, g)
    kw = dict(total_kimg=0.768, checkpoint_kimg=0.128, lr=1e-3, batch_size=8, previews=False)
    straight = finetune.submit(st.db, sid, **kw)
    ref = run_now(st, straight)
    assert ref.state == "succeeded"

    job = finetune.submit(st.db, sid, **kw)
    runner = JobRunner(st.db, st.settings, poll_s=0.1).start()
    wait_for_job(st.db, job, states=("running",), timeout=120)
    wait_until(lambda: finetune.checkpoints(st.db, job), 180, f"fine-tune job #{job} to store its first checkpoint")
    worker = runner.children[job]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()  # the kill has landed (when the studio itself dies, init reaps its workers)
    runner.stop()  # the studio goes down too
    runner = JobRunner(st.db, st.settings, poll_s=0.1)
    runner.tick()  # a restarted studio looks at its jobs first
    view = jobs.get(st.db, job)
    assert view.state == "interrupted", view.message
    done_before = len(finetune.checkpoints(st.db, job))
    assert 0 < done_before < 6
    jobs.resume(st.db, job)
    runner.start()
    view = expect_success(st.db, job, timeout=300)
    runner.stop()
    assert view.result["nimg"] == ref.result["nimg"] == 768
    assert [c["kimg"] for c in finetune.checkpoints(st.db, job)] == \
        [c["kimg"] for c in finetune.checkpoints(st.db, straight)]
    a = load_file(str(st.settings.abs(finetune.checkpoints(st.db, straight)[-1]["path"])))
    b = load_file(str(st.settings.abs(finetune.checkpoints(st.db, job)[-1]["path"])))
    assert all((a[k] == b[k]).all() for k in a)  # exact resume: bit-identical weights


def test_truncated_sample_png_is_named_when_a_finetune_reads_its_set(world):
    st, mid, g = world
    sid = _set(st, mid, g, n=16)
    sample_id, rel = sets.member_ids(st.db, sid)[3]
    path = st.settings.abs(rel)
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])  # a copy cut short: Pillow says "image file is truncated"
    try:
        view = run_now(st, finetune.submit(st.db, sid, total_kimg=0.016, checkpoint_kimg=0.016, lr=1e-3,
                                           batch_size=8, previews=False))
    finally:
        path.write_bytes(good)
    assert view.state == "failed"
    assert f"sample #{sample_id} of S #{sid}" in view.message and str(path) in view.message, view.message
    assert "truncated" in view.message


def test_finetune_inherits_the_base_recipe(world):
    st, mid, g = world
    from studio.models import Model
    with st.db.session() as s:  # pretend the base was trained with a recorded recipe
        m = s.get(Model, mid)
        m.meta = {**m.meta, "training": {"config": {"batch_size": 128, "lr": 4e-4, "ema_halflife_kimg": 10,
                                                    "ema_rampup_ratio": 0.1, "lr_rampup_kimg": 0, "seed": 1}}}
    assert finetune.defaults_for(st.db, mid) == {"batch_size": 128, "lr": 4e-4}
    sid = _set(st, mid, g)
    job = finetune.submit(st.db, sid, total_kimg=0.1, checkpoint_kimg=0.1, lr=1e-3, batch_size=8, previews=False)
    cfg = jobs.get(st.db, job).params["config"]
    assert cfg["ema_halflife_kimg"] == 10 and cfg["lr_rampup_kimg"] == 0 and cfg["ema_rampup_ratio"] == 0.1
    assert cfg["lr"] == 1e-3 and cfg["batch_size"] == 8 and cfg["seed"] == 0  # what the user set wins
    jobs.cancel(st.db, job)


def test_double_start_of_a_finetune_queues_one_job(world):
    """Two identical submissions at the same moment (a double click) give one job, shown to both."""
    from concurrent.futures import ThreadPoolExecutor
    st, mid, g = world
    sid = _set(st, mid, g)
    kw = dict(total_kimg=0.05, checkpoint_kimg=0.05, lr=1e-3, batch_size=8, previews=False)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda _: finetune.submit_new(st.db, sid, **kw), range(4)))
    assert len({j for j, _ in got}) == 1 and sum(new for _, new in got) == 1
    job = got[0][0]
    other, new = finetune.submit_new(st.db, sid, **{**kw, "total_kimg": 0.1})  # different settings: a new job
    assert new and other != job
    jobs.cancel(st.db, job)
    again, new = finetune.submit_new(st.db, sid, **kw)  # the first is over: the same settings queue again
    assert new and again not in (job, other)
    for j in (other, again):
        jobs.cancel(st.db, j)
