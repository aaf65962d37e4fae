"""Guide panel: score-space SIMS and the weight-space merge side by side at the same ω on the same seeds,
with a guide of the user's choice — both grids, the fraction curves and the per-group distance curves of
both modes, each with its own find-ω (the two ω scales differ). Logic lives in services.merge_guide."""
from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go

from pipelines.errors import UserError

from ..services import attributes, guide, guide_model, merge_guide
from ..services.evaluate import metric_name
from . import plots
from .common import Page, as_int, hidden_id, user_errors
from .guide_tab import Follower, render_request

DASH = {"score": "solid", "merged": "dash"}
SHORT = {"score": "score space", "merged": "merged"}


def _sizes(curves: dict) -> str:
    """n per ω of a mode's fraction curve ('256', '240–256', or '—')."""
    per_omega: dict = {}
    for pts in curves["count"].values():
        for w, k in pts.items():
            per_omega[w] = per_omega.get(w, 0) + k
    if not per_omega:
        return "—"
    lo, hi = min(per_omega.values()), max(per_omega.values())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def fraction_figure(by_mode: dict, group: str, target: float | None, omega: float | None) -> go.Figure:
    """The group's fraction vs ω in both modes (Wilson 95% bands), with the target line."""
    title = f"{group} fraction vs ω: score space (solid) vs merged (dashed)"
    if not any(c["fraction"].get(group) for c in by_mode.values()):
        return plots.empty(title, "nothing measured: press 'Measure ω grid in both modes'")
    fig = go.Figure()
    fig.update_layout(title=dict(text=title + " · n per ω: " + ", ".join(
        f"{SHORT[m]} {_sizes(c)}" for m, c in by_mode.items()), x=0, font=dict(size=13)), **plots.LAYOUT)
    for i, (mode, c) in enumerate(by_mode.items()):
        pts = c["fraction"].get(group) or {}
        ws = sorted(pts)
        if not ws:
            continue
        color = plots.PALETTE[i]
        fig.add_scatter(x=ws + ws[::-1], y=[pts[w][2] for w in ws] + [pts[w][1] for w in ws[::-1]], fill="toself", mode="lines",
                        line=dict(width=0), fillcolor=color, opacity=0.15, hoverinfo="skip", showlegend=False)
        fig.add_scatter(x=ws, y=[pts[w][0] for w in ws], mode="lines+markers", name=merge_guide.MODE_LABELS[mode],
                        line=dict(color=color, dash=DASH[mode]))
    if target is not None:
        fig.add_hline(y=target, line_dash="dot", line_color="#e11d48", annotation_text=f"target {100 * target:.0f}%")
    if omega is not None:
        fig.add_vline(x=float(omega), line_dash="dot", line_color="#64748b")
    fig.update_xaxes(title="ω (each mode on its own scale)")
    fig.update_yaxes(title=f"fraction of {group} (95% Wilson)", tickformat=".0%")
    return fig


def fd_figure(by_mode: dict, metric: str, omega: float | None) -> go.Figure:
    """Per-group distance to that group's real images vs ω, both modes (same colour per group)."""
    title = f"{metric} per group vs ω: score space (solid) vs merged (dashed)"
    groups = sorted({g for c in by_mode.values() for g in c["fd_group"]})
    if not groups:
        return plots.empty(title, "no per-group distances stored (measure the ω grid; needs real reference images)")
    fig = go.Figure()
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=13)), **plots.LAYOUT)
    for j, g in enumerate(groups):
        for mode, c in by_mode.items():
            pts = c["fd_group"].get(g) or {}
            ws = sorted(pts)
            if ws:
                n = c["count"].get(g, {})
                fig.add_scatter(x=ws, y=[pts[w] for w in ws], mode="lines+markers", name=f"{g} · {SHORT[mode]}",
                                line=dict(color=plots.PALETTE[j], dash=DASH[mode]),
                                customdata=[n.get(w) for w in ws],
                                hovertemplate="ω %{x}: %{y:.3g} from %{customdata} samples<extra></extra>")
    if omega is not None:
        fig.add_vline(x=float(omega), line_dash="dot", line_color="#64748b")
    fig.update_xaxes(title="ω (each mode on its own scale)")
    values = [v for c in by_mode.values() for pts in c["fd_group"].values() for v in pts.values() if v > 0]
    if values and max(values) > 20 * min(values):  # a broken merge reads 100x the score space: log keeps both readable
        fig.update_yaxes(title=f"{metric} (log; lower = closer to real)", type="log")
    else:
        fig.update_yaxes(title=f"{metric} (lower = closer to real)", rangemode="tozero")
    return fig


def found_md(by_mode: dict) -> str:
    """The latest find-ω answer of each mode (or how to get one)."""
    rows = []
    for mode, j in by_mode.items():
        if j is None:
            text = "not searched yet"
        elif j.state != "succeeded":
            text = f"search failed: {j.message}"
        else:
            text = j.message
        rows.append(f"| {merge_guide.MODE_LABELS[mode]} | {text} |")
    return ("| find ω | answer (same seeds and settings in both modes) |\n|---|---|\n" + "\n".join(rows)
            + "\n\nThe two ω scales differ: compare the fractions and distances the two answers reach, not their ω.")


class ComparePanel:
    """Components and handlers of the panel."""

    def __init__(self, page: Page):
        self.page, self.db, self.settings = page, page.db, page.settings
        with gr.Accordion("Score space vs weight-space merge (same ω, same seeds, any guide)", open=False) as acc:
            gr.Markdown("Score space: D = (1+ω)·D_base − ω·D_guide, two networks per step. Merged: one network with "
                        "θ = (1+ω)·θ_base − ω·θ_guide (the model `Export → weight-space merge` writes), the base's "
                        "cost. A network is not linear in its weights, so the ω scales differ: each has its own "
                        "curves and its own find ω. Both use the Guide's seeds, steps and samples per ω.")
            with gr.Row():
                self.guide = gr.Dropdown([], label="Guide (both modes)", elem_id="compare-guide",
                                         allow_custom_value=True)
                self.group = gr.Dropdown([], label="Group", elem_id="compare-group")
                self.target = gr.Number(70, label="Target %", minimum=0, maximum=100, elem_id="compare-target")
            with gr.Row():
                self.sweep_btn = gr.Button("Measure ω grid in both modes", variant="primary", elem_id="compare-sweep")
                self.find_score = gr.Button("Find ω: score space", elem_id="compare-find-score")
                self.find_merged = gr.Button("Find ω: merged", elem_id="compare-find-merged")
            self.follow = page.follower("sweep", "find_omega")
            with gr.Row():
                self.grid_score = gr.Image(label="score space at this ω", height=300, interactive=False, format="png",
                                           elem_id="compare-grid-score", elem_classes=["pixelated"])
                self.grid_merged = gr.Image(label="merged at this ω", height=300, interactive=False, format="png",
                                            elem_id="compare-grid-merged", elem_classes=["pixelated"])
            self.caption = gr.Markdown(elem_id="compare-caption")
            with gr.Row():
                self.frac_plot = gr.Plot(show_label=False, elem_id="plot-compare-fraction")
                self.fd_plot = gr.Plot(show_label=False, elem_id="plot-compare-fd")
            self.found = gr.Markdown(elem_id="compare-found")
        self.acc, self.opened = acc, hidden_id()  # 1 while open; not gr.State: it holds a heartbeat open
        # a ω move answers in the Guide's scrub request, off the queue (an open panel renders under the
        # device slot, which already limits concurrent renders)
        self.omega_req = hidden_id()  # a new number at each ω move while the panel is open
        self.follower = Follower(self.on_omega, (self.opened,), (self.omega_req,))

    # -- handlers ------------------------------------------------------------------------------------
    def choices(self, ck, grouping_id):
        """Guides of the checkpoint (the auxiliary first) and the grouping's groups (the last one picked)."""
        opts, groups = [], []
        if as_int(ck) is not None:
            try:
                opts = guide_model.guide_choices(self.db, self.settings, as_int(ck))
            except UserError:
                opts = []
        if as_int(grouping_id) is not None:
            groups = list(attributes.get_grouping(self.db, as_int(grouping_id))["groups"])
        return (gr.Dropdown(choices=opts, value=guide_model.AUX if opts else None),
                gr.Dropdown(choices=groups, value=groups[-1] if groups else None))

    def _gs(self, gs_vals):
        from .guide_tab import settings_from
        return settings_from(*gs_vals)

    @user_errors
    def grids(self, opened, ck, w, choice, device, *gs_vals):
        """Both modes' grids at ω with the guide (rendered only while the panel is open)."""
        if not opened or as_int(ck) is None:
            return gr.skip(), gr.skip(), gr.skip()
        gs, out, notes = self._gs(gs_vals), [], []
        for mode in merge_guide.MODES:
            try:
                r = merge_guide.preview(self.db, self.settings, as_int(ck), w, gs, mode, choice, device)
                out.append(r["grid"])
                notes.append(f"{SHORT[mode]}: {'cached' if r['cached'] else 'rendered now'}")
            except UserError as e:
                out.append(None)
                notes.append(f"{SHORT[mode]}: {e}")
        return (*out, f"ω = **{guide.fmt_omega(w)}** · the Guide's {gs.preview_count} preview seeds, "
                      f"{gs.preview_steps} steps · " + " · ".join(notes))

    def figures(self, opened, ck, grouping_id, w, choice, group, target, *gs_vals):
        """Fraction and per-group distance curves of both modes, and each mode's latest find-ω answer."""
        if not opened:  # a closed panel costs nothing at each ω move
            return gr.skip(), gr.skip(), gr.skip()
        ckid, gid = as_int(ck), as_int(grouping_id)
        if ckid is None or gid is None:
            note = "pick a checkpoint and a grouping"
            return plots.empty("Fraction vs ω, both modes", note), plots.empty("Distance vs ω, both modes", note), ""
        try:
            gd = guide_model.resolve_guide(self.db, self.settings, ckid, choice)
        except UserError as e:
            return (plots.empty("Fraction vs ω, both modes", "guide refused"),
                    plots.empty("Distance vs ω, both modes", "guide refused"), f"**Guide refused:** {e}")
        gs = self._gs(gs_vals)
        keys = {m: guide_model.measurement_key(gs, gd, m) for m in merge_guide.MODES}
        by_mode = {m: merge_guide.curves(self.db, ckid, gid, k) for m, k in keys.items()}
        g = attributes.get_grouping(self.db, gid)
        group = group if group in g["groups"] else list(g["groups"])[-1]
        tgt = float(target) / 100 if target not in (None, "") else None
        found = {m: merge_guide.latest_find(self.db, ckid, k, group) for m, k in keys.items()}
        return (fraction_figure(by_mode, group, tgt, float(w or 0)),
                fd_figure(by_mode, metric_name(g["classifier"]), float(w or 0)), found_md(found))

    def on_omega(self, exact, ck, w, device, gs_vals, opened):
        """Its share of the Guide's scrub request (a `Follower`): nothing while the panel is closed; when open,
        a request that redraws both grids and the curves at the new ω in events of their own (the grids may
        render: the main grid must not wait for them)."""
        return (render_request() if opened else gr.skip(),)

    @user_errors
    def do_sweep(self, ck, grouping_id, choice, device, *gs_vals):
        """Queue the ω grid of both modes on the same seeds."""
        if as_int(ck) is None or as_int(grouping_id) is None:
            raise gr.Error("Pick a checkpoint and a grouping first.")
        ids = merge_guide.submit_compare_sweeps(self.db, self.settings, as_int(ck), as_int(grouping_id),
                                                self._gs(gs_vals), choice, device=device)
        gr.Info(f"ω grid queued in both modes: jobs #{ids['score']} (score space) and #{ids['merged']} (merged).")
        return ids["merged"]

    def _find(self, mode, ck, grouping_id, choice, group, target, device, gs_vals):
        if as_int(ck) is None or as_int(grouping_id) is None or not group:
            raise gr.Error("Pick a checkpoint, a grouping and a group first.")
        return merge_guide.submit_find(self.db, self.settings, as_int(ck), as_int(grouping_id), group,
                                       float(target or 0) / 100, self._gs(gs_vals), mode, choice, device=device)

    @user_errors
    def do_find_score(self, ck, grouping_id, choice, group, target, device, *gs_vals):
        """Queue find-ω in score space."""
        return self._find("score", ck, grouping_id, choice, group, target, device, gs_vals)

    @user_errors
    def do_find_merged(self, ck, grouping_id, choice, group, target, device, *gs_vals):
        """Queue find-ω for the merge."""
        return self._find("merged", ck, grouping_id, choice, group, target, device, gs_vals)

    # -- events --------------------------------------------------------------------------------------
    def wire(self) -> None:
        page = self.page
        ck, w, gs_inputs = page.guide_checkpoint, page.guide_omega, page.guide_settings
        self.acc.expand(lambda: 1, None, self.opened)
        self.acc.collapse(lambda: 0, None, self.opened)
        grid_in = [self.opened, ck, w, self.guide, page.device, *gs_inputs]
        grid_out = [self.grid_score, self.grid_merged, self.caption]
        fig_in = [self.opened, ck, page.grouping, w, self.guide, self.group, self.target, *gs_inputs]
        fig_out = [self.frac_plot, self.fd_plot, self.found]
        for ev in (ck.change, page.grouping.change):
            ev(self.choices, [ck, page.grouping], [self.guide, self.group], show_progress="hidden")
        for ev in (self.opened.change, self.guide.change):
            ev(self.grids, grid_in, grid_out, show_progress="hidden", trigger_mode="always_last",
               concurrency_id="compare-render", concurrency_limit=1)
        # a ω move while open (see `on_omega`): off the queue, as the renders wait for the device slot, which
        # already limits concurrent renders
        self.omega_req.change(self.grids, grid_in, grid_out, show_progress="hidden", trigger_mode="always_last",
                              queue=False)
        self.omega_req.change(self.figures, fig_in, fig_out, show_progress="hidden", trigger_mode="always_last",
                              queue=False)
        for ev in (self.opened.change, self.guide.change, self.group.change, self.target.submit,
                   self.follow.done.change):
            ev(self.figures, fig_in, fig_out, show_progress="hidden", trigger_mode="always_last")
        dev = [page.device, *gs_inputs]
        self.sweep_btn.click(self.do_sweep, [ck, page.grouping, self.guide, *dev], self.follow.job)
        find_in = [ck, page.grouping, self.guide, self.group, self.target, *dev]
        self.find_score.click(self.do_find_score, find_in, self.follow.job)
        self.find_merged.click(self.do_find_merged, find_in, self.follow.job)
        page.loaders.append((self.choices, [ck, page.grouping], [self.guide, self.group]))
