"""Helpers for driving the studio in Playwright (used by the browser tests and demo_walk.py)."""
import json
import os
import re
import tempfile
import time
import urllib.parse
import urllib.request
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
_SERVED = []  # the Blocks serving() runs in this process (for what a page waits on when it does not settle)


@contextmanager
def serving(st):
    """Serve the studio's UI, with a job runner (started here unless the studio has one); yields the URL and
    closes the UI, the runner and the studio after."""
    from studio.jobs.runner import JobRunner
    from studio.ui.app import build_ui, launch_kwargs
    if st.runner is None:
        st.runner = JobRunner(st.db, st.settings, poll_s=0.2).start()
    demo = build_ui(st)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(st))
    _SERVED.append(demo)
    try:
        yield url
    finally:
        _SERVED.remove(demo)
        demo.close()
        st.close(terminate_jobs=True)


@contextmanager
def browser_page(url, viewport: dict | None = None):
    """A chromium page opened on `url` (1440x1000 unless `viewport`), with the page's JavaScript errors collected
    in `page.page_errors` and the seconds its opening took in `page.open_s`."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport=viewport or {"width": 1440, "height": 1000})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        open_page(pg, url)
        pg.open_s = time.perf_counter() - t0
        pg.page_errors = errors
        try:
            yield pg
        finally:
            browser.close()


def _is_api(url: str) -> bool:
    """A Gradio request that ends when its work is done (a page with gr.State also holds a heartbeat open for
    its whole life: not one of these)."""
    return "/gradio_api/" in url and "/heartbeat/" not in url


def tick_fns(url: str) -> set[int]:
    """fn_index of every timer-tick event the app at `url` runs off the queue (the job panels' timer): read from
    the app's /config, the same dependency list the page itself runs on."""
    parts = urllib.parse.urlsplit(url)
    with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/config", timeout=30) as r:
        deps = json.load(r)["dependencies"]
    return {d["id"] for d in deps if not d.get("queue", True) and any(t[1] == "tick" for t in d["targets"])}


def _is_tick(pg, req) -> bool:
    """A periodic timer tick: a plain POST to run/predict whose fn_index is a tick event's. Not work a test waits
    for: it comes back every second while a job runs. (What a tick's outputs set off, such as a tab's refresh when
    a job ends, is an ordinary event and is waited for.)"""
    if req.method != "POST" or not req.url.split("?")[0].endswith("/run/predict") or not pg.tick_fns:
        return False
    try:
        return (req.post_data_json or {}).get("fn_index") in pg.tick_fns
    except ValueError:
        return False


def track_requests(pg, url: str | None = None) -> None:
    """Keep count of the page's Gradio requests in flight and when the last one started or ended (for settle);
    timer ticks are not counted (`url`: the app, to learn which events are ticks; default the page's)."""
    if getattr(pg, "tick_fns", None) is None:
        app = url or pg.url
        pg.tick_fns = tick_fns(app) if app.startswith("http") else None  # None: not known yet (a blank page)
    if hasattr(pg, "api_inflight"):
        return
    pg.api_inflight, pg.api_changed, pg.ticks_seen = set(), time.monotonic(), 0

    def started(req):
        if _is_api(req.url) and not _is_tick(pg, req):
            pg.api_inflight.add(req)
            pg.api_changed = time.monotonic()

    def ended(req):
        if req in pg.api_inflight:
            pg.api_inflight.discard(req)
            pg.api_changed = time.monotonic()
        elif _is_tick(pg, req):  # its outputs land now and may set off events: the quiet gap starts again
            pg.api_changed = time.monotonic()
            pg.ticks_seen += 1

    def navigated(frame):
        if frame == pg.main_frame:  # a reload: the old document's requests may never report an end
            pg.api_inflight.clear()
            pg.api_changed = time.monotonic()

    pg.on("request", started)
    pg.on("requestfinished", ended)
    pg.on("requestfailed", ended)
    pg.on("framenavigated", navigated)


def settle(pg, quiet_s: float = 0.4, timeout: float = 60.0) -> None:
    """Wait until every Gradio request of the page has been answered and none started for `quiet_s`
    (an event fired by a click, a fill or a tab change has run and its outputs are on the page).

    Event-driven: it waits for the next request to end (or start) rather than for a fixed time; the
    deadline raises, naming what was still in flight. Not waited for: the job panels' timer ticks (every second
    while a job runs; they run off the queue and are told apart by their fn_index), and a queue stream the server
    holds open with no event of the page's session left to report (see idle_stream)."""
    track_requests(pg)  # a page opened without browser_page() is tracked from now on
    end = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        busy = [r for r in pg.api_inflight if not idle_stream(r.url)]
        if not busy and now - pg.api_changed >= quiet_s:
            return
        if now >= end:
            raise AssertionError(f"the page did not settle in {timeout} s: "
                                 f"{[r.url for r in busy][:5]} still in flight{server_queue(busy)}")
        # a stream turns idle without a request event: look again at least every half second
        wait_s = min(end, pg.api_changed + quiet_s) - now if not busy else min(end - now, 0.5)
        try:
            pg.wait_for_event("requestfinished" if busy else "request", timeout=max(1.0, 1000 * wait_s))
        except PlaywrightTimeout:
            pass  # quiet for long enough, or time to look again (or the deadline: checked above)


def _session(url: str) -> str | None:
    """The session hash of a queue/data stream's URL (None for any other request)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.path.endswith("/queue/data"):
        return None
    return (urllib.parse.parse_qs(parts.query).get("session_hash") or [None])[0]


def idle_stream(url: str) -> bool:
    """A queue/data stream of a studio served in this process whose session has no event left to report.

    Gradio's server closes a session's stream only when it delivers an event's completion and none is pending;
    when a page's events end on one stream while the client has opened another, the other stays open (heartbeats
    only) until the session's next queued event: no work is waiting on it."""
    session = _session(url)
    queues = [demo._queue for demo in _SERVED]
    if session is None or not queues:
        return False
    return not any(q.pending_event_ids_session.get(session) for q in queues)


def server_queue(busy=()) -> str:
    """The Gradio queue of the studios served here: events running and waiting by handler name, and the events
    still to be reported to the sessions of the streams in `busy`."""
    out = []
    for demo in _SERVED:
        q = demo._queue
        running = [e.fn.name for job in getattr(q, "active_jobs", ()) if job for e in job]
        waiting = [e.fn.name for eq in q.event_queue_per_concurrency_id.values() for e in eq.queue]
        pending = {s: list(q.pending_event_ids_session.get(s, ())) for s in map(_session, [r.url for r in busy]) if s}
        out.append(f"; server queue: running {running}, waiting {waiting}, unreported {pending}")
    return "".join(out)


def open_page(pg, url: str | None = None) -> None:
    """Go to `url` (None: reload) and wait until its load events are answered: Playwright's networkidle minus a
    gr.State heartbeat, which would keep the page from ever being idle."""
    track_requests(pg, url)
    if url is None:
        pg.reload(wait_until="load", timeout=120_000)
    else:
        pg.goto(url, wait_until="load", timeout=120_000)
    settle(pg, quiet_s=0.5, timeout=120)


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
    pg.get_by_role("tab", name=name, selected=True).wait_for(timeout=30_000)
    settle(pg)  # the tab's loaders have filled it


def fill(pg, elem_id, value):
    """Type into a textbox/number and press Enter."""
    box = pg.locator(f"#{elem_id}").locator("input, textarea").first
    box.fill(str(value))
    box.press("Enter")
    settle(pg)  # its change/submit events have run


def fill_all(pg, values: dict):
    """fill() each box of a form in turn: {elem_id: value}."""
    for elem_id, value in values.items():
        fill(pg, elem_id, value)


def fill_slider(pg, elem_id, value, wait: bool = True):
    """Move a slider like a user dragging it (fires its input and change events); `wait`: until the page settles
    (False when the caller times what the move shows)."""
    pg.locator(f"#{elem_id} input[type=range]").first.fill(str(value))
    if wait:
        settle(pg)


def pick(pg, elem_id, option):
    """Choose a dropdown option by its label."""
    pg.locator(f"#{elem_id} input").first.click()
    pg.get_by_role("option", name=option, exact=False).first.click()
    pg.get_by_role("option").first.wait_for(state="detached", timeout=30_000)  # the list closed on the choice
    settle(pg)


def job_card(pg, kind):
    """(job id, state) shown by the panel of `kind`, or (None, None); read in one go (panels re-render)."""
    got = pg.evaluate("k => { const c = document.querySelector(`#job-${k} .job-card`);"
                      " return c ? [c.dataset.job, c.dataset.state] : [null, null]; }", kind)
    return tuple(got)


def run_job(pg, button_id, kind, timeout=240):
    """Click a button that submits a job and wait until the panel shows a new job finished."""
    before = job_card(pg, kind)[0]
    pg.locator(f"#{button_id}").click()
    try:
        pg.wait_for_function("([k, before, terminal]) => { const c = document.querySelector(`#job-${k} .job-card`);"
                             " return !!c && c.dataset.job !== before && terminal.includes(c.dataset.state); }",
                             arg=[kind, before, list(TERMINAL)], timeout=1000 * timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"job from #{button_id} did not finish in {timeout} s: "
                             f"{pg.locator(f'#job-{kind}').inner_text()}") from None
    return job_card(pg, kind)[1], pg.locator(f"#job-{kind}").inner_text()


def finetune(pg, budget_kimg, every_kimg, batch=None, timeout=300) -> str:
    """Start a fine-tune on the Fine-tune tab (its picked set; checkpoints every `every_kimg`) and wait until it has
    succeeded; returns its panel's text."""
    tab(pg, "Fine-tune")
    fill_all(pg, {"ft-budget": budget_kimg, "ft-every": every_kimg, **({"ft-batch": batch} if batch else {})})
    state, text = run_job(pg, "ft-start", "finetune", timeout=timeout)
    assert state == "succeeded", text
    return text


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
    """Full-page screenshot into out/screenshots or $SIMS_SCREENSHOTS (or `folder`), once the page has settled."""
    settle(pg)
    pg.evaluate("() => document.fonts.ready")  # text laid out in its final font
    folder.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(folder / name), full_page=True)
