"""Panels added to the Target and Guide tabs: fairness vs the target (fairness discrepancy (L2), KL, TV with
bootstrap intervals) and the Guide's guide-model picker (autoguidance). Logic lives in services."""
from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go

from pipelines.errors import UserError

from ..jobs.device_slot import SlotBusy
from ..services import attributes, fairness_view, guide, guide_model, sets
from . import plots
from .common import Page, as_int, hidden_id, user_errors
from .figure_cache import figure
from .guide_tab import Follower, render_request, settings_from


def _target(db, model_id, g: dict, groups, values) -> dict | None:
    """The Target tab's sliders when loaded for this grouping (summing to 100%), else the last S's plan."""
    if groups == list(g["groups"]) and abs(sum(float(v or 0) for v in values[:len(groups)]) - 100) < 0.5:
        return {k: float(values[i]) / 100 for i, k in enumerate(groups)}
    plan = sets.latest_plan(db, as_int(model_id), g["id"], list(g["groups"])) if as_int(model_id) else None
    return plan[0] if plan else None


def curve_figure(curve: dict, omega: float) -> go.Figure:
    """The target's fairness discrepancy (L2) vs ω with its bootstrap interval."""
    if not curve:
        return plots.empty("Fairness discrepancy (L2) vs ω", "no stored measurements: Precompute ω grid")
    ws = sorted(curve)
    vals = [curve[w]["metrics"][fairness_view.L2] for w in ws]
    fig = go.Figure()
    fig.update_layout(title=dict(text="Fairness discrepancy (L2) vs target, by ω", x=0, font=dict(size=14)),
                      **plots.LAYOUT)
    fig.add_scatter(x=ws, y=[v["value"] for v in vals], mode="lines+markers", name="‖p̂ − p*‖₂",
                    error_y=dict(type="data", symmetric=False, array=[v["ci"][1] - v["value"] for v in vals],
                                 arrayminus=[v["value"] - v["ci"][0] for v in vals]))
    fig.add_vline(x=float(omega), line_dash="dot", line_color="#64748b")
    n = sorted({curve[w]["n"] for w in ws})
    sizes = f"{n[0]}" if n[0] == n[-1] else f"{n[0]}–{n[-1]}"
    fig.update_layout(title_text=f"Fairness discrepancy (L2) vs target, by ω (n = {sizes} per ω, 95% bootstrap)")
    fig.update_xaxes(title="ω")
    fig.update_yaxes(title="‖p̂ − p*‖₂ (0 = on target)", rangemode="tozero")
    return fig


def build_target(page: Page) -> None:
    """Target tab: the base pool's fairness vs the target being set."""
    db = page.db
    md = gr.Markdown(elem_id="target-fairness")

    def show(model_id, grouping_id, groups, *values):
        mid, gid = as_int(model_id), as_int(grouping_id)
        if mid is None or gid is None or not groups:
            return ""
        g = attributes.get_grouping(db, gid)
        tgt = _target(db, mid, g, groups, values)
        if tgt is None:
            return "Set target shares summing to 100% to see the fairness discrepancy (L2), KL and TV."
        try:
            return fairness_view.report_md(fairness_view.base_vs_target(db, mid, g, tgt), "Base pool")
        except UserError as e:
            return f"**Fairness vs target:** {e}"

    ins = [page.model, page.grouping, page.target_groups, *page.target_sliders]
    for comp in [page.target_groups, *page.target_sliders]:
        comp.change(show, ins, md, show_progress="hidden", trigger_mode="always_last")
    page.loaders.append((show, ins, [md]))


class GuidePanels:
    """Guide tab: the target's discrepancy-vs-ω curve with the table at the current ω, and the guide picker
    with its grid. Laid out by the constructor; `follower` is its share of the Guide's scrub request,
    `wire()` connects the rest once the Guide's own events exist."""

    def __init__(self, page: Page):
        self.page, self.db, self.settings = page, page.db, page.settings
        with gr.Row():
            with gr.Column():
                self.fair_plot = gr.Plot(show_label=False, elem_id="plot-fairness")
                self.fair_md = gr.Markdown(elem_id="guide-fairness")
            with gr.Column():
                gr.Markdown("#### Guide model: D = (1 + ω)·D_base − ω·D_guide\nThe SIMS auxiliary by default; a "
                            "weaker version of the base (an earlier checkpoint) makes this autoguidance (Karras "
                            "et al. 2024).")
                self.pick = gr.Dropdown([], label="Guide model", elem_id="guide-model", allow_custom_value=True)
                self.grid = gr.Image(label="Fixed seeds at this ω with the picked guide", height=300,
                                     interactive=False, elem_id="guide-model-grid", elem_classes=["pixelated"],
                                     format="png")
                self.caption = gr.Markdown(elem_id="guide-model-caption")
                self.render_req = hidden_id()  # a new number each time another guide's grid must be rendered
        self.follower = Follower(self.after_main, (self.pick,), (self.grid, self.caption, self.render_req),
                                 after_render=True)
        self.curves_follower = Follower(self.fairness_with_curves, (self.pick,), (self.fair_plot, self.fair_md))

    def fairness(self, ck_id, grouping_id, omega, choice, model_id, groups, *rest):
        db, settings = self.db, self.settings
        gs, values = settings_from(*rest[:6]), rest[6:]
        ckid, gid = as_int(ck_id), as_int(grouping_id)
        if ckid is None or gid is None:
            return figure(plots.empty, "Fairness discrepancy (L2) vs ω", "pick a checkpoint and a grouping"), ""
        g = attributes.get_grouping(db, gid)
        tgt = _target(db, model_id, g, groups, values)
        if tgt is None:
            return figure(plots.empty, "Fairness discrepancy (L2) vs ω", "set a target (Target tab)"), ""
        try:
            gd = guide_model.resolve_guide(db, settings, ckid, choice)
        except UserError as e:
            return figure(plots.empty, "Fairness discrepancy (L2) vs ω", "guide refused"), f"**Guide refused:** {e}"
        curve = fairness_view.discrepancy_curve(db, ckid, g, guide_model.measurement_key(gs, gd), tgt)
        if not curve:
            who = "the SIMS auxiliary" if gd is None else gd["label"]
            return (figure(curve_figure, {}, float(omega or 0)),
                    f"No stored measurements with {who} at these settings yet.")
        near = min(curve, key=lambda v: abs(v - float(omega or 0)))
        return figure(curve_figure, curve, float(omega or 0)), fairness_view.report_md(
            curve[near], f"Measured at ω = {guide.fmt_omega(near)}")

    def fairness_with_curves(self, curves_values, choice):
        """`fairness` from the values of the Guide's curves inputs (checkpoint, grouping, ω, target groups,
        model, preview and measurement settings, target sliders) and the picked guide."""
        ck_id, grouping_id, omega, groups, model_id, *rest = curves_values
        return self.fairness(ck_id, grouping_id, omega, choice, model_id, groups, *rest)

    def choices(self, ck_id):
        if as_int(ck_id) is None:
            return gr.Dropdown(choices=[], value=None)
        try:
            opts = guide_model.guide_choices(self.db, self.settings, as_int(ck_id))
        except UserError:
            return gr.Dropdown(choices=[], value=None)
        return gr.Dropdown(choices=opts, value=guide_model.AUX)

    def label_of(self, ck_id, choice):
        return dict((v, k) for k, v in guide_model.guide_choices(self.db, self.settings, as_int(ck_id))).get(
            choice or guide_model.AUX, choice)

    @staticmethod
    def same_as_main(choice, omega) -> bool:
        """The SIMS auxiliary guides the main preview too (and at ω = 0 every guide gives the base alone)."""
        return (choice or guide_model.AUX) == guide_model.AUX or float(omega or 0) == 0.0

    @user_errors
    def render(self, ck_id, omega, choice, device, *gs_vals):
        """The picked guide's grid: from the cache, else rendered now (streamed) under the device's slot."""
        if as_int(ck_id) is None:
            yield None, "Pick an auxiliary checkpoint."
            return
        try:
            for kind, *rest in guide_model.preview_stream(self.db, self.settings, as_int(ck_id), omega,
                                                          settings_from(*gs_vals), choice, device):
                if kind == "waiting":
                    yield gr.skip(), f"waiting for {device} (" + (", ".join(f"job #{i}: {k}" for i, k, _ in rest[0])
                                                                  or "another render") + ")…"
                elif kind == "partial":
                    yield rest[0], f"rendering… {rest[1]} of {rest[2]} samples"
                else:
                    out = rest[0]
                    yield out["grid"], (f"ω = **{guide.fmt_omega(omega)}** · guide: {self.label_of(ck_id, choice)}"
                                        " · " + ("cached" if out["cached"] else
                                                 f"rendered now in {out['seconds']:.1f} s"))
        except SlotBusy as e:
            yield gr.skip(), f"not rendered: {e}"

    def after_main(self, shown, ck_id, omega, device, gs_vals, choice):
        """The picked guide's grid at the ω the main preview shows (`shown`: its exact cached grid, None while
        it has none). With the SIMS auxiliary that is the main grid itself, never rendered a second time (two
        renders of one grid would halve the speed of both). Another guide renders its own, after the main
        one: a render request."""
        if as_int(ck_id) is None:
            return gr.skip(), gr.skip(), gr.skip()
        if shown is None:
            return gr.skip(), f"ω = **{guide.fmt_omega(omega)}** · the main preview has not rendered it yet", \
                gr.skip()
        if not self.same_as_main(choice, omega):
            return gr.skip(), gr.skip(), render_request()
        return shown, (f"ω = **{guide.fmt_omega(omega)}** · guide: {self.label_of(ck_id, choice)} · "
                       "same grid as the main preview (cached)"), gr.skip()

    def wire(self) -> None:
        page = self.page
        ck, w, gs_inputs = page.guide_checkpoint, page.guide_omega, page.guide_settings
        fair_in = [ck, page.grouping, w, self.pick, page.model, page.target_groups, *gs_inputs,
                   *page.target_sliders]
        fair_out = [self.fair_plot, self.fair_md]
        r_in = [ck, w, self.pick, page.device, *gs_inputs]
        ck.change(self.choices, ck, self.pick)
        # a database read and a figure: no queue (see guide_tab's `scrub`); otherwise drawn in the Guide's
        # curves request (`curves_follower`), so once the slider is let go, not at every position it passes
        self.pick.change(self.fairness, fair_in, fair_out, show_progress="hidden", trigger_mode="always_last",
                         queue=False)
        # renders wait for the device's job slot inside (guide.render_slot), not in a queue lane; a ω move
        # asks for one through render_req (see `after_main`)
        for ev in (self.pick.change, self.render_req.change):
            ev(self.render, r_in, [self.grid, self.caption], show_progress="hidden", trigger_mode="always_last",
               concurrency_id="guide-model-render", concurrency_limit=None)
        page.loaders.append((self.choices, [ck], [self.pick]))
        page.loaders.append((self.fairness, fair_in, fair_out))


def crosscheck_md(r: dict) -> str:
    """Agreement of two classifiers as Markdown (rate, interval, count table, warnings)."""
    head = f"**{r['a']}** vs **{r['b']}**: "
    if r["rate"] is None:
        return head + "; ".join(r["warnings"])
    v, (lo, hi) = r["rate"]["value"], r["rate"]["ci"]
    groups = list(r["table"])
    rows = "\n".join(f"| A: {x} | " + " | ".join(str(r["table"][x][y]) for y in groups) + " |" for x in groups)
    return (head + f"agree on {r['agree']} of {r['n']} samples = **{100 * v:.1f}%** (95% CI {100 * lo:.1f}–"
            f"{100 * hi:.1f}%; {r['how']}).\n\n| | " + " | ".join(f"B: {y}" for y in groups) + " |\n|---|"
            + "---|" * len(groups) + "\n" + rows + "".join(f"\n\n⚠ {w}" for w in r["warnings"]))


def build_crosscheck(page: Page) -> None:
    """Generate & label tab: agreement of two classifiers of one attribute and the samples they disagree on."""
    from ..services import crosscheck
    db, settings = page.db, page.settings
    with gr.Accordion("Classifier cross-check (two classifiers of one attribute)", open=False):
        other = gr.Dropdown([], label="Compare the picked grouping with", elem_id="crosscheck-with")
        md = gr.Markdown(elem_id="crosscheck-result")
        gallery = gr.Gallery(label="Classifiers disagree (first 48; relabel them in the gallery above)", columns=12,
                             height=260, elem_id="crosscheck-gallery")

    def partners(grouping_id):
        gid = as_int(grouping_id)
        opts = [(f"{p['classifier']} · {p['name']}", p["id"]) for p in crosscheck.partners(db, gid)] if gid else []
        return gr.Dropdown(choices=opts, value=opts[0][1] if opts else None,
                           info=None if opts else "no grouping of another classifier has the same groups")

    def compare(model_id, grouping_id, other_id):
        mid, a, b = as_int(model_id), as_int(grouping_id), as_int(other_id)
        if mid is None or a is None or b is None:
            return "", []
        try:
            r = crosscheck.agreement(db, mid, a, b)
            rows = crosscheck.disagreement_page(db, mid, a, b).rows
        except UserError as e:
            return f"**Cannot compare:** {e}", []
        return crosscheck_md(r), [(str(settings.abs(x["path"])), f"#{x['id']} A: {x['group_a']} · B: {x['group_b']}")
                                  for x in rows]

    page.grouping.change(partners, page.grouping, other)
    other.change(compare, [page.model, page.grouping, other], [md, gallery], show_progress="hidden")
    page.loaders.append((partners, [page.grouping], [other]))
