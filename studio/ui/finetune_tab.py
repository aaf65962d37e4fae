"""Fine-tune tab: start the auxiliary fine-tune on S, follow loss / images/s / ETA, cancel, resume."""
from __future__ import annotations

import gradio as gr

from ..services import finetune, jobs, sets
from . import plots
from .common import Page, as_int, kpis, user_errors


def build(page: Page) -> None:
    """Lay out the tab and wire its events."""
    db, settings = page.db, page.settings
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            set_pick = gr.Dropdown([], label="Synthetic set S", elem_id="ft-set")
            with gr.Row():
                budget = gr.Number(20.0, label="Budget (kimg)", minimum=0.001, elem_id="ft-budget")
                every = gr.Number(5.0, label="Checkpoint every (kimg)", minimum=0.001, elem_id="ft-every")
            with gr.Row():
                lr = gr.Number(1e-3, label="Learning rate", elem_id="ft-lr")
                batch = gr.Number(64, label="Batch", precision=0, minimum=1, elem_id="ft-batch")
            decoder_only = gr.Checkbox(False, label="Decoder only (enables the shared-encoder sampler)",
                                       elem_id="ft-decoder")
            with gr.Row():
                device = gr.Radio(["cpu", "cuda", "torchrun"], value="cpu", label="Device", elem_id="ft-device")
                gpus = gr.Number(2, label="GPUs (torchrun)", precision=0, minimum=1, elem_id="ft-gpus")
            seed = gr.Number(0, label="Seed", precision=0, elem_id="ft-seed")
            gr.Markdown("Other settings (lr ramp-up, EMA, loss) follow the base model's recorded recipe.")
            start = gr.Button("Start fine-tune", variant="primary", elem_id="ft-start")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
                resume = gr.Button("Resume from last checkpoint", elem_id="ft-resume")
            follow = page.follower("finetune")
        with gr.Column(scale=2):
            stats = gr.HTML(elem_id="ft-stats")
            curve = gr.Plot(show_label=False, elem_id="ft-loss")
            runs = gr.Dataframe(headers=["job", "state", "S", "budget kimg", "checkpoints", "title"],
                                label="Fine-tune runs", interactive=False, elem_id="ft-runs")
            ckpts = gr.Markdown(elem_id="ft-checkpoints")

    def live(job_id):
        if job_id is None:
            return kpis([("kimg seen", "—"), ("loss", "—"), ("images/s", "—"), ("ETA", "—")]), \
                plots.loss_curve([]), gr.skip(), ""
        j = jobs.get(db, job_id)
        r = j.result or {}
        eta = r.get("eta_s")
        total = j.params.get("config", {}).get("total_kimg", 0)
        items = [("kimg seen", f"{r.get('kimg', 0):g} / {total:g}"),
                 ("loss", f"{r['loss']:.4f}" if r.get("loss") is not None else "—"),
                 ("images/s", f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "—"),
                 ("ETA", f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta is not None and j.active else "—"),
                 ("state", j.state)]
        cks = finetune.checkpoints(db, job_id)
        ck_md = ("**Budget checkpoints:** " + ", ".join(f"{c['kimg']:g} kimg" for c in cks)) if cks else \
            "No checkpoint yet."
        return kpis(items), plots.loss_curve(finetune.loss_curve(settings, db, job_id)), gr.skip(), ck_md

    follow.live, follow.live_outputs = live, [stats, curve, runs, ckpts]

    def refresh(model_id, current=None):
        """Sets and runs of the model; the picked set stays picked while it is still a ready set."""
        mid = as_int(model_id)
        ready = [s for s in sets.list_sets(db, mid) if s["state"] == "ready"] if mid is not None else []
        choices = [(f"S #{s['id']} · {s['name']} · {s['n_s']} samples", s["id"]) for s in ready]
        rows = [[r["id"], r["state"], r["set_id"], r["total_kimg"], r["checkpoints"], r["title"]]
                for r in finetune.list_runs(db, mid)]
        if not choices:
            return gr.Dropdown(choices=[], value=None), rows, gr.skip(), gr.skip()
        ids = [c[1] for c in choices]
        if as_int(current) in ids:
            return gr.Dropdown(choices=choices, value=as_int(current)), rows, gr.skip(), gr.skip()
        return (gr.Dropdown(choices=choices, value=choices[0][1]), rows, *prefill(choices[0][1]))

    def form_from_job(job_id):
        """A page opened during a fine-tune shows that job's set and settings (Start again would repeat it)."""
        if job_id is None:
            return (gr.skip(),) * 9
        j = jobs.get(db, int(job_id))
        if j.kind != "finetune" or j.state not in ("queued", "starting", "running", "interrupted"):
            return (gr.skip(),) * 9
        c, gpus_ = j.params["config"], int(j.params.get("gpus", 1))
        return (gr.Dropdown(value=j.params["set_id"]), c["total_kimg"], c["checkpoint_kimg"], c["lr"],
                c["batch_size"], bool(c.get("decoder_only")), "torchrun" if gpus_ > 1 else c.get("device", "cpu"),
                max(gpus_, 2) if gpus_ > 1 else gr.skip(), c.get("seed", 0))

    @user_errors
    def do_start(set_id, b, e, lr_, bs, dec, dev, g, sd):
        if as_int(set_id) is None:
            raise gr.Error("Pick a synthetic set (build one in the Build set tab).")
        job, new = finetune.submit_new(db, as_int(set_id), b, e, lr_, int(bs or 0), dec, dev, int(g or 1),
                                       int(sd or 0))
        gr.Info(f"Fine-tune queued as job #{job}." if new else
                f"This fine-tune is already queued or running as job #{job}; showing it.")
        return job

    @user_errors
    def do_cancel(job_id):
        if job_id is None:
            raise gr.Error("No fine-tune to cancel.")
        gr.Info(jobs.cancel(db, job_id))

    @user_errors
    def do_resume(job_id):
        if job_id is None:
            raise gr.Error("No fine-tune to resume.")
        gr.Info(jobs.resume(db, job_id))
        return job_id

    def prefill(set_id):
        if as_int(set_id) is None:
            return gr.skip(), gr.skip()
        d = finetune.defaults_for(db, sets.get_set(db, as_int(set_id))["model_id"])
        return d["lr"], d["batch_size"]

    set_pick.input(prefill, set_pick, [lr, batch])  # a user's pick; a program's (reload, refresh) keeps the form
    start.click(do_start, [set_pick, budget, every, lr, batch, decoder_only, device, gpus, seed], follow.job,
                concurrency_limit=1, concurrency_id="ft-start")
    cancel.click(do_cancel, follow.job, None)
    resume.click(do_resume, follow.job, follow.job)
    follow.job.change(live, follow.job, [stats, curve, runs, ckpts])
    refresh_out = [set_pick, runs, lr, batch]
    follow.done.change(live, follow.job, [stats, curve, runs, ckpts]).then(
        lambda m, cur: refresh(m, cur)[:2], [page.model, set_pick], [set_pick, runs])  # a run's end keeps its set
    page.model.change(refresh, page.model, refresh_out)
    form = [set_pick, budget, every, lr, batch, decoder_only, device, gpus, seed]
    page.loaders.append((refresh, [page.model], refresh_out))
    page.loaders.append((form_from_job, [follow.job], form))
