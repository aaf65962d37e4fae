"""Target distribution tab: base fractions of the pool, target sliders summing to 100%, suggested auxiliary mix."""
from __future__ import annotations

import gradio as gr

from pipelines.errors import UserError

from ..services import attributes, pool, sets, target
from . import plots
from .common import Page, as_int, hidden_value, user_errors
from .widgets import ShareSlider

MAX_GROUPS = 12


def sum_html(values, what: str) -> str:
    """The running sum of a slider column, green at 100%."""
    total = sum(float(v or 0) for v in values)
    ok = abs(total - 100) <= target.TOLERANCE
    return (f"<span class='{'sum-ok' if ok else 'sum-bad'}' data-sum='{total:.1f}'>{what} sum: {total:.1f}%"
            f"{'' if ok else ' — must be 100%'}</span>")


def slider_updates(groups, values) -> list:
    """Show one slider per group (labelled, valued) and hide the rest."""
    return [gr.Slider(label=groups[i], value=values[i], visible=True) if i < len(groups)
            else gr.Slider(visible=False, value=0) for i in range(MAX_GROUPS)]


def _set_values(values, k: int) -> tuple:
    # New values for the first k sliders; the hidden rest stay as they are.
    return (*[gr.Slider(value=v) for v in values], *[gr.Slider() for _ in range(MAX_GROUPS - k)])


def _fractions_md(bf: dict) -> str:
    rows = "\n".join(f"| {k} | {100 * v['fraction']:.1f}% | {100 * v['lo']:.1f}–{100 * v['hi']:.1f}% | {v['count']} |"
                     for k, v in bf["groups"].items())
    excl = ", ".join(f"{k} {v}" for k, v in bf["excluded"].items() if v)
    return (f"| group | base | 95% CI | samples |\n|---|---|---|---|\n{rows}\n\n{bf['assigned']:,} confidently "
            f"labelled samples" + (f" (excluded: {excl})" if excl else ""))


def load(db, model_id, grouping_id):
    """Base fractions of the pool; the sliders start at the last S's target and mix for this pair, else at the base."""
    mid, gid = as_int(model_id), as_int(grouping_id)
    blank = slider_updates([], [])
    if mid is None or gid is None:
        return ([], {}, "Pick a model and a grouping.", *blank, *blank, "", "", plots.empty("Shares", "nothing yet"))
    g = attributes.get_grouping(db, gid)
    groups = list(g["groups"])
    if len(groups) > MAX_GROUPS:
        raise gr.Error(f"This grouping has {len(groups)} groups; the Target tab handles up to {MAX_GROUPS}. "
                       "Pick a coarser grouping.")
    try:
        bf = pool.base_fractions(db, mid, g)
    except UserError as e:  # no labels yet: say so, keep the tab usable
        return ([], {}, f"**Cannot compute base fractions:** {e}", *blank, *blank, "", "",
                plots.empty("Shares", "label the pool first"))
    base = target.normalise([100 * bf["groups"][k]["fraction"] for k in groups])
    plan = sets.latest_plan(db, mid, gid, groups)  # a returning user sees the plan of their last S
    tgt, mix = (target.as_percent(plan[0], groups), target.as_percent(plan[1], groups)) if plan else (base, base)
    return (groups, dict(zip(groups, base)), _fractions_md(bf), *slider_updates(groups, tgt),
            *slider_updates(groups, mix), sum_html(tgt, "Target"), sum_html(mix, "Mix"),
            plots.mix_bars(groups, base, tgt, mix))


def on_input(i, groups, base, *values):
    """A slider moved: rescale the others so the column sums to 100%."""
    return _set_values(target.normalise(values[:len(groups)], changed=i), len(groups))


def renorm(groups, *values):
    """Rescale a column to 100%."""
    return _set_values(target.normalise(values[:len(groups)]), len(groups))


def chart(groups, base, *values):
    """Sums of both columns and the bar chart."""
    k = len(groups or [])
    clamp = [min(max(float(v or 0), 0.0), 100.0) for v in values]
    t, m = clamp[:k], clamp[MAX_GROUPS:MAX_GROUPS + k]
    if not k:
        return "", "", plots.empty("Shares", "nothing to show yet")
    return sum_html(t, "Target"), sum_html(m, "Mix"), plots.mix_bars(groups, [base[g] for g in groups], t, m)


@user_errors
def suggest(groups, base, w0, *values):
    """Auxiliary mix from the target: a = p - (q - p)/omega0 (pipelines.shift.suggest_aux_mix)."""
    if not groups:
        raise gr.Error("Label the pool first: the suggestion starts from its base fractions.")
    q = target.check_shares(groups, values[:len(groups)], "Target")
    mix = target.suggest_mix({g: base[g] / 100 for g in groups}, q, float(w0 or 1.0))
    return _set_values(target.as_percent(mix, groups), len(groups))


def _column(title: str, prefix: str):
    gr.Markdown(f"#### {title}")
    # typed shares are clamped to 0-100 (then rescaled by on_input) instead of refused
    sliders = [ShareSlider(0, 100, 0, step=0.5, label=f"group {i}", visible=False, elem_id=f"{prefix}-{i}")
               for i in range(MAX_GROUPS)]
    return sliders, gr.HTML(elem_id=f"{prefix}-sum")


def build(page: Page) -> None:
    """Lay out the tab and wire its events; exposes the sliders on `page` for the Build set tab."""
    groups_state, base_state = hidden_value([]), hidden_value({})
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown("#### Base fractions (labelled pool)")
            base_md = gr.Markdown("Label the pool first.", elem_id="base-fractions")
            omega0 = gr.Number(1.0, label="Planned guidance ω₀ (for the suggested mix)", minimum=0.05, step=0.25,
                               elem_id="omega0")
            refresh_btn = gr.Button("Refresh from pool", size="sm", elem_id="target-refresh")
        with gr.Column(scale=3):
            t_sliders, t_sum = _column("Target distribution", "target")
            with gr.Row():
                t_norm = gr.Button("Normalise to 100%", size="sm", elem_id="target-normalise")
                t_base = gr.Button("Target = base", size="sm", elem_id="target-base")
        with gr.Column(scale=3):
            m_sliders, m_sum = _column("Auxiliary mix for S (editable)", "mix")
            with gr.Row():
                suggest_btn = gr.Button("Suggest from target (a = p − (q − p)/ω₀)", variant="primary", size="sm",
                                        elem_id="mix-suggest")
                m_norm = gr.Button("Normalise to 100%", size="sm", elem_id="mix-normalise")
    bars = gr.Plot(show_label=False, elem_id="target-bars")
    gr.Markdown("SIMS pushes generation *away* from S: to raise a group above its base share, give it *less* "
                "than its base share in S. The guess assumes a linear response at ω₀; the Guide tab measures "
                "the real curve. Alternatively build S from your not-preferred samples (Build set tab).")
    page.target_sliders, page.mix_sliders = t_sliders, m_sliders
    page.target_groups, page.target_base = groups_state, base_state

    loader = user_errors(lambda m, g: load(page.db, m, g))
    load_outputs = [groups_state, base_state, base_md, *t_sliders, *m_sliders, t_sum, m_sum, bars]
    for ev in (page.model.change, page.grouping.change, refresh_btn.click):
        ev(loader, [page.model, page.grouping], load_outputs)
    for sliders in (t_sliders, m_sliders):
        for i, s in enumerate(sliders):
            s.input(lambda groups, base, *v, i=i: on_input(i, groups, base, *v), [groups_state, base_state, *sliders],
                    sliders, show_progress="hidden")
            s.change(chart, [groups_state, base_state, *t_sliders, *m_sliders], [t_sum, m_sum, bars],
                     show_progress="hidden")
    t_norm.click(renorm, [groups_state, *t_sliders], t_sliders)
    m_norm.click(renorm, [groups_state, *m_sliders], m_sliders)
    t_base.click(lambda groups, base: _set_values([base[g] for g in groups], len(groups)),
                 [groups_state, base_state], t_sliders)
    suggest_btn.click(suggest, [groups_state, base_state, omega0, *t_sliders], m_sliders)
    page.loaders.append((loader, [page.model, page.grouping], load_outputs))
