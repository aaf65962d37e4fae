"""Guide tab: scrub ω over a fixed-seed grid (cached), ω-grid job, curves vs ω, (ω, budget) heat map, find ω."""
from __future__ import annotations

import gradio as gr

from ..services import attributes, guide
from ..services.evaluate import metric_name
from . import plots
from .common import Page, as_int, user_errors
from .target_tab import MAX_GROUPS


def settings_from(preview_steps, preview_count, steps, n, skip, shared) -> guide.GuideSettings:
    """GuideSettings from the accordion's inputs."""
    return guide.GuideSettings(int(preview_steps), int(preview_count), int(steps), int(n), int(skip or 0),
                               bool(shared))


def build(page: Page) -> None:
    """Lay out the tab and wire its events."""
    db, settings = page.db, page.settings
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            # custom values allowed: API clients pass checkpoint ids this session never listed
            ckpt = gr.Dropdown([], label="Auxiliary checkpoint (training budget)", elem_id="guide-ckpt",
                               allow_custom_value=True)
            omega = gr.Slider(guide.OMEGA_MIN, guide.OMEGA_MAX, 0.0, step=guide.OMEGA_STEP, label="ω (guidance)",
                              info="0 = base model, −1 = auxiliary model, > 0 steers away from S",
                              elem_id="omega", buttons=["reset"])
            skip = gr.Slider(0, 16, 0, step=1, label="Guidance interval: leave the first k steps unguided",
                             elem_id="guide-skip")
            with gr.Accordion("Sampling and measurement", open=False):
                with gr.Row():
                    p_steps = gr.Number(12, label="Preview steps", precision=0, elem_id="guide-psteps")
                    p_count = gr.Number(64, label="Preview seeds", precision=0, elem_id="guide-pcount")
                with gr.Row():
                    m_steps = gr.Number(18, label="Measurement steps", precision=0, elem_id="guide-msteps")
                    m_n = gr.Number(256, label="Samples per ω", precision=0, elem_id="guide-n")
                shared = gr.Checkbox(False, label="Shared encoder (aux fine-tuned decoder-only)", elem_id="guide-shared")
            all_budgets = gr.Checkbox(True, label="Measure every budget (heat map)", elem_id="guide-all")
            sweep_btn = gr.Button("Precompute ω grid", variant="primary", elem_id="guide-sweep")
            gr.Markdown("#### Find ω for my target")
            with gr.Row():
                f_group = gr.Dropdown([], label="Group", elem_id="find-group")
                f_target = gr.Number(70, label="Target %", minimum=0, maximum=100, elem_id="find-target")
            find_btn = gr.Button("Find ω", elem_id="find-btn")
            find_md = gr.Markdown(elem_id="find-result")
            follow = page.follower("sweep", "find_omega")
        with gr.Column(scale=2):
            grid = gr.Image(label="Fixed seeds at this ω (same noise as ω = 0)", height=430, interactive=False,
                            elem_id="guide-grid", elem_classes=["pixelated"], buttons=["download"])
            caption = gr.Markdown(elem_id="guide-caption")
            with gr.Row():
                frac_plot = gr.Plot(show_label=False, elem_id="plot-fraction")
                fd_plot = gr.Plot(show_label=False, elem_id="plot-fd")
            heat = gr.Plot(show_label=False, elem_id="plot-heatmap")
    gs_inputs = [p_steps, p_count, m_steps, m_n, skip, shared]

    def refresh(model_id, grouping_id):
        choices = guide.run_checkpoints(db, as_int(model_id))
        groups = list(attributes.get_grouping(db, as_int(grouping_id))["groups"]) if as_int(grouping_id) else []
        return (gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None),
                gr.Dropdown(choices=groups, value=groups[-1] if groups else None))

    def scrub(ck, w, device, *gs_vals):
        """Fast path of an omega change: the exact cached grid, or the nearest cached one while it renders."""
        if as_int(ck) is None:
            return None, "Finish a fine-tune (Fine-tune tab) to guide with its checkpoints."
        gs = settings_from(*gs_vals)
        near = guide.nearest_cached(db, settings, as_int(ck), w, gs)
        if near is None:
            return gr.skip(), f"rendering ω = **{float(w):+.2f}**…"
        if abs(near["omega"] - float(w)) < 1e-9:
            return near["grid"], f"ω = **{float(w):+.2f}** · cached"
        return near["grid"], f"showing cached ω = {near['omega']:+.2f} while ω = **{float(w):+.2f}** renders…"

    @user_errors
    def render_exact(ck, w, device, *gs_vals):
        """Slow path: render an uncached omega (a no-op when the fast path found it)."""
        if as_int(ck) is None:
            return gr.skip(), gr.skip()
        gs = settings_from(*gs_vals)
        near = guide.nearest_cached(db, settings, as_int(ck), w, gs)
        if near is not None and abs(near["omega"] - float(w)) < 1e-9:
            return gr.skip(), gr.skip()
        out = guide.preview(db, settings, as_int(ck), w, gs, device)
        return out["grid"], f"ω = **{float(w):+.2f}** · rendered now in {1000 * out['seconds']:.0f} ms"

    def figures(ck, grouping_id, w, groups, *rest):
        gs = settings_from(*rest[:6])
        values = rest[6:]
        ckid, gid = as_int(ck), as_int(grouping_id)
        if ckid is None or gid is None:
            note = "pick a checkpoint and a grouping"
            return (plots.empty("Group fraction vs ω", note), plots.empty("Distance vs ω", note),
                    plots.empty("Fraction over (ω, budget)", note))
        g = attributes.get_grouping(db, gid)
        tgt = {k: float(values[i]) / 100 for i, k in enumerate(groups)} if groups == list(g["groups"]) else None
        c = guide.curves(db, ckid, gid, gs)
        metric = metric_name(g["classifier"])
        focus = list(g["groups"])[-1]
        h = guide.heatmap(db, ckid, gid, focus, gs)
        return (plots.fraction_vs_omega(c, tgt, float(w)), plots.fd_vs_omega(c, metric, float(w)),
                plots.heatmap(h, focus, tgt.get(focus) if tgt else None, metric))

    @user_errors
    def do_sweep(ck, grouping_id, every_budget, device, *gs_vals):
        if as_int(ck) is None or as_int(grouping_id) is None:
            raise gr.Error("Pick a checkpoint and a grouping first.")
        job = guide.submit_sweep(db, as_int(ck), as_int(grouping_id), settings_from(*gs_vals), bool(every_budget),
                                 device=device)
        gr.Info(f"ω grid queued as job #{job}.")
        return job

    @user_errors
    def do_find(ck, grouping_id, grp, tgt, device, *gs_vals):
        if as_int(ck) is None or as_int(grouping_id) is None or not grp:
            raise gr.Error("Pick a checkpoint, a grouping and a group first.")
        return guide.submit_find_omega(db, as_int(ck), as_int(grouping_id), grp, float(tgt or 0) / 100,
                                       settings_from(*gs_vals), device=device)

    def after_job(job_id, w):
        from ..services import jobs
        if job_id is None:
            return gr.skip(), gr.skip()
        j = jobs.get(db, job_id)
        if j.kind == "find_omega" and j.state == "succeeded":
            return f"**Found:** {j.message}", gr.Slider(value=min(max(round(j.result['omega'] / guide.OMEGA_STEP) *
                                                              guide.OMEGA_STEP, guide.OMEGA_MIN), guide.OMEGA_MAX))
        if j.kind == "find_omega":
            return f"**Search failed:** {j.message}", gr.skip()
        return gr.skip(), gr.skip()

    def skip_limit(steps_):
        return gr.Slider(maximum=max(int(steps_ or 2) - 1, 1))

    fig_inputs = [ckpt, page.grouping, omega, page.target_groups, *gs_inputs, *page.target_sliders[:MAX_GROUPS]]
    fig_outputs = [frac_plot, fd_plot, heat]
    scrub_inputs = [ckpt, omega, page.device, *gs_inputs]
    omega.change(scrub, scrub_inputs, [grid, caption], trigger_mode="always_last", show_progress="hidden").then(
        render_exact, scrub_inputs, [grid, caption], show_progress="hidden", concurrency_id="render",
        concurrency_limit=1, trigger_mode="always_last")
    omega.release(figures, fig_inputs, fig_outputs, show_progress="hidden")
    for comp in (ckpt, skip, shared, p_steps, p_count):
        comp.change(scrub, scrub_inputs, [grid, caption], show_progress="hidden").then(
            render_exact, scrub_inputs, [grid, caption], show_progress="minimal", concurrency_id="render",
            concurrency_limit=1)
    ckpt.change(figures, fig_inputs, fig_outputs)
    m_steps.change(skip_limit, p_steps, skip)
    sweep_btn.click(do_sweep, [ckpt, page.grouping, all_budgets, page.device, *gs_inputs], follow.job)
    find_btn.click(do_find, [ckpt, page.grouping, f_group, f_target, page.device, *gs_inputs], follow.job)
    follow.done.change(after_job, [follow.job, omega], [find_md, omega]).then(figures, fig_inputs, fig_outputs)
    for ev in (page.model.change, page.grouping.change):
        ev(refresh, [page.model, page.grouping], [ckpt, f_group])
    page.loaders.append((refresh, [page.model, page.grouping], [ckpt, f_group]))
    page.loaders.append((figures, fig_inputs, fig_outputs))
    page.guide_checkpoint, page.guide_omega, page.guide_settings = ckpt, omega, gs_inputs
