"""Jobs tab: every job with its state and progress; details with transitions, log tail and traceback."""
from __future__ import annotations

import gradio as gr

from ..services import jobs
from .common import Page, job_html, user_errors


def rows(views) -> list[list]:
    """Rows of the jobs table for these jobs (jobs.list_jobs's views, newest first)."""
    return [[j.id, j.kind, j.state, f"{100 * j.progress:.0f}%", j.device or "—", j.title, j.message[:90],
             j.created_at, j.attempts] for j in views]


def table_rows(db) -> list[list]:
    """Rows of the jobs table (newest first)."""
    return rows(jobs.list_jobs(db))


def build(page: Page) -> gr.Dataframe:
    """Lay out the tab and wire its events; returns the table (ticked by the page timer)."""
    db = page.db
    table = gr.Dataframe(headers=["id", "kind", "state", "progress", "device", "title", "message", "created",
                                  "attempts"], label="Jobs (live)", interactive=False, elem_id="jobs-table",
                         max_height=360)
    with gr.Row(equal_height=True):
        job_id = gr.Number(None, label="Job id", precision=0, elem_id="jobs-id", scale=0, min_width=120)
        show = gr.Button("Show", elem_id="jobs-show", scale=0, min_width=90)
        cancel = gr.Button("Cancel", variant="stop", elem_id="jobs-cancel", scale=0, min_width=90)
        resume = gr.Button("Resume", elem_id="jobs-resume", scale=0, min_width=90)
    panel = gr.HTML(elem_id="jobs-panel")
    with gr.Row():
        events = gr.Dataframe(headers=["time", "state", "message"], label="Transitions", interactive=False,
                              elem_id="jobs-events")
        log = gr.Code(label="Log tail", language=None, lines=14, elem_id="jobs-log")
    tb = gr.Code(label="Traceback (failed jobs)", language="python", lines=8, visible=True, elem_id="jobs-tb")

    @user_errors
    def details(jid):
        if jid is None:
            raise gr.Error("Type a job id from the table.")
        j = jobs.get(db, int(jid))
        return job_html(j), [list(e) for e in jobs.events(db, j.id)], j.log_tail or "(no output yet)", j.traceback or ""

    @user_errors
    def do_cancel(jid):
        if jid is None:
            raise gr.Error("Type a job id first.")
        gr.Info(jobs.cancel(db, int(jid)))

    @user_errors
    def do_resume(jid):
        if jid is None:
            raise gr.Error("Type a job id first.")
        gr.Info(jobs.resume(db, int(jid)))

    def pick(rows, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return int(rows.iloc[row, 0]) if hasattr(rows, "iloc") else int(rows[row][0])

    outs = [panel, events, log, tb]
    show.click(details, job_id, outs)
    job_id.submit(details, job_id, outs)
    table.select(pick, table, job_id).then(details, job_id, outs)
    cancel.click(do_cancel, job_id, None).then(details, job_id, outs)
    resume.click(do_resume, job_id, None).then(details, job_id, outs)
    page.loaders.append((lambda: table_rows(db), [], [table]))
    return table
