"""Curation at scale: 2-D projection, near-duplicate groups, the cached pool map, bulk labels and undo."""
import numpy as np
import pytest
from sqlalchemy import select

from pipelines import embedding
from pipelines.errors import UserError
from studio.models import Assignment, Label, Sample, SetMember
from studio.services import attributes, curation, labels, pool
from studio.testing import run_now, tiny_studio


# ----------------------------------------------------------------------------- engine

def test_pca_projection_shape_determinism_and_axes(monkeypatch):
    monkeypatch.setattr(embedding, "umap_available", lambda: False)
    rng = np.random.default_rng(0)
    # variance 100 along feature 3, 9 along feature 7, 0.01 elsewhere
    x = rng.normal(scale=0.1, size=(500, 16))
    x[:, 3] += rng.normal(scale=10, size=500)
    x[:, 7] += rng.normal(scale=3, size=500)
    xy, method = embedding.project_2d(x)
    assert xy.shape == (500, 2) and xy.dtype == np.float32 and method == "PCA"
    xy2, _ = embedding.project_2d(x.copy())
    assert np.array_equal(xy, xy2)
    # first axis is feature 3 (sign fixed positive), second feature 7
    assert np.corrcoef(xy[:, 0], x[:, 3])[0, 1] > 0.999 and abs(np.corrcoef(xy[:, 1], x[:, 7])[0, 1]) > 0.99
    with pytest.raises(UserError, match="umap-learn"):
        embedding.project_2d(x, method="umap")
    with pytest.raises(UserError, match="at least 2"):
        embedding.project_2d(x[:1])


def _constructed_duplicates():
    """12 directions; rows 0,5,9 are one mode, rows 2,11 another, the rest distinct."""
    rng = np.random.default_rng(1)
    base = np.linalg.qr(rng.normal(size=(32, 32)))[0][:12]  # orthonormal rows: cosine 0 between them
    x = base.copy()
    x[5] = base[0] * 3 + 0.01 * base[1]   # same direction as row 0, other scale (cosine ~ 0.99999)
    x[9] = base[0] + 0.05 * base[4]       # cosine ~ 0.9988 with row 0
    x[11] = base[2] - 0.02 * base[3]      # cosine ~ 0.9998 with row 2
    return x


def test_near_duplicates_exact_groups_any_chunk():
    x = _constructed_duplicates()
    for chunk in (1, 4, 1024):
        assert embedding.near_duplicate_groups(x, 0.998, chunk=chunk) == [[0, 5, 9], [2, 11]]
    # a stricter threshold splits off row 9 (cosine 0.9988 < 0.9995)
    assert embedding.near_duplicate_groups(x, 0.9995) == [[0, 5], [2, 11]]
    assert embedding.extra_copies([[0, 5, 9], [2, 11]]) == [5, 9, 11]
    with pytest.raises(UserError, match="threshold"):
        embedding.near_duplicate_groups(x, 0.0)


def _brute_force_groups(x, threshold):
    """Every pair's cosine at once (n x n), then connected components: the reference for small n."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    u = embedding.normalize_rows(x)
    r, c = np.nonzero(np.triu(u @ u.T > threshold, 1))
    _, comp = connected_components(coo_matrix((np.ones(len(r)), (r, c)), shape=(len(x), len(x))), directed=False)
    groups = {}
    for i in range(len(x)):
        groups.setdefault(comp[i], []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def test_near_duplicates_pruned_search_finds_every_pair_the_full_matrix_finds():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 24))
    x = centres[rng.integers(0, 6, 600)] + rng.normal(scale=0.25, size=(600, 24))  # tight clusters
    x[100:110] = x[5] * rng.uniform(0.5, 2, size=(10, 1))                        # exact copies, other scales
    x[200] = 0                                                                     # a zero row matches nothing
    for threshold in (0.9, 0.97, 0.99, 0.999):
        expected = _brute_force_groups(x, threshold)
        for chunk in (7, 256):
            assert embedding.near_duplicate_groups(x, threshold, chunk=chunk) == expected, (threshold, chunk)
    assert [5, *range(100, 110)] in embedding.near_duplicate_groups(x, 0.9999, threads=1)


def test_near_duplicates_refuses_a_threshold_that_joins_everything():
    x = np.ones((200, 4)) + np.random.default_rng(0).normal(scale=1e-3, size=(200, 4))
    with pytest.raises(UserError, match="Raise the threshold"):
        embedding.near_duplicate_groups(x, 0.5)


# ----------------------------------------------------------------------------- studio services

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    st, mid = tiny_studio(tmp_path_factory.mktemp("curation") / "data", n_pool=40)
    yield st, mid
    st.close()


def _grouping(st, name="digits 0-4 vs 5-9"):
    return next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == name)


def test_map_job_caches_features_and_invalidates_when_the_pool_grows(world):
    st, mid = world
    view = run_now(st, curation.submit_map(st.db, mid, "digits"))
    assert view.state == "succeeded", view.traceback
    assert view.result["n"] == 40 and view.result["computed"] == 40 and view.result["dims"] == 128
    m = curation.load_map(st.db, st.settings, mid, "digits")
    assert m["xy"].shape == (40, 2) and m["missing"] == 0 and m["method"] in ("PCA", "UMAP")
    assert list(m["ids"]) == list(curation.pool_ids(st.db, mid))
    # the pool grows: the map says so, and the next run embeds only the new samples
    assert run_now(st, pool.submit_generate(st.db, mid, 8, steps=2)).state == "succeeded"
    assert curation.load_map(st.db, st.settings, mid, "digits")["missing"] == 8
    out = curation.compute_map(st.db, st.settings, mid, "digits")
    assert out["n"] == 48 and out["computed"] == 8
    m2 = curation.load_map(st.db, st.settings, mid, "digits")
    assert m2["missing"] == 0 and len(m2["ids"]) == 48
    # same features, same map (the cached features of the first 40 were reused unchanged)
    again = curation.compute_map(st.db, st.settings, mid, "digits")
    assert again["computed"] == 0
    assert np.array_equal(curation.load_map(st.db, st.settings, mid, "digits")["xy"], m2["xy"])
    # other features (e.g. new classifier weights): everything is recomputed
    other = curation.compute_map(st.db, st.settings, mid, "digits",
                                 extractor=("other", lambda imgs: imgs.reshape(len(imgs), -1).astype(float)))
    assert other["computed"] == 48 and other["feature"] == "other"
    curation.compute_map(st.db, st.settings, mid, "digits")  # back to the digits features


def _label_state(st, ids):
    """Every label row, assignment and flag of these samples (what undo must restore exactly)."""
    with st.db.session(read_only=True) as s:
        lab = sorted((r.id, r.sample_id, r.source.value, r.class_name, r.confidence, tuple(r.probs or ()))
                     for r in s.scalars(select(Label).where(Label.sample_id.in_(ids))))
        asg = sorted((r.sample_id, r.grouping_id, r.group_name, r.confidence, r.source.value)
                     for r in s.scalars(select(Assignment).where(Assignment.sample_id.in_(ids))))
        flags = sorted(s.execute(select(Sample.id, Sample.not_preferred).where(Sample.id.in_(ids))).all())
    return lab, asg, flags


def test_bulk_label_then_undo_restores_exactly(world):
    st, mid = world
    ids = [int(i) for i in curation.pool_ids(st.db, mid)[:12]]
    labels.set_manual_label(st.db, ids[:3], "digits", "8", author="ann")   # some had manual labels already
    before = _label_state(st, ids)
    g = _grouping(st)
    assert curation.bulk_label(st.db, st.settings, mid, ids, "digits", "1") == 12
    after = _label_state(st, ids)
    assert after != before
    assert {r["group"] for r in curation.selection_page(st.db, mid, ids, g["id"], per_page=50).rows} == {"0-4"}
    assert "labelled 12 samples '1'" in curation.describe(curation.last_action(st.settings, mid))
    assert "Undone" in curation.undo_last(st.db, st.settings, mid)
    assert _label_state(st, ids) == before
    assert labels.sample_detail(st.db, ids[0], "digits")["manual"] == "8"  # the earlier manual label is back
    with pytest.raises(UserError, match="Nothing to undo"):
        curation.undo_last(st.db, st.settings, mid)


def test_bulk_not_preferred_then_undo_restores_mixed_flags(world):
    st, mid = world
    ids = [int(i) for i in curation.pool_ids(st.db, mid)[20:30]]
    labels.set_not_preferred(st.db, ids[:4], True)
    before = _label_state(st, ids)
    assert curation.bulk_not_preferred(st.db, st.settings, mid, ids, True) == 10
    assert all(f for _, f in _label_state(st, ids)[2])
    curation.undo_last(st.db, st.settings, mid)
    assert _label_state(st, ids) == before
    labels.set_not_preferred(st.db, ids[:4], False)


def test_bulk_refuses_empty_and_foreign_selections(world):
    st, mid = world
    with pytest.raises(UserError, match="Select at least one"):
        curation.bulk_label(st.db, st.settings, mid, [], "digits", "1")
    with pytest.raises(UserError, match="not in this model's pool"):
        curation.bulk_not_preferred(st.db, st.settings, mid, [10 ** 6], True)


def test_selection_page_intersects_the_filters(world):
    st, mid = world
    g = _grouping(st)
    ids = [int(i) for i in curation.pool_ids(st.db, mid)[::2]]  # every other sample
    low = set(curation.matching_ids(st.db, mid, g["id"], group="0-4"))
    page = curation.selection_page(st.db, mid, ids, g["id"], group="0-4", per_page=5)
    assert page.total == len(low & set(ids)) and len(page.rows) == min(5, page.total)
    assert all(r["group"] == "0-4" and r["id"] in ids for r in page.rows)
    assert curation.matching_ids(st.db, mid) == [int(i) for i in curation.pool_ids(st.db, mid)]
    assert len(curation.matching_ids(st.db, mid, g["id"])) == pool.gallery_page(st.db, mid, g["id"]).total


def test_set_from_selection_holds_exactly_the_selection(world):
    st, mid = world
    g = _grouping(st)
    ids = [int(i) for i in curation.pool_ids(st.db, mid)[5:15]]
    sid = curation.build_set_from_selection(st.db, mid, ids, g)
    with st.db.session(read_only=True) as s:
        members = sorted(s.scalars(select(SetMember.sample_id).where(SetMember.set_id == sid)))
    assert members == ids
    from studio.services import sets
    info = sets.get_set(st.db, sid)
    assert info["kind"] == "selection" and info["n_s"] == 10 and sum(info["counts"].values()) == 10
    # near-duplicate extra copies left out
    sid2 = curation.build_set_from_selection(st.db, mid, ids, g, name="deduped", exclude=[ids[1], ids[4], 10 ** 6])
    assert sets.get_set(st.db, sid2)["n_s"] == 8 and sets.get_set(st.db, sid2)["name"] == "deduped"


def test_near_duplicates_in_the_pool_by_sample_id(world):
    st, mid = world
    curation.compute_map(st.db, st.settings, mid, "digits")
    ids = curation.pool_ids(st.db, mid)
    x = np.random.default_rng(3).normal(size=(len(ids), 32)).astype(np.float32)
    x[7] = x[2] * 2
    x[30] = x[2] + 1e-4
    x[39] = x[38]
    path = curation.cache_dir(st.settings, mid, "digits") / "features.npz"
    np.savez(path, ids=ids, features=x, feature=np.array("constructed"))
    out = curation.near_duplicates(st.db, st.settings, mid, "digits", 0.999)
    assert out["groups"] == [[int(ids[2]), int(ids[7]), int(ids[30])], [int(ids[38]), int(ids[39])]]
    assert out["searched"] == len(ids) and out["missing"] == 0


def test_point_attributes_and_map_selections(world):
    st, mid = world
    g = _grouping(st)
    curation.compute_map(st.db, st.settings, mid, "digits")
    m = curation.load_map(st.db, st.settings, mid, "digits")
    labels.set_not_preferred(st.db, [int(m["ids"][3])], True)
    a = curation.point_attributes(st.db, mid, g["id"], m["ids"])
    rows = {r["id"]: r for r in pool.gallery_page(st.db, mid, g["id"], per_page=1000).rows}
    for k, sid in enumerate(m["ids"]):
        r = rows[int(sid)]
        assert a["not_preferred"][k] == r["not_preferred"]
        assert (a["group"][k], a["confidence"][k]) == (r["group"] or "uncertain", r["confidence"]) \
            if r["source"] else (a["group"][k] is None and np.isnan(a["confidence"][k]))
    labels.set_not_preferred(st.db, [int(m["ids"][3])], False)
    # box and lasso pick exactly the points inside
    fake = {"ids": np.array([10, 11, 12, 13]), "xy": np.array([[0, 0], [1, 1], [2, 2], [0.2, 1.8]], np.float32)}
    assert curation.ids_in_selection(fake, {"box": [-0.5, 1.5, -0.5, 1.5]}) == [10, 11]
    square = {"lasso": [[0, 0.5, 0.5, 0], [1.5, 1.5, 2, 2]]}  # around (0.2, 1.8) only
    assert curation.ids_in_selection(fake, square) == [13]
    with pytest.raises(UserError, match="at least 3"):
        curation.ids_in_selection(fake, {"lasso": [[0, 1], [0, 1]]})


def test_feature_extractor_follows_the_classifier(tmp_path, monkeypatch):
    from pipelines.attributes.base import Classifier, FaceGate
    from pipelines.attributes.digits import DigitsClassifier, DigitsNet
    digits = DigitsClassifier(DigitsNet())
    name, fn = embedding.feature_extractor(digits)
    assert name.startswith("digits-penultimate") and fn(np.zeros((3, 8, 8, 1), np.uint8)).shape == (3, 128)
    # a gated digits classifier still uses the digits features
    gated = FaceGate(digits, detector=type("D", (), {"has_face": lambda self, x: np.ones(len(x), bool)})())
    assert embedding.feature_extractor(gated)[0] == name

    class FaceAttr(Classifier):  # stands for FairFace / deepface: facenet embeddings are used
        name, classes = "face-attr", ["a", "b"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no facenet weights here: the user is told where they go
    with pytest.raises(UserError, match="facenet weights not found"):
        embedding.feature_extractor(FaceAttr())


def test_selection_text_and_shift_click_ranges():
    from studio.ui.curation_panel import CurationPanel, fmt_ranges, parse
    assert fmt_ranges([10, 1, 2, 3, 7, 9]) == "1-3, 7, 9, 10"
    assert parse(fmt_ranges(range(1, 50_001))) == list(range(1, 50_001))
    panel = CurationPanel.__new__(CurationPanel)  # click() needs no components
    rows = [11, 12, 13, 14, 15, 16]
    text, anchor = panel.click(rows, 12, "", False, None)          # plain click toggles on
    assert (text, anchor) == ("12", 12)
    text, anchor = panel.click(rows, 15, text, True, anchor)        # shift-click: the range 12..15
    assert (text, anchor) == ("12-15", 15)
    text, anchor = panel.click(rows, 11, text, True, anchor)        # backwards range, union
    assert text == "11-15"
    assert panel.click(rows, 13, text, False, anchor)[0] == "11, 12, 14, 15"  # plain click toggles off
    assert panel.click(rows, 16, "3", True, 99)[0] == "3, 16"       # anchor not on this page: a toggle
