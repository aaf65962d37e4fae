"""Shared UI pieces: the page context, error translation, job progress panels, theme and CSS."""
from __future__ import annotations

import functools
import html
import inspect
from dataclasses import dataclass, field
from typing import Callable

import gradio as gr

from pipelines.errors import UserError

from ..core import Studio
from ..services import jobs as jobs_service
from ..services.registry import list_models

TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
STATE_COLORS = {"queued": "#64748b", "starting": "#0ea5e9", "running": "#4f46e5", "succeeded": "#10b981",
                "failed": "#e11d48", "cancelled": "#94a3b8", "interrupted": "#f97316"}


def hidden_value(value=None) -> gr.JSON:
    """Per-browser list/dict that lives in the page but is not shown.

    Used instead of gr.State: State makes Gradio hold a heartbeat connection open for the
    whole session, so the page never becomes network-idle (which headless checks wait for).
    """
    return gr.JSON(value, visible="hidden")


def hidden_id() -> gr.Number:
    """Per-browser integer id (or None) that lives in the page but is not shown."""
    return gr.Number(None, precision=0, visible="hidden")


def user_errors(fn: Callable) -> Callable:
    """Show UserError (bad input, missing files) as a readable error toast instead of a crash."""
    if inspect.isgeneratorfunction(fn):  # Gradio streams a handler only if it is itself a generator function
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except UserError as e:
                raise gr.Error(str(e), duration=None) from None
        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise gr.Error(str(e), duration=None) from None
    return wrapper


def as_int(value) -> int | None:
    """Dropdown value -> int id (or None)."""
    if value in (None, ""):
        return None
    return int(value)


@dataclass
class JobFollower:
    """A progress panel that follows the newest job of some kinds; `done` changes when it ends."""
    kinds: tuple[str, ...]
    job: gr.Number | None = None
    panel: gr.HTML | None = None
    done: gr.JSON | None = None
    live: Callable | None = None      # fn(job_id) -> values for live_outputs, called each tick while active
    live_outputs: list = field(default_factory=list)

    def render(self) -> "JobFollower":
        """Create the components at the current place in the layout (panel id: job-<first kind>)."""
        self.job = hidden_id()
        self.done = hidden_value(None)
        self.panel = gr.HTML(job_html(None), elem_classes=["job-panel"], elem_id=f"job-{self.kinds[0]}")
        return self


@dataclass
class Page:
    """What every tab can reach: the studio and the global pickers."""
    studio: Studio
    model: gr.Dropdown | None = None
    grouping: gr.Dropdown | None = None
    device: gr.Radio | None = None
    followers: list[JobFollower] = field(default_factory=list)
    loaders: list[tuple] = field(default_factory=list)  # (fn, inputs, outputs) run when a browser opens the page

    def follower(self, *kinds: str) -> JobFollower:
        """A job panel for these kinds, ticked by the page's timer."""
        f = JobFollower(tuple(kinds)).render()
        self.followers.append(f)
        return f

    @property
    def db(self):
        return self.studio.db

    @property
    def settings(self):
        return self.studio.settings


def model_choices(db) -> list[tuple[str, int]]:
    """(label, id) of the registered models."""
    return [(f"{m['name']} · {m['architecture']} · pool {m['pool']}", m["id"]) for m in list_models(db)]


def header_models(db, model_id) -> gr.Dropdown:
    """The header's model picker with fresh labels (pool sizes), keeping the picked model."""
    return gr.Dropdown(choices=model_choices(db), value=as_int(model_id))


def job_html(job) -> str:
    """Progress bar + state + message of a job (or a quiet placeholder)."""
    if job is None:
        return "<div class='job-empty'>No job yet.</div>"
    color = STATE_COLORS.get(job.state, "#64748b")
    pct = 100.0 * (job.progress or 0.0)
    msg = html.escape(job.message or "")
    return (f"<div class='job-card' data-state='{job.state}' data-job='{job.id}'>"
            f"<div class='job-head'><span class='job-pill' style='background:{color}'>{job.state}</span>"
            f"<span class='job-title'>#{job.id} {html.escape(job.title)}</span>"
            f"<span class='job-pct'>{pct:.0f}%</span></div>"
            f"<div class='job-bar'><div style='width:{pct:.1f}%;background:{color}'></div></div>"
            f"<div class='job-msg'>{msg}</div></div>")


def latest_job(db, kinds) -> int | None:
    """Newest job of these kinds (active ones first)."""
    return newest_job([j for k in kinds for j in jobs_service.list_jobs(db, kind=k, limit=5)], kinds)


def newest_job(views, kinds) -> int | None:
    """The id of the newest of `views` of these kinds, active ones first; None when there is none."""
    mine = [v for v in views if v.kind in kinds]
    active = [v for v in mine if v.state not in TERMINAL]
    return max(active or mine, key=lambda v: v.id).id if mine else None


THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange", neutral_hue="slate",
                       # local font stacks only: the studio must not fetch fonts from the internet
                       font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])

CSS = """
.gradio-container {max-width: 1440px !important; width: 100% !important; margin: auto;}
/* every tab as wide as the page: a tab whose content is narrow (an empty grid) must not shrink the page */
.gradio-container main, .gradio-container .tabs, .gradio-container .tabitem {width: 100%;}
/* gallery captions wrap instead of being cut ("0-4 1.00 NP" on a narrow thumbnail) */
#pool-gallery .caption-label, #set-members .caption-label {white-space: normal; overflow: visible;
    text-overflow: clip; line-height: 1.15; font-size: 0.72rem;}
#studio-header {padding: 6px 4px 2px 4px;}
#studio-header h1 {font-size: 1.55rem; margin: 0;}
#studio-header p {margin: 2px 0 0 0; color: var(--body-text-color-subdued);}
.job-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
           background: var(--background-fill-secondary);}
.job-head {display: flex; gap: 10px; align-items: center; font-size: 0.92rem;}
.job-title {flex: 1; font-weight: 600;}
.job-pill {color: white; border-radius: 999px; padding: 1px 10px; font-size: 0.78rem; text-transform: uppercase;}
.job-bar {height: 8px; border-radius: 6px; background: var(--border-color-primary); margin: 8px 0 6px 0;
          overflow: hidden;}
.job-bar > div {height: 100%; transition: width 0.6s;}
.job-msg {font-size: 0.85rem; color: var(--body-text-color-subdued); font-family: ui-monospace, monospace;}
.job-empty {font-size: 0.85rem; color: var(--body-text-color-subdued); padding: 6px 2px;}
.sum-ok {color: #047857; font-weight: 600;} .sum-bad {color: #be123c; font-weight: 600;}
.kpi {display: flex; gap: 12px; flex-wrap: wrap;}
.kpi div {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px 14px; min-width: 120px;}
.kpi b {display: block; font-size: 1.25rem;} .kpi span {font-size: 0.8rem; color: var(--body-text-color-subdued);}
.card-md table {font-size: 0.88rem; width: 100%;}
.card-md thead {display: none;}
.card-md td:first-child {white-space: nowrap; font-weight: 600; width: 1%; padding-right: 14px;}
.pixelated img {image-rendering: pixelated;}
"""


def kpis(items: list[tuple[str, str]]) -> str:
    """A row of small number cards."""
    return "<div class='kpi'>" + "".join(f"<div><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>"
                                         for k, v in items) + "</div>"
