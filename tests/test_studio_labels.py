"""Labelling: classifier labels, manual labels kept apart and winning, concurrent clients lose nothing."""
import multiprocessing as mp

import pytest

from pipelines.errors import UserError
from studio.services import attributes, labels, pool
from studio.testing import run_now, tiny_studio

from tests.testkit import pooled_studio

# every test here runs on SQLite and on PostgreSQL (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("db_backend")
world = pooled_studio(n_pool=60)


def _grouping(st, name):
    return next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == name)


def test_classifier_labels_every_sample_and_groups_follow(world):
    st, mid = world
    g = _grouping(st, "digits 0-4 vs 5-9")
    counts = pool.group_counts(st.db, mid, g["id"])
    assert sum(counts.values()) == 60
    page = pool.gallery_page(st.db, mid, g["id"], status="classifier", per_page=100)
    assert page.total == 60 and all(r["source"] == "classifier" for r in page.rows)
    d = labels.sample_detail(st.db, page.rows[0]["id"], "digits")
    assert len(d["probs"]) == 10 and abs(sum(d["probs"]) - 1) < 1e-4 and d["manual"] is None


def test_manual_label_wins_and_is_kept_apart(world):
    st, mid = world
    g = _grouping(st, "all ten digits")
    sid = pool.gallery_page(st.db, mid, g["id"], per_page=1).rows[0]["id"]
    before = labels.sample_detail(st.db, sid, "digits")
    labels.set_manual_label(st.db, [sid], "digits", "7", author="ann")
    after = labels.sample_detail(st.db, sid, "digits")
    assert after["manual"] == "7" and after["probs"] == before["probs"]  # classifier label untouched
    row = next(r for r in pool.gallery_page(st.db, mid, g["id"], status="manual", per_page=100).rows
               if r["id"] == sid)
    assert row["group"] == "7" and row["confidence"] == 1.0
    # the manual label survives relabelling by the classifier
    assert run_now(st, pool.submit_label(st.db, mid, "digits")).state == "succeeded"
    g2 = _grouping(st, "digits 0-4 vs 5-9")
    assert next(r for r in pool.gallery_page(st.db, mid, g2["id"], group="5-9", per_page=100).rows
                if r["id"] == sid)
    labels.set_manual_label(st.db, [sid], "digits", None)  # withdraw
    assert labels.sample_detail(st.db, sid, "digits")["manual"] is None
    assert len(labels.sample_detail(st.db, sid, "digits")["history"]) == 2


def test_bulk_relabel_and_not_preferred_filters(world):
    st, mid = world
    g = _grouping(st, "digits 0-4 vs 5-9")
    ids = [r["id"] for r in pool.gallery_page(st.db, mid, g["id"], per_page=100).rows[10:20]]
    assert labels.set_manual_label(st.db, ids, "digits", "2") == 10
    zero_four = pool.gallery_page(st.db, mid, g["id"], group="0-4", status="manual", per_page=100)
    assert {r["id"] for r in zero_four.rows} >= set(ids)
    labels.set_not_preferred(st.db, ids[:4])
    np_page = pool.gallery_page(st.db, mid, g["id"], status="not preferred", per_page=100)
    assert sorted(r["id"] for r in np_page.rows) == sorted(ids[:4])
    assert pool.not_preferred_ids(st.db, mid) == sorted(ids[:4])
    conf = pool.gallery_page(st.db, mid, g["id"], min_conf=0.99, per_page=100)
    assert all(r["confidence"] >= 0.99 for r in conf.rows)


def test_bad_manual_labels_are_refused(world):
    st, mid = world
    with pytest.raises(UserError, match="not a class"):
        labels.set_manual_label(st.db, [1], "digits", "eleven")
    with pytest.raises(UserError, match="Select at least one"):
        labels.set_manual_label(st.db, [], "digits", "1")


def _client(url, ids, label, out):
    from studio.db import Database
    from studio.services import labels as svc
    db = Database(url, migrate=False)
    n = 0
    for i in ids:  # one request per label, like clicks in two browsers
        n += svc.set_manual_label(db, [i], "digits", label, author=f"client-{label}")
    out.put(n)


def test_two_clients_labelling_concurrently_lose_nothing(world):
    st, mid = world
    ids = [r["id"] for r in pool.gallery_page(st.db, mid, per_page=100).rows]
    before = labels.count_manual(st.db, "digits")
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_client, args=(st.db.url, ids, lab, q)) for lab in ("3", "8")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sorted(q.get(timeout=5) for _ in procs) == [60, 60]
    assert labels.count_manual(st.db, "digits") - before == 120  # every click stored
    g = _grouping(st, "all ten digits")
    final = pool.gallery_page(st.db, mid, g["id"], status="manual", per_page=100)
    assert final.total == 60 and {r["group"] for r in final.rows} <= {"3", "8"}


def test_missing_classifier_weights_say_where_to_put_them(tmp_path):
    st, mid = tiny_studio(tmp_path / "data", n_pool=4, label=False)
    attributes.register_classifier(st.db, "digits", {"weights": str(tmp_path / "nope.safetensors")})
    view = run_now(st, pool.submit_label(st.db, mid, "digits"))
    assert view.state == "failed" and "nope.safetensors" in view.message and "build" in view.message
    st.close()
