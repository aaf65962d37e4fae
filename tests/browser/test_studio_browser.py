"""Browser walk of the studio's flows 1-7 on a tiny model on CPU (Playwright + Debian's chromium).

Saves screenshots to docs/screenshots/ (the README shows them). Run:
    python -m pytest -q tests/browser -m browser
"""
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from walk import fill, fill_all, fill_slider, finetune, pick, run_job, settle, shot, tab, toast_text, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# ----------------------------------------------------------------------------- flows

def test_1_models(page, server):
    pg = page
    tab(pg, "Models")
    wait_text(pg, "model-card", "tiny test model")
    # import by a loopback URL: the job fails saying why and which flag allows it
    fill(pg, "import-src", "http://127.0.0.1:9/edm-ffhq-64x64-uncond-vp.pkl")
    state, text = run_job(pg, "import-btn", "import_model", timeout=120)
    assert state == "failed" and "--allow-private-urls" in text  # loopback: refused (SSRF guard)
    # a non-image upload as reference images is refused with a message
    bad = Path(server["st"].settings.data_dir).parent / "notes.txt"
    bad.write_text("not an image")
    pg.get_by_text("Real reference images").click()
    pg.locator("#ref-upload input[type=file]").set_input_files(str(bad))
    settle(pg)  # the upload has landed
    pg.locator("#ref-btn").click()
    assert "not an image file" in toast_text(pg, "not an image")
    shot(pg, "01-models.png")


def test_2_generate_and_label(page):
    pg = page
    tab(pg, "Generate & label")
    fill(pg, "gen-n", 48)
    fill_slider(pg, "gen-steps", 2)
    assert run_job(pg, "gen-btn", "generate")[0] == "succeeded"
    assert run_job(pg, "label-btn", "generate")[0] == "succeeded"
    wait_text(pg, "page-info", "48")
    thumbs = pg.get_by_role("button", name=re.compile(r"^Thumbnail"))
    assert thumbs.count() == 48
    thumbs.nth(0).click()
    pg.locator("#detail-probs .js-plotly-plot").wait_for(timeout=20_000)
    assert "Sample #1" in pg.locator("#detail-md").inner_text()
    pick(pg, "fix-class", "7")
    pg.locator("#fix-save").click()
    toast_text(pg, "labelled '7'")
    assert "Manual: **7**" in pg.locator("#detail-md").inner_text().replace("\n", " ") or \
        "Manual: 7" in pg.locator("#detail-md").inner_text()
    # bulk: select two samples in select mode, relabel them, mark them not preferred
    pg.locator("#select-mode input").check()
    thumbs.nth(1).click()
    thumbs.nth(2).click()
    expect(pg.locator("#selection textarea, #selection input").first).to_have_value("2, 3", timeout=30_000)
    pick(pg, "bulk-class", "2")
    pg.locator("#bulk-relabel").click()
    toast_text(pg, "2 samples relabelled")
    pg.locator("#bulk-np").click()
    toast_text(pg, "2 samples marked not preferred")
    pick(pg, "filter-status", "manual")
    wait_text(pg, "page-info", "3 samples match")
    pick(pg, "filter-status", "all")
    pg.locator("#select-mode input").uncheck()
    shot(pg, "02-generate-label.png")


def test_3_target(page):
    pg = page
    tab(pg, "Target")
    pg.locator("#target-refresh").click()
    wait_text(pg, "base-fractions", "labelled samples")  # the pool's base fractions have loaded
    value = "([id]) => parseFloat(document.querySelector(`#${id} input[type=number]`).value)"
    base = pg.evaluate(value, ["mix-1"])  # no S built yet: the mix starts at the pool's base share
    want = 70 if base < 60 else 30  # a target away from the base, so Suggest must move the mix
    fill_slider(pg, "target-1", want)  # group '5-9'; the other group follows so the sum stays 100%
    pg.wait_for_function(f"document.querySelector('#target-0 input[type=number]').value == '{100 - want}'",
                         timeout=30_000)
    wait_text(pg, "target-sum", "Target sum: 100.0%")
    pg.locator("#mix-suggest").click()
    pg.wait_for_function("([id, v]) => parseFloat(document.querySelector(`#${id} input[type=number]`).value) != v",
                         arg=["mix-1", base], timeout=30_000)
    mix = pg.evaluate(value, ["mix-1"])
    # a = p - (q - p)/omega0: to raise a group above its base share, S holds less of it than the pool
    assert (mix - base) * (want - base) < 0, f"base {base}%, target {want}%, suggested mix {mix}%"
    wait_text(pg, "mix-sum", "Mix sum: 100.0%")
    shot(pg, "03-target.png")


def test_4_build_set(page):
    pg = page
    tab(pg, "Build set")
    fill(pg, "ns", 5000)
    pg.locator("#grow input").uncheck()
    pg.locator("#plan-check").click()
    assert "more than the labelled pool can supply" in toast_text(pg, "can supply")
    pg.locator("#grow input").check()
    fill(pg, "ns", 24)
    fill_slider(pg, "build-steps", 2)
    pg.locator("#plan-check").click()
    wait_text(pg, "plan-md", "needed")
    assert run_job(pg, "build-btn", "build_set")[0] == "succeeded"
    wait_text(pg, "sets-table", "ready")  # the table refresh lands after the job's state under load
    shot(pg, "04-build-set.png")


def test_5_finetune(page):
    pg = page
    finetune(pg, 0.096, 0.032, batch=8)
    wait_text(pg, "ft-checkpoints", "0.032 kimg")
    pg.locator("#ft-loss .js-plotly-plot").wait_for(timeout=20_000)
    shot(pg, "05-finetune.png")


def test_6_guide(page):
    pg = page
    tab(pg, "Guide")
    pg.get_by_text("Sampling and measurement").click()
    fill_all(pg, {"guide-psteps": 4, "guide-pcount": 16, "guide-msteps": 2, "guide-n": 16})
    fill_slider(pg, "omega", 1.5)
    wait_text(pg, "guide-caption", "+1.50 · rendered now")
    fill_slider(pg, "omega", 0)
    wait_text(pg, "guide-caption", "+0.00 · ")
    fill_slider(pg, "omega", 1.5)
    wait_text(pg, "guide-caption", "+1.50 · cached")
    assert run_job(pg, "guide-sweep", "sweep", timeout=400)[0] == "succeeded"
    pg.locator("#plot-fraction .js-plotly-plot").first.wait_for(timeout=30_000)  # the curves redraw after the job
    assert pg.locator("#plot-fraction .js-plotly-plot").count() == 1
    fill(pg, "find-target", 70)
    state, text = run_job(pg, "find-btn", "sweep", timeout=300)
    assert state == "succeeded", text
    wait_text(pg, "find-result", "omega =")
    shot(pg, "06-guide.png")


def test_7_export(page, server):
    pg = page
    tab(pg, "Export")
    pg.locator("#bundle-btn").click()
    pg.locator("#bundle-file a").first.wait_for(timeout=60_000)
    assert "sample-sims --bundle" in pg.locator("#bundle-card").inner_text()
    fill(pg, "dataset-n", 12)
    assert run_job(pg, "dataset-btn", "export_dataset", timeout=200)[0] == "succeeded"
    pg.locator("#dataset-file a").first.wait_for(timeout=30_000)
    shot(pg, "07-export.png")


def test_8_jobs(page):
    pg = page
    tab(pg, "Jobs")
    for kind in ("generate", "label", "build_set", "finetune", "sweep", "find_omega", "export_dataset", "import_model"):
        wait_text(pg, "jobs-table", kind, timeout=30_000)  # every flow above left its job in the table
    fill(pg, "jobs-id", 1)
    pg.locator("#jobs-show").click()
    wait_text(pg, "jobs-panel", "--allow-private-urls")  # the loopback import of test_1, refused
    shot(pg, "08-jobs.png")
    assert page.page_errors == []
    assert pg.ticks_seen > 0  # the job panels ticked while the flows ran, and settle() told those ticks apart
