"""Build set tab: assemble S with the Target tab's mix (growing the pool when short), or from not-preferred samples."""
from __future__ import annotations

import gradio as gr

from ..services import attributes, sets, target
from . import plots
from ..settings import DEFAULT_STEPS
from .common import Page, as_int, header_models, hidden_id, kpis, user_errors
from .target_tab import MAX_GROUPS


def build(page: Page) -> None:
    """Lay out the tab and wire its events (reads the Target tab's sliders)."""
    db, settings = page.db, page.settings
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            n_s = gr.Number(1000, label="n_s (size of S)", precision=0, elem_id="ns")  # the service says why 0 is refused
            grow = gr.Checkbox(True, label="Generate and label more when a group runs short", elem_id="grow")
            max_pool = gr.Number(sets.DEFAULT_MAX_POOL, label="Largest pool to grow to", precision=0,
                                 elem_id="max-pool")
            steps = gr.Slider(2, 64, DEFAULT_STEPS, step=1, label="Heun steps for new samples", elem_id="build-steps")
            check_btn = gr.Button("Check plan", elem_id="plan-check")
            build_btn = gr.Button("Build S with the Target tab's mix", variant="primary", elem_id="build-btn")
            np_btn = gr.Button("Build S from not-preferred samples", elem_id="build-np")
            plan_md = gr.Markdown(elem_id="plan-md")
            follow = page.follower("build_set")
        with gr.Column(scale=2):
            sets_table = gr.Dataframe(headers=["id", "name", "kind", "n_s", "state", "composition", "created"],
                                      label="Synthetic sets", interactive=False, elem_id="sets-table")
            pick = gr.Dropdown([], label="Inspect set", elem_id="set-pick")
            summary = gr.HTML(elem_id="set-summary")
            comp = gr.Plot(show_label=False, elem_id="set-composition")
            members = gr.Gallery(label="Members (a few per group)", columns=12, height=220, allow_preview=False,
                                 elem_classes=["pixelated"], elem_id="set-members")

    def mix_inputs(grouping_id, groups, *values):
        gid = as_int(grouping_id)
        if gid is None or not groups:
            raise gr.Error("Set a target and a mix in the Target tab first (label the pool before that).")
        k = len(groups)
        q = target.check_shares(groups, values[:k], "Target")
        a = target.check_shares(groups, values[MAX_GROUPS:MAX_GROUPS + k], "Auxiliary mix")
        return gid, q, a

    @user_errors
    def check(model_id, grouping_id, n, grow_, maxp, groups, *values):
        gid, q, a = mix_inputs(grouping_id, groups, *values)
        info = sets.plan(db, as_int(model_id), attributes.get_grouping(db, gid), a, int(n or 0), grow_, int(maxp))
        rows = "\n".join(f"| {g} | {100 * a[g]:.1f}% | {c} | {info['have'][g]} |" for g, c in info["counts"].items())
        extra = (f"\n\nAbout **{info['extra_estimate']:,}** more samples will be generated and labelled."
                 if info["extra_estimate"] else "\n\nThe pool already holds enough samples.")
        return f"| group | mix | needed | in pool |\n|---|---|---|---|\n{rows}{extra}"

    @user_errors
    def start(model_id, grouping_id, n, grow_, maxp, st, device, base_pct, groups, *values):
        gid, q, a = mix_inputs(grouping_id, groups, *values)
        base = {g: base_pct[g] / 100 for g in groups} if base_pct else None
        set_id, job = sets.submit_build(db, as_int(model_id), gid, a, int(n or 0), target=q, base_fractions=base,
                                        grow=grow_, max_pool=int(maxp), steps=int(st), device=device)
        gr.Info(f"Building S #{set_id} (job #{job}).")
        return job, set_id

    @user_errors
    def from_np(model_id):
        if as_int(model_id) is None:
            raise gr.Error("Pick a model first.")
        sid = sets.build_not_preferred(db, as_int(model_id))
        gr.Info(f"S #{sid} built from your not-preferred samples.")
        return sid

    def refresh(model_id, selected=None):
        mid = as_int(model_id)
        rows = sets.list_sets(db, mid) if mid is not None else []
        table = [[r["id"], r["name"], r["kind"], r["n_s"], r["state"],
                  ", ".join(f"{g} {c}" for g, c in (r["counts"] or {}).items()), r["created"]] for r in rows]
        choices = [(f"S #{r['id']} · {r['name']} · {r['state']}", r["id"]) for r in rows]
        value = selected if selected is not None else (rows[0]["id"] if rows else None)
        return table, gr.Dropdown(choices=choices, value=value)

    def inspect(set_id):
        sid = as_int(set_id)
        if sid is None:
            return "", plots.composition({}), []
        s = sets.get_set(db, sid)
        counts = s["counts"] or {}
        items = [("state", s["state"]), ("members", f"{sum(counts.values()):,}"), ("kind", s["kind"])]
        if s["mix"]:
            items += [(f"mix {g}", f"{100 * v:.0f}%") for g, v in s["mix"].items()]
        gallery = [(str(settings.abs(p)), cap) for p, cap in sets.preview(db, sid)]
        return kpis(items), plots.composition(counts, f"S #{sid}: composition achieved"), gallery

    slider_inputs = [page.target_groups, *page.target_sliders, *page.mix_sliders]
    check_btn.click(check, [page.model, page.grouping, n_s, grow, max_pool, *slider_inputs], plan_md)
    # a refused request (e.g. n_s = 0) outputs only to hidden ids: the table and picker never show an error state
    new_set = hidden_id()
    build_btn.click(start, [page.model, page.grouping, n_s, grow, max_pool, steps, page.device, page.target_base,
                            *slider_inputs],
                    [follow.job, new_set])
    np_btn.click(from_np, page.model, new_set)
    # not chained to the click: Gradio marks a failed event's chained outputs with an "Error" pill too
    new_set.change(lambda m, s: refresh(m, as_int(s)), [page.model, new_set], [sets_table, pick])
    pick.change(inspect, pick, [summary, comp, members])
    page.model.change(refresh, page.model, [sets_table, pick])
    follow.done.change(lambda m, s: refresh(m, as_int(s)), [page.model, pick], [sets_table, pick]).then(
        inspect, pick, [summary, comp, members]).then(
        lambda m: header_models(db, m), page.model, page.model, show_progress="hidden")  # the pool may have grown
    page.loaders.append((refresh, [page.model], [sets_table, pick]))
