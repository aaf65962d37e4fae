"""The studio page: header pickers (model, grouping, device), one tab per module, one timer for job panels."""
from __future__ import annotations

import os
import threading
import time

import gradio as gr

from pipelines.errors import UserError

from ..core import Studio
from ..services import attributes, jobs
from . import (build_tab, export_tab, fairness_guide_panels, finetune_tab, generate_tab, guide_tab, jobs_tab,
               models_tab, target_tab)
from .common import CSS, TERMINAL, THEME, Page, job_html, latest_job, model_choices, newest_job
from .sessions import MAX_SESSIONS, SESSION_IDLE_S, idle_reload_js, start_reaper

TABS = (("Models", models_tab), ("Generate & label", generate_tab), ("Target", target_tab),
        ("Build set", build_tab), ("Fine-tune", finetune_tab), ("Guide", guide_tab), ("Export", export_tab))
TICK_S = 1.0
# panels added below a tab's own (classifier cross-check, fairness vs target); the Guide builds its own panels
# (their share of a ω move answers in its scrub request)
EXTRAS = {"Generate & label": (fairness_guide_panels.build_crosscheck,),
          "Target": (fairness_guide_panels.build_target,)}


def grouping_choices(db) -> list[tuple[str, int]]:
    """(label, id) of every grouping."""
    return [(f"{g['classifier']} · {g['name']}", g["id"]) for g in attributes.list_groupings(db)]


def _default_grouping(db):
    choices = grouping_choices(db)
    preferred = [v for label, v in choices if label.endswith("digits 0-4 vs 5-9")]
    return (preferred or [v for _, v in choices] or [None])[0]


def _devices(default: str) -> list[str]:
    """Devices jobs may use: cpu, cuda when visible, and the studio's --device if it is another."""
    import torch
    found = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return found + ([default] if default and default not in found else [])


def build_ui(studio: Studio, session_idle_s: float = SESSION_IDLE_S) -> gr.Blocks:
    """Compose the tabs into one Blocks app; browser sessions idle for `session_idle_s` are dropped
    (pass the same value to launch_kwargs)."""
    db = studio.db
    page = Page(studio)
    with gr.Blocks(title="SIMS Studio") as demo:
        with gr.Row(elem_id="studio-header", equal_height=True):
            gr.Markdown("# SIMS Studio\nSteer a diffusion model with its own synthetic data", scale=3)
            models = model_choices(db)
            # Start on the first model so that opening the page does not fire every tab's change handlers.
            page.model = gr.Dropdown(models, value=models[0][1] if models else None, label="Base model",
                                     elem_id="pick-model", scale=3)
            page.grouping = gr.Dropdown(grouping_choices(db), value=_default_grouping(db), label="Grouping",
                                        elem_id="pick-grouping", scale=2)
            devices = _devices(studio.settings.device)
            page.device = gr.Radio(devices, value=studio.settings.device if studio.settings.device in devices
                                   else devices[-1], label="Device", elem_id="pick-device", scale=1)
        tabs_loaders = []
        with gr.Tabs():
            for title, module in TABS:
                with gr.Tab(title, id=title.lower().replace(" & ", "-").replace(" ", "-")) as tab:
                    start = len(page.loaders)
                    module.build(page)
                    for extra in EXTRAS.get(title, ()):
                        extra(page)
                    tabs_loaders.append((tab, page.loaders[start:]))
            with gr.Tab("Jobs", id="jobs") as jtab:
                start = len(page.loaders)
                jobs_table = jobs_tab.build(page)
                tabs_loaders.append((jtab, page.loaders[start:]))
        _wire_timer(page, demo, jobs_table)
        _wire_loading(page, demo, tabs_loaders)
    demo.session_reaper = start_reaper(demo, session_idle_s)
    return demo


_UNCHANGED = object()


def _plain(value):
    """The value an event output sets (an update without `value` leaves the component as it was)."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        return value.get("value", _UNCHANGED)
    if isinstance(value, gr.components.Component):
        explicit = value._constructor_args[0] if value._constructor_args else {}  # kwargs actually passed
        return explicit.get("value", _UNCHANGED)
    return value


def _as_update(value) -> dict | None:
    """An event output as an update dict (None for a plain value, which replaces whatever came before)."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        return dict(value)
    if isinstance(value, gr.components.Component):
        return {**(value._constructor_args[0] if value._constructor_args else {}), "__type__": "update"}
    return None


def _merge(old, new):
    """Two loaders updating one component: later keys win, earlier ones stay (choices from one, value from another)."""
    a, b = _as_update(old), _as_update(new)
    a = {"value": old, "__type__": "update"} if a is None else a
    b = {"value": new, "__type__": "update"} if b is None else b
    return {**a, **b}


def _wire_loading(page: Page, demo: gr.Blocks, tabs_loaders) -> None:
    """On page open: fill every tab in ONE request (loaders run in order, later ones see earlier outputs);
    on tab select: refresh that tab."""
    db = page.db
    followers = page.followers

    def initial():
        choices = model_choices(db)
        # No job yet: leave the panel alone (a job submitted while the page loads must not be forgotten).
        jobs_now = [latest_job(db, f.kinds) for f in followers]
        return (gr.Dropdown(choices=choices, value=choices[0][1] if choices else None),
                *[gr.skip() if j is None else j for j in jobs_now])

    steps = [(initial, [], [page.model, *[f.job for f in followers]]), *page.loaders]
    inputs = list({id(c): c for _, ins, _ in steps for c in ins}.values())
    outputs = list({id(c): c for _, _, outs in steps for c in outs}.values())

    def on_load(values: dict):
        current, out = dict(values), {}
        for fn, ins, outs in steps:
            try:
                t0 = time.perf_counter()
                res = fn(*[current.get(c) for c in ins])
                if os.environ.get("SIMS_PROFILE_LOAD"):
                    print(f"load {fn.__module__}.{fn.__name__}: {1000 * (time.perf_counter() - t0):.0f} ms", flush=True)
            except Exception as e:  # one tab failing to load must not blank the others
                print(f"page load: {getattr(fn, '__name__', fn)} failed: {e}", flush=True)
                continue
            for comp, val in zip(outs, res if len(outs) > 1 else (res,)):
                out[comp] = _merge(out[comp], val) if comp in out else val
                plain = _plain(val)
                if plain is not _UNCHANGED:
                    current[comp] = plain
        return out

    demo.load(on_load, set(inputs), set(outputs), show_progress="hidden")
    for tab, loaders in tabs_loaders:
        for fn, ins, outs in loaders:
            tab.select(fn, ins, outs, show_progress="hidden")


class JobsSnapshot:
    """The newest jobs as every open page's timer sees them: read at most once per `max_age_s` for all pages
    together (N pages ticking cost one query, not N x followers), and a tick never waits for another tick's read:
    while one refreshes, the others take the snapshot before it (at most one refresh old)."""

    def __init__(self, db, max_age_s: float = TICK_S / 2):
        self.db, self.max_age_s = db, max_age_s
        self._lock = threading.Lock()
        self._at, self._views = 0.0, None

    def views(self) -> list:
        """Newest first (jobs.list_jobs's 200)."""
        if self._views is None or time.monotonic() - self._at >= self.max_age_s:
            # the first read waits (there is nothing older to show); later ones skip a read already under way
            if self._lock.acquire(blocking=self._views is None):
                try:
                    if self._views is None or time.monotonic() - self._at >= self.max_age_s:
                        self._views, self._at = jobs.list_jobs(self.db), time.monotonic()
                finally:
                    self._lock.release()
        return self._views

    def get(self, job_id) -> "jobs.JobView | None":
        """One job: from the snapshot, else (older than the newest 200, or newer than the snapshot) from the
        database; None when it no longer exists."""
        jid = int(job_id)
        for view in self._views or ():
            if view.id == jid:
                return view
        try:
            return jobs.get(self.db, jid)
        except UserError:  # the job was deleted with its database row
            return None

    def newest(self, kinds) -> int | None:
        """Newest job of these kinds, active ones first (common.latest_job's rule over the snapshot)."""
        return newest_job(self.views(), kinds)


class LiveCache:
    """A follower's live extras (fine-tune loss curve, stats) computed once per change of its job's row, shared by
    every page's tick: the job's row (state, progress, message, result, updated) is the fingerprint, recomputed at
    least every `max_age_s` for what a task writes beside its row (the loss log). A tick that finds another
    computing them leaves those outputs unchanged until its next tick instead of waiting."""

    def __init__(self, max_age_s: float = 5.0):
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._cached: dict[int, tuple] = {}  # follower index -> (fingerprint, values, monotonic time)

    def values(self, index: int, follower, view) -> list:
        fingerprint = (view.id, view.state, view.progress, view.message, view.updated_at, view.result)
        cached = self._cached.get(index)
        if cached is not None and cached[0] == fingerprint and time.monotonic() - cached[2] < self.max_age_s:
            return cached[1]
        with self._lock:
            lock = self._locks.setdefault(index, threading.Lock())
        if not lock.acquire(blocking=False):
            return [gr.skip()] * len(follower.live_outputs)
        try:
            vals = list(follower.live(view.id))
            self._cached[index] = (fingerprint, vals, time.monotonic())
            return vals
        finally:
            lock.release()


def _wire_timer(page: Page, demo: gr.Blocks, jobs_table) -> None:
    """One timer refreshes every job panel (and live extras) plus the jobs table.

    Its ticks run off Gradio's queue (queue=False: one plain POST each, no queue/data stream held open while a job
    runs, never waiting behind other browsers' events) and only read: one shared jobs snapshot per half tick for
    all pages, live extras once per change of their job (trigger_mode 'once': a page's next tick waits for its
    last)."""
    db = page.db
    followers = page.followers
    live_outputs = [o for f in followers for o in f.live_outputs]
    snapshot, live_cache = JobsSnapshot(db), LiveCache()

    def tick(*job_ids):
        views = snapshot.views()
        panels, dones, lives, adopted, active = [], [], [], [], False
        for i, (f, jid) in enumerate(zip(followers, job_ids)):
            jid, new = _adopt(snapshot, f, jid)
            adopted.append(jid if new else gr.skip())
            view = snapshot.get(jid) if jid is not None else None
            running = view is not None and view.state not in TERMINAL
            panels.append(job_html(view))
            active = active or running
            dones.append([view.id, view.state] if view is not None and view.state in TERMINAL else gr.skip())
            if f.live is not None:
                lives.extend(live_cache.values(i, f, view) if running else [gr.skip()] * len(f.live_outputs))
        # The timer runs only while some job is active: an idle page makes no requests.
        return (*panels, *dones, *lives, *adopted, jobs_tab.rows(views), gr.Timer(active=active))

    timer = gr.Timer(TICK_S, active=False)
    timer.tick(tick, [f.job for f in followers],
               [*[f.panel for f in followers], *[f.done for f in followers], *live_outputs,
                *[f.job for f in followers], jobs_table, timer],
               show_progress="hidden", queue=False, trigger_mode="once")

    def show(jid):
        view = jobs.get(db, int(jid)) if jid is not None else None
        return job_html(view), gr.Timer(active=view is not None and view.state not in TERMINAL) \
            if view is not None and view.state not in TERMINAL else gr.skip()

    for f in followers:  # show a newly submitted (or reloaded) job at once and wake the timer
        f.job.change(show, f.job, [f.panel, timer], show_progress="hidden")


def _adopt(snapshot: JobsSnapshot, follower, jid) -> tuple[int | None, bool]:
    """(job to follow, changed?): a panel whose job is over (or that has none) takes up a newer active job of its
    kinds, e.g. the preview grid a finished fine-tune queues by itself."""
    current = snapshot.get(jid) if jid is not None else None
    if current is not None and current.state not in TERMINAL:
        return jid, False
    newest = snapshot.newest(follower.kinds)
    if newest is None or (current is not None and newest <= current.id):
        return jid, False
    view = snapshot.get(newest)
    if view is None or view.state in TERMINAL:
        return jid, False
    return newest, True


def launch_kwargs(studio: Studio, max_sessions: int = MAX_SESSIONS, session_idle_s: float = SESSION_IDLE_S) -> dict:
    """Arguments for `demo.launch` that every launcher (CLI, tests) must pass.

    max_sessions bounds the browser sessions whose state Gradio keeps (the least recently used goes first);
    session_idle_s must be the value given to build_ui (a page idle that long reloads before acting)."""
    data = studio.settings.data_dir
    # Serve the data directory (samples, grids, exports) but never the database itself.
    blocked = [str(data / f"studio.db{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    return {"theme": THEME, "css": CSS, "allowed_paths": [str(data)], "blocked_paths": blocked,
            "max_file_size": f"{studio.settings.max_upload_mb}mb", "footer_links": ["settings"],
            "state_session_capacity": int(max_sessions), "head": idle_reload_js(session_idle_s)}
