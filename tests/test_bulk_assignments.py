"""Bulk relabel, withdraw and undo leave every grouping's assignments exactly as a full recomputation from
the labels gives them, touch no other sample, and undo restores the previous state row for row.

Every test runs on SQLite and on PostgreSQL (tests/conftest.py). The reference is computed here, sample
by sample, independently of studio.services.labels: the newest manual label of a sample wins (a manual
row with no class withdraws it), else the classifier's probabilities are grouped under the grouping's
threshold; a sample with neither has no assignment.
"""
import numpy as np
import pytest
from sqlalchemy import delete, select

from studio.models import Assignment, Classifier, Grouping, Label, LabelSource, Sample
from studio.services import attributes, curation, labels

from tests.testkit import pooled_studio

pytestmark = pytest.mark.usefixtures("db_backend")
world = pooled_studio(n_pool=30)


def _assignments(st) -> dict:
    with st.db.session(read_only=True) as s:
        return {(r.sample_id, r.grouping_id): (r.group_name, r.confidence, r.source.value)
                for r in s.scalars(select(Assignment))}


def _state(st) -> tuple:
    """Every label row, assignment and not-preferred flag of the studio."""
    with st.db.session(read_only=True) as s:
        lab = sorted((r.id, r.sample_id, r.classifier, r.source.value, r.class_name, r.confidence, r.author,
                      tuple(r.probs or ())) for r in s.scalars(select(Label)))
        flags = sorted(s.execute(select(Sample.id, Sample.not_preferred)).all())
    return lab, sorted(_assignments(st).items()), flags


def _reference(st) -> dict:
    """(sample, grouping) -> (group, confidence, source), recomputed one sample at a time."""
    with st.db.session(read_only=True) as s:
        classes = list(s.scalar(select(Classifier.classes).where(Classifier.name == "digits")))
        groupings = s.scalars(select(Grouping).where(Grouping.classifier == "digits")).all()
        rows = s.scalars(select(Label).where(Label.classifier == "digits").order_by(Label.id)).all()
        sample_ids = list(s.scalars(select(Sample.id)))
    manual, auto = {}, {}
    for r in rows:  # ordered by id: the last manual row of a sample is its newest
        if r.source == LabelSource.manual:
            manual[r.sample_id] = r.class_name
        else:
            auto[r.sample_id] = r.probs
    out = {}
    for sid in sample_ids:
        for g in groupings:
            if manual.get(sid) is not None:
                to_group = {c: name for name, members in g.groups.items() for c in members}
                out[(sid, g.id)] = (to_group.get(manual[sid], "uncertain"), 1.0, "manual")
            elif sid in auto:
                eg = attributes.engine_grouping({"name": g.name, "groups": g.groups})
                lab, gp = eg.assign(np.asarray([auto[sid]]), classes, g.threshold)
                out[(sid, g.id)] = (str(lab[0]), float(gp[0].max()), "classifier")
    return out


def _full_recomputation(st) -> dict:
    """Drop every assignment and let refresh_assignments rebuild them all from the labels."""
    with st.db.session() as s:
        s.execute(delete(Assignment))
        labels.refresh_assignments(s, "digits", list(s.scalars(select(Sample.id))))
    return _assignments(st)


def _pool(st, mid) -> list[int]:
    return [int(i) for i in curation.pool_ids(st.db, mid)]


def _unlabel(st, sid: int) -> None:
    """A sample the classifier never labelled: no classifier row, no assignments."""
    with st.db.session() as s:
        s.execute(delete(Label).where(Label.sample_id == sid))
        s.execute(delete(Assignment).where(Assignment.sample_id == sid))


@pytest.mark.parametrize("chunk", [20_000, 4])  # 4: the same work split over many statements
def test_bulk_relabel_rewrites_exactly_the_selection_as_a_full_recomputation(world, monkeypatch, chunk):
    st, mid = world
    monkeypatch.setattr(labels, "CHUNK", chunk)
    ids = _pool(st, mid)
    assert _assignments(st) == _reference(st)  # the label job's assignments to begin with
    labels.set_manual_label(st.db, ids[:3], "digits", "8", author="ann")   # earlier manual labels
    labels.set_manual_label(st.db, ids[3:5], "digits", "3", author="ann")  # already what the bulk gives
    _unlabel(st, ids[6])
    n_groupings = len(attributes.list_groupings(st.db, "digits"))
    before, state_before = _assignments(st), _state(st)

    selection = ids[:12]
    assert curation.bulk_label(st.db, st.settings, mid, selection, "digits", "3") == 12
    after = _assignments(st)
    assert after == _reference(st)
    for key, value in before.items():  # no other sample's assignment changed
        if key[0] not in selection:
            assert after[key] == value
    assert {k for k in after if k[0] not in selection} == {k for k in before if k[0] not in selection}
    assert sum(k[0] == ids[6] for k in after) == n_groupings  # the unlabelled sample got a row per grouping
    with st.db.session(read_only=True) as s:
        three = {g.id: next((name for name, members in g.groups.items() if "3" in members), "uncertain")
                 for g in s.scalars(select(Grouping).where(Grouping.classifier == "digits"))}
    assert {k: v for k, v in after.items() if k[0] in selection} == {
        (sid, gid): (name, 1.0, "manual") for sid in selection for gid, name in three.items()}
    # nothing left to rewrite: the stored rows are the recomputation
    with st.db.session() as s:
        assert labels.refresh_assignments(s, "digits", ids) == 0
    assert _full_recomputation(st) == after

    # undo: the label rows it added are gone, every assignment and flag is back, row for row
    curation.undo_last(st.db, st.settings, mid)
    assert _state(st) == state_before
    assert _assignments(st) == _reference(st)


def test_withdrawn_and_repeated_manual_labels_follow_the_newest(world):
    st, mid = world
    ids = _pool(st, mid)[12:18]
    labels.set_manual_label(st.db, ids, "digits", "1")
    labels.set_manual_label(st.db, ids[:3], "digits", "9")
    labels.set_manual_label(st.db, ids[1:4], "digits", None)  # withdraw: '1' / the classifier counts again
    assert _assignments(st) == _reference(st)
    assert {labels.sample_detail(st.db, i, "digits")["manual"] for i in ids[1:4]} == {None}
    state = _state(st)
    assert curation.bulk_label(st.db, st.settings, mid, ids, "digits", "1") == 6
    assert _assignments(st) == _reference(st)
    curation.undo_last(st.db, st.settings, mid)
    assert _state(st) == state


def test_a_relabel_changes_only_the_groupings_whose_group_differs(world):
    st, mid = world
    sid = _pool(st, mid)[20]
    labels.set_manual_label(st.db, [sid], "digits", "3")
    before = _assignments(st)
    labels.set_manual_label(st.db, [sid], "digits", "4")  # same side of '0-4 vs 5-9', another digit
    after = _assignments(st)
    changed = {gid for (s, gid) in after if s == sid and after[(s, gid)] != before[(s, gid)]}
    with st.db.session(read_only=True) as s:
        groupings = s.scalars(select(Grouping).where(Grouping.classifier == "digits")).all()
    expected = set()
    for g in groupings:
        to_group = {c: name for name, members in g.groups.items() for c in members}
        if to_group.get("3", "uncertain") != to_group.get("4", "uncertain"):
            expected.add(g.id)
    assert changed == expected and 0 < len(expected) < len(groupings)
    assert after == _reference(st)


def test_refresh_rewrites_only_the_rows_that_differ(world):
    st, mid = world
    ids = _pool(st, mid)[24:28]
    reference = _reference(st)
    gid = next(g for (s, g) in reference if s == ids[0])
    with st.db.session() as s:
        assert labels.refresh_assignments(s, "digits", ids) == 0
        s.execute(Assignment.__table__.update().where(Assignment.sample_id == ids[0], Assignment.grouping_id == gid)
                  .values(group_name="stale"))
        s.execute(delete(Assignment).where(Assignment.sample_id == ids[1], Assignment.grouping_id == gid))
    with st.db.session() as s:
        # one stale row rewritten; the sample missing a row gets all its rows afresh (deleted + inserted)
        n_groupings = len({g for (_, g) in reference})
        assert labels.refresh_assignments(s, "digits", ids) == 1 + (n_groupings - 1) + n_groupings
    assert _assignments(st) == reference


def test_selection_queries_agree_with_the_assignments(world):
    st, mid = world
    ids = _pool(st, mid)
    with st.db.session(read_only=True) as s:
        assert ids == sorted(s.scalars(select(Sample.id).where(Sample.model_id == mid)))
    g = next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == "digits 0-4 vs 5-9")
    stored = {sid: v for (sid, gid), v in _assignments(st).items() if gid == g["id"]}
    labels.set_not_preferred(st.db, ids[1:3], True)
    attrs = curation.point_attributes(st.db, mid, g["id"], np.asarray(ids))
    assert [attrs["group"][k] for k in range(len(ids))] == [stored[i][0] if i in stored else None for i in ids]
    assert [bool(f) for f in attrs["not_preferred"]] == [i in ids[1:3] for i in ids]
    low = [i for i in ids if i in stored and stored[i][0] == "0-4"]
    assert curation.matching_ids(st.db, mid, g["id"], group="0-4") == low
    selection = ids[::2] + [10 ** 6]  # every other sample, and one that is not in the pool
    want = [i for i in low if i in selection]
    first = curation.selection_page(st.db, mid, selection, g["id"], group="0-4", per_page=2)
    assert len(want) >= 3 and first.total == len(want) and first.pages == -(-len(want) // 2)
    rows = [r for p in range(1, first.pages + 1)
            for r in curation.selection_page(st.db, mid, selection, g["id"], group="0-4", page=p, per_page=2).rows]
    assert [r["id"] for r in rows] == want
    assert all(r["group"] == "0-4" and r["source"] in ("classifier", "manual") for r in rows)
    empty = curation.selection_page(st.db, mid, [], g["id"])
    assert (empty.total, empty.pages, empty.rows) == (0, 1, [])
    labels.set_not_preferred(st.db, ids[1:3], False)
