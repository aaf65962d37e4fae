"""Curation in the browser: embedding map -> lasso -> gallery shows the selection -> bulk relabel -> undo.

Run: python -m pytest -q tests/browser/test_curation_browser.py -m browser
"""
import re

import pytest
from playwright.sync_api import expect
from walk import pick, run_job, shot, tab, toast_text, wait_text

from studio.testing import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny studio with a labelled pool of 48."""
    from studio.testing import tiny_studio
    st, mid = tiny_studio(tmp_path_factory.mktemp("curation-browser") / "data", n_pool=48)
    return {"st": st, "model": mid}


def _selection(pg) -> str:
    return pg.locator("#selection textarea, #selection input").first.input_value()


def _ids(text: str) -> list[int]:
    out = []
    for part in filter(None, re.split(r"[,\s]+", text)):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def _counts(st, mid):
    from studio.services import pool
    return pool.group_counts(st.db, mid, _grouping(st)["id"])


def _group_of(st, mid, sid):
    from studio.services import pool
    g = _grouping(st)
    return next(r["group"] for r in pool.gallery_page(st.db, mid, g["id"], per_page=1000).rows if r["id"] == sid)


def _grouping(st):
    from studio.services import attributes
    return next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == "digits 0-4 vs 5-9")


def test_lasso_on_the_map_filters_the_gallery_then_bulk_relabel_and_undo(page, server):
    pg, st, mid = page, server["st"], server["model"]
    tab(pg, "Generate & label")
    wait_text(pg, "page-info", "48")
    assert run_job(pg, "emb-compute", "embed", timeout=240)[0] == "succeeded"
    wait_text(pg, "emb-map", "n = 48")
    # a lasso around the middle of the map (plotly's default drag mode here)
    pg.locator("#emb-map").scroll_into_view_if_needed()
    box = pg.locator("#emb-map .nsewdrag").first.bounding_box()
    corners = [(0.15, 0.15), (0.85, 0.15), (0.85, 0.85), (0.15, 0.85), (0.15, 0.16)]
    pg.mouse.move(box["x"] + box["width"] * corners[0][0], box["y"] + box["height"] * corners[0][1])
    pg.mouse.down()
    for fx, fy in corners[1:]:
        pg.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=6)
    pg.mouse.up()
    pg.wait_for_function("() => (document.querySelector('#selection textarea')?.value || '').length > 0",
                         timeout=30_000)
    ids = _ids(_selection(pg))
    assert 0 < len(ids) < 48
    assert pg.locator("#filter-selected input").is_checked()
    wait_text(pg, "page-info", f"{len(ids)} samples match")
    wait_text(pg, "emb-map", f"{len(ids)} selected")  # gallery -> map: the selection is highlighted
    shot(pg, "curation-01-lasso.png")

    before = _counts(st, mid)
    groups = [_group_of(st, mid, i) for i in ids]
    cls, grp = ("9", "5-9") if any(g != "5-9" for g in groups) else ("0", "0-4")
    moved = sum(1 for g in groups if g != grp)  # the others are in that group already
    assert moved > 0
    pick(pg, "bulk-class", cls)
    pg.locator("#bulk-relabel").click()
    toast_text(pg, f"{len(ids)} samples relabelled '{cls}'")
    wait_text(pg, "bulk-undo-info", f"labelled {len(ids)} samples '{cls}'")
    after = _counts(st, mid)
    assert after.get(grp, 0) == before.get(grp, 0) + moved
    wait_text(pg, "group-counts", str(after[grp]))  # the counts chart follows
    shot(pg, "curation-02-relabelled.png")

    pg.locator("#bulk-undo").click()
    toast_text(pg, "Undone")
    wait_text(pg, "bulk-undo-info", "Nothing to undo")
    assert _counts(st, mid) == before
    assert pg.page_errors == []


def test_shift_click_selects_a_range_and_select_all_matching(page, server):
    pg = page
    pg.locator("#select-clear").click()
    pg.locator("#filter-selected input").uncheck()
    wait_text(pg, "page-info", "48 samples match")
    pg.locator("#select-mode input").check()
    thumbs = pg.get_by_role("button", name=re.compile(r"^Thumbnail"))
    thumbs.nth(2).click()
    expect(pg.locator("#selection textarea")).to_have_value("3", timeout=30_000)  # the anchor landed
    thumbs.nth(6).click(modifiers=["Shift"])
    pg.wait_for_function("() => (document.querySelector('#selection textarea')?.value || '') === '3-7'",
                         timeout=20_000)
    pick(pg, "filter-group", "0-4")
    pg.locator("#select-all").click()
    toast_text(pg, "samples selected")
    from studio.services import curation
    want = curation.matching_ids(server["st"].db, server["model"], _grouping(server["st"])["id"], group="0-4")
    wait_until(lambda: _ids(_selection(pg)) == want, 30, f"the selection to hold the {len(want)} matching samples")
    pick(pg, "filter-group", "any")
    pg.locator("#select-mode input").uncheck()
