"""Helpers for driving the studio in Playwright (used by the browser tests and demo_walk.py)."""
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ROOT = Path(__file__).resolve().parents[2]
# Test runs write here (ignored by git) unless SIMS_SCREENSHOTS points elsewhere; the README's
# committed screenshots are the demo walk's (docs/screenshots, see demo_walk.py).
SHOTS = Path(os.environ.get("SIMS_SCREENSHOTS") or ROOT / "out" / "screenshots")
DOC_SHOTS = ROOT / "docs" / "screenshots"
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")


@contextmanager
def serving(st):
    """Start the studio's job runner and UI on a prepared studio; yields the URL and closes both after."""
    from studio.jobs.runner import JobRunner
    from studio.ui.app import build_ui, launch_kwargs
    st.runner = JobRunner(st.db, st.settings, poll_s=0.2).start()
    demo = build_ui(st)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(st))
    try:
        yield url
    finally:
        demo.close()
        st.close(terminate_jobs=True)


@contextmanager
def browser_page(url):
    """A chromium page on `url`, with the page's JavaScript errors collected in `page.page_errors`."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url, wait_until="networkidle", timeout=120_000)
        pg.page_errors = errors
        try:
            yield pg
        finally:
            browser.close()


def wait_text(pg, elem_id, text, timeout=60_000):
    """Wait until the element's text contains `text` (loads and refreshes are asynchronous)."""
    try:
        pg.wait_for_function("([id, t]) => (document.getElementById(id)?.innerText || '').includes(t)",
                             arg=[elem_id, text], timeout=timeout)
    except PlaywrightTimeout:
        pg.screenshot(path=os.path.join(tempfile.gettempdir(), f"studio-failed-{elem_id}.png"), full_page=True)
        raise AssertionError(f"#{elem_id} never showed {text!r}; it shows {pg.locator(f'#{elem_id}').inner_text()!r}")
    return pg.locator(f"#{elem_id}").inner_text()


def tab(pg, name):
    """Open a tab by its label."""
    pg.get_by_role("tab", name=name).click()
    pg.wait_for_timeout(700)


def fill(pg, elem_id, value):
    """Type into a textbox/number and press Enter."""
    box = pg.locator(f"#{elem_id}").locator("input, textarea").first
    box.fill(str(value))
    box.press("Enter")
    pg.wait_for_timeout(300)


def fill_slider(pg, elem_id, value):
    """Move a slider like a user dragging it (fires its input and change events)."""
    pg.locator(f"#{elem_id} input[type=range]").first.fill(str(value))
    pg.wait_for_timeout(500)


def pick(pg, elem_id, option):
    """Choose a dropdown option by its label."""
    pg.locator(f"#{elem_id} input").first.click()
    pg.get_by_role("option", name=option, exact=False).first.click()
    pg.wait_for_timeout(400)


def job_card(pg, kind):
    """(job id, state) shown by the panel of `kind`, or (None, None); read in one go (panels re-render)."""
    got = pg.evaluate("k => { const c = document.querySelector(`#job-${k} .job-card`);"
                      " return c ? [c.dataset.job, c.dataset.state] : [null, null]; }", kind)
    return tuple(got)


def run_job(pg, button_id, kind, timeout=240):
    """Click a button that submits a job and wait until the panel shows a new job finished."""
    before = job_card(pg, kind)[0]
    pg.locator(f"#{button_id}").click()
    end = time.time() + timeout
    while time.time() < end:
        job, state = job_card(pg, kind)
        if job is not None and job != before and state in TERMINAL:
            return state, pg.locator(f"#job-{kind}").inner_text()
        pg.wait_for_timeout(500)
    raise AssertionError(f"job from #{button_id} did not finish in {timeout} s: "
                         f"{pg.locator(f'#job-{kind}').inner_text()}")


def toast_text(pg, pattern, timeout=20_000):
    """Wait for an error/info toast containing `pattern`; returns its text and closes toasts."""
    loc = pg.locator(".toast-body").filter(has_text=re.compile(pattern))
    loc.first.wait_for(timeout=timeout)
    text = loc.first.inner_text()
    for btn in pg.locator(".toast-close").all():
        try:
            btn.click(timeout=1000)
        except Exception:
            pass
    return text


def shot(pg, name, folder: Path = SHOTS):
    """Full-page screenshot into out/screenshots or $SIMS_SCREENSHOTS (or `folder`)."""
    pg.wait_for_timeout(600)
    folder.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(folder / name), full_page=True)
