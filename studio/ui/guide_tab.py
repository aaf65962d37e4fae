"""Guide tab: scrub ω over a fixed-seed grid (cached), ω-grid job, curves vs ω, (ω, budget) heat map, find ω."""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Callable

import gradio as gr

from ..services import attributes, demo, guide, honesty, sets
from ..services.evaluate import metric_name
from . import plots
from ..settings import DEFAULT_STEPS
from ..jobs.device_slot import SlotBusy
from .common import Page, as_int, hidden_id, user_errors
from .figure_cache import figure
from .target_tab import MAX_GROUPS

COPY_JS = "(w) => w"  # the slider's value into the exact-ω box, in the browser


_REQUESTS = itertools.count(int(time.time() * 1000))


def render_request() -> int:
    """A new number for a page's hidden render-request field: the field changes, so its render event fires
    (unique within the process and across its restarts)."""
    return next(_REQUESTS)


def shown_key(ck, w, device, gs_vals) -> str:
    """Names the exact grid of a checkpoint, ω, device and preview settings (what the page shows)."""
    return json.dumps([as_int(ck), float(w or 0), device, *[str(v) for v in gs_vals]])


@dataclass(frozen=True)
class Follower:
    """A panel's share of one of the Guide's requests, so that the whole tab costs one request per ω move
    and one per redraw of its curves. A scrub follower is called fn(exact, ck, ω, device, preview settings,
    *values of `inputs`), where `exact` is the file of the exact cached grid the main preview shows (None
    while it has none), a curves follower fn(values of the curves' inputs, *values of `inputs`); both return
    the values of `outputs`. `after_render`: a scrub follower also called once a render of the main grid ends."""
    fn: Callable
    inputs: tuple
    outputs: tuple
    after_render: bool = False


def settings_from(preview_steps, preview_count, steps, n, skip, shared) -> guide.GuideSettings:
    """GuideSettings from the accordion's inputs."""
    return guide.GuideSettings(int(preview_steps), int(preview_count), int(steps), int(n), int(skip or 0),
                               bool(shared))


class GuideTab:
    """Components and handlers of the tab."""

    def __init__(self, page: Page):
        self.page, self.db, self.settings = page, page.db, page.settings
        banner = demo.guide_banner(self.db)  # the bundled example: what it is, how to make one's own
        gr.Markdown(banner, visible=bool(banner), elem_id="guide-banner")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                self._controls()
                self._find()
                self.follow = page.follower("sweep", "find_omega")
            with gr.Column(scale=2):
                self.grid = gr.Image(label="Fixed seeds at this ω (same noise as ω = 0)", height=430,
                                     interactive=False, elem_id="guide-grid", elem_classes=["pixelated"], format="png",
                                     buttons=["download"])
                self.caption = gr.Markdown(elem_id="guide-caption")
                self.warn_md = gr.Markdown(elem_id="guide-warnings")
                with gr.Row():
                    self.frac_plot = gr.Plot(show_label=False, elem_id="plot-fraction")
                    self.fd_plot = gr.Plot(show_label=False, elem_id="plot-fd")
                self.heat = gr.Plot(show_label=False, elem_id="plot-heatmap")
        self.render_req = hidden_id()  # a new number each time the exact grid must be rendered
        self.shown = gr.Textbox("", visible="hidden")  # shown_key of the exact grid on screen ("" while none)
        self.gs_inputs = [self.p_steps, self.p_count, self.m_steps, self.m_n, self.skip, self.shared]
        page.guide_checkpoint, page.guide_omega, page.guide_settings = self.ckpt, self.omega_exact, self.gs_inputs

    def _controls(self) -> None:
        # custom values allowed: API clients pass checkpoint ids this session never listed
        self.ckpt = gr.Dropdown([], label="Auxiliary checkpoint (training budget)", elem_id="guide-ckpt",
                                allow_custom_value=True)
        self.omega = gr.Slider(guide.OMEGA_MIN, guide.OMEGA_MAX, 0.0, step=guide.OMEGA_STEP, label="ω (guidance)",
                               info="0 = base model, −1 = auxiliary model, > 0 steers away from S",
                               elem_id="omega", buttons=["reset"])
        # The ω every view and export uses. The slider moves in cached 0.25 steps; a found or typed ω is kept
        # exactly here (a slider would snap 0.375 to 0.5).
        self.omega_exact = gr.Number(0.0, label="ω used (exact: previews, curves, exports)", step=0.001,
                                     minimum=guide.OMEGA_MIN, maximum=guide.OMEGA_MAX, elem_id="omega-exact")
        self.skip = gr.Slider(0, 11, 0, step=1, label="Guidance interval: leave the first k steps unguided",
                              elem_id="guide-skip")
        with gr.Accordion("Sampling and measurement", open=False):
            with gr.Row():
                self.p_steps = gr.Number(DEFAULT_STEPS, label="Preview steps", precision=0, elem_id="guide-psteps")
                self.p_count = gr.Number(64, label="Preview seeds", precision=0, elem_id="guide-pcount")
            with gr.Row():
                self.m_steps = gr.Number(DEFAULT_STEPS, label="Measurement steps", precision=0, elem_id="guide-msteps")
                self.m_n = gr.Number(256, label="Samples per ω", precision=0, elem_id="guide-n")
            self.shared = gr.Checkbox(False, label="Shared encoder (aux fine-tuned decoder-only)",
                                      elem_id="guide-shared")
        self.all_budgets = gr.Checkbox(True, label="Measure every budget (heat map)", elem_id="guide-all")
        self.sweep_btn = gr.Button("Precompute ω grid", variant="primary", elem_id="guide-sweep")

    def _find(self) -> None:
        gr.Markdown("#### Find ω for my target")
        with gr.Row():
            self.f_group = gr.Dropdown([], label="Group", elem_id="find-group")
            self.f_target = gr.Number(70, label="Target %", minimum=0, maximum=100, elem_id="find-target")
        self.find_btn = gr.Button("Find ω", elem_id="find-btn")
        self.find_md = gr.Markdown(elem_id="find-result")

    # -- handlers ------------------------------------------------------------------------------------
    def refresh(self, model_id, grouping_id):
        """Budget checkpoints of the model's runs (newest budget picked) and the grouping's groups."""
        choices = guide.run_checkpoints(self.db, as_int(model_id))
        gid, mid = as_int(grouping_id), as_int(model_id)
        groups = list(attributes.get_grouping(self.db, gid)["groups"]) if gid is not None else []
        plan = sets.latest_plan(self.db, mid, gid, groups) if gid is not None and mid is not None else None
        focus = groups[-1] if groups else None
        # the newest run's largest budget (runs are listed newest first; the bundled example is the oldest)
        newest = [c for label, c in choices if label.split(" · ")[0] == choices[0][0].split(" · ")[0]]
        return (gr.Dropdown(choices=choices, value=newest[-1] if newest else None),
                gr.Dropdown(choices=groups, value=focus),
                round(100 * plan[0][focus], 1) if plan else gr.skip())

    def _cached_grid(self, ck, w, device, *gs_vals):
        """Fast path of an omega change: the exact cached grid, or the nearest cached one while it renders.
        (grid, caption, key of the exact grid shown or "", whether the exact grid still has to be rendered,
        the exact grid's file or None)."""
        if as_int(ck) is None:
            return None, "Finish a fine-tune (Fine-tune tab) to guide with its checkpoints.", "", False, None
        near = guide.nearest_cached(self.db, self.settings, as_int(ck), w, settings_from(*gs_vals), device)
        if near is None:
            return gr.skip(), f"rendering ω = **{guide.fmt_omega(w)}**…", "", True, None
        if abs(near["omega"] - float(w)) < 1e-9:
            return (near["grid"], f"ω = **{guide.fmt_omega(w)}** · cached", shown_key(ck, w, device, gs_vals),
                    False, near["grid"])
        return near["grid"], (f"showing cached ω = {guide.fmt_omega(near['omega'])} while ω = "
                              f"**{guide.fmt_omega(w)}** renders…"), "", True, None

    def scrub(self, ck, w, device, *rest):
        """A ω (or preview-setting) change, in one request without the queue: the cached grid (a few ms of
        database lookup), a render request only when the exact grid is not cached (the render then runs
        in the queue), the picks remembered, and each panel's share (`Follower`)."""
        gs_vals, (restored, model_id, every, grp, tgt), rest = rest[:6], rest[6:11], rest[11:]
        self.remember(restored, model_id, ck, w, *gs_vals, every, grp, tgt)
        grid, caption, key, render, exact = self._cached_grid(ck, w, device, *gs_vals)
        return (grid, caption, key, render_request() if render else gr.skip(),
                *self._followers(self.followers, exact, ck, w, device, gs_vals, rest))

    def reshow(self, shown, ck, w, device, *rest):
        """After a render: the exact cached grid of the ω on the page now, unless it is the one on screen (a
        render streams the ω it was asked for; the user may have moved on to a cached ω meanwhile), and the
        panels that follow the main grid."""
        gs_vals, rest = rest[:6], rest[6:]
        followers = [f for f in self.followers if f.after_render]
        grid, caption, key, _, exact = self._cached_grid(ck, w, device, *gs_vals)
        main = (gr.skip(),) * 3 if as_int(ck) is None or shown == key or exact is None else (grid, caption, key)
        return (*main, *self._followers(followers, exact, ck, w, device, gs_vals, rest))

    @staticmethod
    def _followers(followers, exact, ck, w, device, gs_vals, values) -> list:
        out = []
        for f in followers:
            extra, values = values[:len(f.inputs)], values[len(f.inputs):]
            out.extend(f.fn(exact, ck, w, device, gs_vals, *extra))
        return out

    @user_errors
    def render_exact(self, ck, w, device, *gs_vals):
        """Slow path: render an uncached omega, streaming the first rows (a no-op when it is cached by now).
        The render takes the device's job slot first, so it waits while a job samples or trains there."""
        if as_int(ck) is None:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        gs, key = settings_from(*gs_vals), shown_key(ck, w, device, gs_vals)
        near = guide.nearest_cached(self.db, self.settings, as_int(ck), w, gs, device)
        if near is not None and abs(near["omega"] - float(w)) < 1e-9:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        try:
            for grid, caption, final in self._stream(ck, w, device, gs):
                yield grid, caption, key if final else gr.skip()
        except SlotBusy as e:
            yield gr.skip(), f"ω = **{guide.fmt_omega(w)}** not rendered: {e}", f"{key} not rendered"

    def _stream(self, ck, w, device, gs):
        """(grid, caption, whether it is the finished grid) while the render waits, streams and ends."""
        said = None
        for kind, *rest in guide.preview_stream(self.db, self.settings, as_int(ck), w, gs, device):
            if kind == "waiting":
                who = ", ".join(f"job #{i} ({k})" for i, k, _ in rest[0]) or "another render"
                if who != said:  # one message per change of holder, not one per poll
                    said = who
                    yield gr.skip(), f"ω = **{guide.fmt_omega(w)}** waits for {device}: {who} is using it…", False
            elif kind == "partial":
                image, done, total = rest
                yield image, f"ω = **{guide.fmt_omega(w)}** · rendering… {done} of {total} samples", False
            else:
                out = rest[0]
                how = "cached" if out["cached"] else f"rendered now in {1000 * out['seconds']:.0f} ms"
                yield out["grid"], f"ω = **{guide.fmt_omega(w)}** · {how}", True

    def _target(self, model_id, g: dict, groups, values) -> dict | None:
        """The Target tab's target when its sliders are loaded for this grouping, else the last S's plan."""
        if groups == list(g["groups"]) and abs(sum(float(v or 0) for v in values[:len(groups)]) - 100) < 0.5:
            return {k: float(values[i]) / 100 for i, k in enumerate(groups)}
        plan = sets.latest_plan(self.db, as_int(model_id), g["id"], list(g["groups"])) if as_int(model_id) else None
        return plan[0] if plan else None

    @user_errors
    def queue_previews(self, ck, device, *gs_vals):
        """A picked budget checkpoint without its preview grid gets one rendered in the background."""
        if as_int(ck) is None:
            return
        job = guide.ensure_previews(self.db, self.settings, as_int(ck), settings_from(*gs_vals), device)
        if job is not None:
            gr.Info(f"Rendering the ω previews of this checkpoint in the background (job #{job}); "
                    "scrubbing is instant once they are cached.")

    def figures(self, ck, grouping_id, w, groups, model_id, *rest):
        """Fraction vs ω (with the target), distance vs ω, (ω, budget) heat map."""
        gs, values = settings_from(*rest[:6]), rest[6:]
        ckid, gid = as_int(ck), as_int(grouping_id)
        if ckid is None or gid is None:
            note = "pick a checkpoint and a grouping"
            return (figure(plots.empty, "Group fraction vs ω", note), figure(plots.empty, "Distance vs ω", note),
                    figure(plots.empty, "Fraction over (ω, budget)", note), "")
        g = attributes.get_grouping(self.db, gid)
        tgt = self._target(model_id, g, groups, values)
        c = guide.curves(self.db, ckid, gid, gs)
        metric, focus = metric_name(g["classifier"]), list(g["groups"])[-1]
        h = guide.heatmap(self.db, ckid, gid, focus, gs)
        warns = honesty.measurement_warnings(self.db, as_int(model_id), ckid, g, gs.key()) if c["fraction"] else []
        counts = [n for pts in c["count"].values() for n in pts.values() if n >= 2]
        if c["fd_group"] and counts and (fdw := honesty.small_fd(metric, min(counts))):
            warns.append(fdw)
        text = "".join(f"\n- ⚠ {w}" for w in warns)
        return (figure(plots.fraction_vs_omega, c, tgt, float(w)), figure(plots.fd_vs_omega, c, metric, float(w)),
                figure(plots.heatmap, h, focus, tgt.get(focus) if tgt else None, metric),
                f"**This measurement may mislead:**{text}" if warns else "")

    def draw_curves(self, *values):
        """`figures` and the panels drawn with them (curves followers), in one request."""
        n = len(self.curves_in)
        out = list(self.figures(*values[:n]))
        extra = values[n:]
        for f in self.curve_followers:
            out.extend(f.fn(values[:n], *extra[:len(f.inputs)]))
            extra = extra[len(f.inputs):]
        return tuple(out)

    @user_errors
    def do_sweep(self, ck, grouping_id, every_budget, device, *gs_vals):
        """Queue the ω-grid job."""
        if as_int(ck) is None or as_int(grouping_id) is None:
            raise gr.Error("Pick a checkpoint and a grouping first.")
        job = guide.submit_sweep(self.db, as_int(ck), as_int(grouping_id), settings_from(*gs_vals),
                                 bool(every_budget), device=device)
        gr.Info(f"ω grid queued as job #{job}.")
        return job

    @user_errors
    def do_find(self, ck, grouping_id, grp, tgt, device, *gs_vals):
        """Queue the find-ω job."""
        if as_int(ck) is None or as_int(grouping_id) is None or not grp:
            raise gr.Error("Pick a checkpoint, a grouping and a group first.")
        return guide.submit_find_omega(self.db, as_int(ck), as_int(grouping_id), grp, float(tgt or 0) / 100,
                                       settings_from(*gs_vals), device=device)

    def after_job(self, job_id, w):
        """A finished find-ω job: show its answer and move the slider there."""
        from ..services import jobs
        if job_id is None:
            return gr.skip(), gr.skip(), gr.skip()
        j = jobs.get(self.db, job_id)
        if j.kind != "find_omega":
            return gr.skip(), gr.skip(), gr.skip()
        if j.state != "succeeded":
            return f"**Search failed:** {j.message}", gr.skip(), gr.skip()
        found = float(j.result["omega"])
        # the exact ω drives previews, curves and exports; the slider only points at the nearest step
        snapped = min(max(round(found / guide.OMEGA_STEP) * guide.OMEGA_STEP, guide.OMEGA_MIN), guide.OMEGA_MAX)
        return (f"**Found:** {j.message}\n\nω = **{guide.fmt_omega(found)}** is now the ω used by the previews "
                "and both exports.", found, gr.Slider(value=snapped))

    def remember(self, restored, model_id, ck, w, p_steps, p_count, m_steps, m_n, skip, shared, every, grp, tgt):
        """Store the picks of this model's Guide (a reload restores them, see `restore`). Nothing is stored
        before this page has restored them: the defaults a fresh page starts with would overwrite them."""
        if not restored or as_int(model_id) is None or as_int(ck) is None:
            return
        guide.save_view(self.settings, as_int(model_id), {
            "checkpoint_id": as_int(ck), "omega": float(w or 0), "preview_steps": p_steps, "preview_count": p_count,
            "steps": m_steps, "n": m_n, "skip_steps": skip, "shared_encoder": bool(shared),
            "all_budgets": bool(every), "find_group": grp, "find_target": tgt})

    def restore(self, model_id, ck):
        """The remembered picks of this model's Guide, where its checkpoint still exists."""
        v = guide.load_views(self.settings).get(str(as_int(model_id)))
        ids = [c for _, c in guide.run_checkpoints(self.db, as_int(model_id))] if as_int(model_id) else []
        if not v or v.get("checkpoint_id") not in ids:
            return (*(gr.skip(),) * 12, 1)
        w = float(v.get("omega", 0.0))
        snapped = min(max(round(w / guide.OMEGA_STEP) * guide.OMEGA_STEP, guide.OMEGA_MIN), guide.OMEGA_MAX)
        get = lambda k: v[k] if v.get(k) is not None else gr.skip()  # noqa: E731
        return (gr.Dropdown(value=v["checkpoint_id"]), w, snapped, get("preview_steps"), get("preview_count"),
                get("steps"), get("n"), get("skip_steps"), get("shared_encoder"), get("all_budgets"),
                gr.Dropdown(value=v["find_group"]) if v.get("find_group") else gr.skip(), get("find_target"), 1)

    @staticmethod
    def skip_limit(preview_steps, steps):
        """Steps that may be left unguided: fewer than either sampler runs."""
        return gr.Slider(maximum=max(min(int(preview_steps or 2), int(steps or 2)) - 1, 1))

    # -- events --------------------------------------------------------------------------------------
    def wire(self, followers: tuple[Follower, ...] = (), curve_followers: tuple[Follower, ...] = ()) -> None:
        """Connect the components to the handlers (the panels' `followers` answer in the scrub request, their
        `curve_followers` in the curves' request); expose the picks for the Export tab."""
        page = self.page
        self.followers, self.curve_followers = followers, curve_followers
        self.curves_in = [self.ckpt, page.grouping, self.omega_exact, page.target_groups, page.model,
                          *self.gs_inputs, *page.target_sliders[:MAX_GROUPS]]
        curves_in = [*self.curves_in, *[c for f in curve_followers for c in f.inputs]]
        curves_out = [self.frac_plot, self.fd_plot, self.heat, self.warn_md,
                      *[c for f in curve_followers for c in f.outputs]]
        scrub_in, scrub_out = [self.ckpt, self.omega_exact, page.device, *self.gs_inputs], [self.grid, self.caption]
        remembered = [page.model, self.ckpt, self.omega_exact, *self.gs_inputs, self.all_budgets, self.f_group,
                      self.f_target]
        self.restored = hidden_id()  # 1 once this page has restored the remembered picks
        # A user moving the slider sets the exact ω, in the browser (no request); a program setting the
        # slider (find ω) does not.
        self.omega.input(None, self.omega, self.omega_exact, js=COPY_JS, show_progress="hidden",
                         trigger_mode="always_last")
        # A cached ω costs one request for the whole tab: `scrub` reads the cache (a few ms), remembers the
        # picks, answers for the panels and skips the queue. Only an uncached grid changes render_req, whose
        # event renders in the queue (no lane limit: renders wait for the device's job slot inside,
        # guide.render_slot); after it, `reshow` puts the page's current ω back if the user moved on to a
        # cached one while it rendered, and updates the panels that follow the main grid.
        extra = [c for f in followers for c in f.inputs]
        extra_out = [c for f in followers for c in f.outputs]
        scrub_all_in = [*scrub_in, self.restored, page.model, self.all_budgets, self.f_group, self.f_target, *extra]
        for comp in (self.omega_exact, self.ckpt, self.skip, self.shared, self.p_steps, self.p_count):
            comp.change(self.scrub, scrub_all_in, [*scrub_out, self.shown, self.render_req, *extra_out],
                        show_progress="hidden", trigger_mode="always_last", queue=False)
        after = [f for f in followers if f.after_render]
        self.render_req.change(self.render_exact, scrub_in, [*scrub_out, self.shown], show_progress="hidden",
                               concurrency_id="render", concurrency_limit=None, trigger_mode="always_last").then(
            self.reshow, [self.shown, *scrub_in, *[c for f in after for c in f.inputs]],
            [*scrub_out, self.shown, *[c for f in after for c in f.outputs]], show_progress="hidden", queue=False)
        # The curves (and the panels drawn with them) follow ω once the hand leaves the slider, not at every
        # position it passes. A few ms of database reads (figures come from studio.ui.figure_cache): no queue.
        curves = dict(show_progress="hidden", queue=False)
        self.omega.release(None, self.omega, self.omega_exact, js=COPY_JS, show_progress="hidden").then(
            self.draw_curves, curves_in, curves_out, **curves)
        self.omega_exact.submit(self.draw_curves, curves_in, curves_out, **curves)
        self.ckpt.change(self.draw_curves, curves_in, curves_out, **curves)
        self.ckpt.change(self.queue_previews, [self.ckpt, page.device, *self.gs_inputs], None,
                         show_progress="hidden")
        # the Target tab loads its groups and sliders after this tab's first draw: redraw with the target
        page.target_groups.change(self.draw_curves, curves_in, curves_out, **curves)
        for comp in (self.p_steps, self.m_steps):
            comp.change(self.skip_limit, [self.p_steps, self.m_steps], self.skip)
        self.sweep_btn.click(self.do_sweep, [self.ckpt, page.grouping, self.all_budgets, page.device,
                                             *self.gs_inputs], self.follow.job)
        self.find_btn.click(self.do_find, [self.ckpt, page.grouping, self.f_group, self.f_target, page.device,
                                           *self.gs_inputs], self.follow.job)
        self.follow.done.change(self.after_job, [self.follow.job, self.omega],
                                [self.find_md, self.omega_exact, self.omega]).then(
            self.draw_curves, curves_in, curves_out, **curves)
        for comp in (self.m_steps, self.m_n, self.all_budgets, self.f_group, self.f_target):  # the rest: `scrub`
            # no queue: a file write under a lock (guide.save_view), applied in the order the requests arrive,
            # so the last pick made is the one remembered; a queue lane of one served every browser in turn
            # (20 scrubbing clients waited 5 s in it)
            comp.change(self.remember, [self.restored, *remembered], None, show_progress="hidden",
                        trigger_mode="always_last", queue=False)
        restored = [self.ckpt, self.omega_exact, self.omega, *self.gs_inputs, self.all_budgets, self.f_group,
                    self.f_target, self.restored]
        for ev in (page.model.change, page.grouping.change):
            ev(self.refresh, [page.model, page.grouping], [self.ckpt, self.f_group, self.f_target]).then(
                self.restore, [page.model, self.ckpt], restored)
        page.loaders.append((self.refresh, [page.model, page.grouping], [self.ckpt, self.f_group, self.f_target]))
        page.loaders.append((self.restore, [page.model, self.ckpt], restored))
        page.loaders.append((self.figures, self.curves_in, curves_out[:4]))


def build(page: Page) -> None:
    """Lay out the tab and the panels below it (fairness and guide model, score space vs merge), then wire
    them: the panels' share of a ω move answers in the tab's own scrub request."""
    from .fairness_guide_panels import GuidePanels  # they build on this module
    from .merge_compare_panel import ComparePanel
    tab = GuideTab(page)
    panels = (GuidePanels(page), ComparePanel(page))
    tab.wire(tuple(p.follower for p in panels), (panels[0].curves_follower,))
    for p in panels:
        p.wire()
