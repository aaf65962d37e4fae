"""A damaged sample PNG: the gallery shows a placeholder, clicking and labelling it work, and "Verify pool"
finds exactly that sample and regenerates it byte for byte from its seed with the model that made it."""
import pytest
from sqlalchemy import update

from pipelines.errors import UserError
from studio.models import Sample
from studio.services import attributes, labels, pool, verify
from studio.storage import sha256_bytes
from studio.testing import run_now, tiny_studio
from studio.ui.generate_tab import GenerateTab
from studio.ui.common import Page


@pytest.fixture()
def world(tmp_path):
    st, mid = tiny_studio(tmp_path / "data", n_pool=6, steps=2)
    g = next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == "digits 0-4 vs 5-9")
    rows = pool.gallery_page(st.db, mid, g["id"], per_page=100).rows
    yield st, mid, g, rows
    st.close()


def _truncate(st, row) -> bytes:
    """Cut the sample's PNG to half its length (a copy cut short); returns the original bytes."""
    path = st.settings.abs(row["path"])
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    return original


def _tab(st) -> GenerateTab:
    """The tab's handlers without building its components (they read only the studio)."""
    tab = object.__new__(GenerateTab)
    tab.page, tab.db, tab.settings = Page(st), st.db, st.settings
    return tab


def test_truncated_sample_gets_a_placeholder_and_can_still_be_labelled(world):
    st, mid, g, rows = world
    bad = rows[2]
    _truncate(st, bad)
    tab = _tab(st)
    items, ids, _, _ = tab.load_page(mid, g["id"], "any", "all", 0, 1, False, "", 1)
    assert ids == [r["id"] for r in rows]
    captions = dict(zip(ids, (c for _, c in items)))
    files = dict(zip(ids, (f for f, _ in items)))
    assert captions[bad["id"]] == f"#{bad['id']} unreadable: {st.settings.abs(bad['path']).name}"
    assert files[bad["id"]].endswith("unreadable-sample.png")
    assert verify.unreadable_reason(st.settings.abs(files[bad["id"]])) is None  # the placeholder itself decodes
    assert all("unreadable" not in c for i, c in captions.items() if i != bad["id"])
    img, md, _, _ = tab.detail(bad["id"], g["id"])  # the click: no exception, a message naming the file
    assert "cannot be read" in md and bad["path"].split("/")[-1] in md and img.shape[0] >= 64
    img, md, _, _ = tab.save_label(bad["id"], "7", g["id"])
    assert labels.sample_detail(st.db, bad["id"], "digits")["manual"] == "7"
    assert "Manual: **7**" in md


def test_verify_finds_exactly_the_damaged_sample_and_regenerates_it_bit_identical(world):
    st, mid, g, rows = world
    bad = rows[3]
    original = _truncate(st, bad)
    with st.db.session(read_only=True) as s:
        stored = s.get(Sample, bad["id"]).content_hash
    assert sha256_bytes(original) == stored
    check = verify.verify_pool(st.db, st.settings, mid, regenerate_bad=False)
    assert check.checked == 6 and [b.id for b in check.bad] == [bad["id"]]
    assert "does not decode" in check.bad[0].reason and check.bad[0].made_on == "cpu"
    view = run_now(st, verify.submit_verify(st.db, mid, "cpu"))  # the job the "Verify pool" button queues
    assert view.state == "succeeded", view.message
    r = view.result
    assert (r["checked"], r["bad"], r["regenerated"], r["could_not_regenerate"]) == (6, 1, 1, 0)
    assert st.settings.abs(bad["path"]).read_bytes() == original
    assert verify.verify_pool(st.db, st.settings, mid).bad == []


def test_verify_reports_why_a_sample_cannot_be_regenerated(world):
    st, mid, g, rows = world
    missing, other = rows[0], rows[1]
    st.settings.abs(missing["path"]).unlink()
    # a stored hash the sampler cannot reproduce (as if made on another device): the file must be left alone
    with st.db.session() as s:
        s.execute(update(Sample).where(Sample.id == other["id"]).values(content_hash="0" * 64))
    before = st.settings.abs(other["path"]).read_bytes()
    rep = verify.verify_pool(st.db, st.settings, mid)
    assert rep.checked == 6 and sorted(b.id for b in rep.bad) == sorted([missing["id"], other["id"]])
    reasons = {b.id: b.reason for b in rep.bad}
    assert reasons[missing["id"]] == "the file is missing"
    assert "content hash differs" in reasons[other["id"]]
    assert rep.regenerated == [missing["id"]]
    assert [i for i, _ in rep.failed] == [other["id"]] and "differs from the stored one" in rep.failed[0][1]
    assert st.settings.abs(other["path"]).read_bytes() == before
    assert "1 could not be regenerated" in rep.message()


def test_verify_refuses_without_a_model(world):
    st, *_ = world
    with pytest.raises(UserError, match="Pick a registered model"):
        verify.submit_verify(st.db, 9999, "cpu")
