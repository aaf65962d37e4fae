"""Generate & label tab: grow the pool, label it, browse a paged filterable gallery, correct labels."""
from __future__ import annotations

import re

import gradio as gr

from ..services import attributes, labels, pool
from ..storage import read_png, upscale
from . import plots
from .common import Page, as_int, hidden_id, hidden_value, user_errors

PER_PAGE = 48


def parse_ids(text: str) -> list[int]:
    """'3, 5, 10-12' -> [3, 5, 10, 11, 12]."""
    ids: list[int] = []
    for part in re.split(r"[,\s]+", (text or "").strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise gr.Error(f"Could not read sample ids {part!r}; use e.g. 3, 5, 10-12.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        ids.extend(range(a, b + 1))
    return ids


def _fmt_ids(ids) -> str:
    return ", ".join(str(i) for i in sorted(set(ids)))


def build(page: Page) -> None:
    """Lay out the tab and wire its events."""
    db, settings = page.db, page.settings
    rows_state = hidden_value([])
    current = hidden_id()
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("#### Grow the pool")
            n = gr.Number(256, label="Samples to add", precision=0, minimum=1, elem_id="gen-n")
            steps = gr.Slider(2, 64, 18, step=1, label="Heun steps", elem_id="gen-steps")
            gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-btn")
            gr.Markdown("#### Label")
            label_btn = gr.Button("Label pool with the grouping's classifier", elem_id="label-btn")
            clf_status = gr.Markdown(elem_id="clf-status")
            follow = page.follower("generate", "label")
            counts_plot = gr.Plot(show_label=False, elem_id="group-counts")
        with gr.Column(scale=3):
            with gr.Row():
                group = gr.Dropdown(["any"], value="any", label="Group", elem_id="filter-group", scale=2)
                status = gr.Dropdown(list(pool.STATUSES), value="all", label="Status", elem_id="filter-status", scale=2)
                min_conf = gr.Slider(0, 1, 0, step=0.05, label="Confidence ≥", elem_id="filter-min", scale=2)
                max_conf = gr.Slider(0, 1, 1, step=0.05, label="Confidence ≤", elem_id="filter-max", scale=2)
            with gr.Row(equal_height=True):
                prev_btn = gr.Button("◀ Prev", size="sm", elem_id="page-prev", scale=0, min_width=90)
                page_no = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="page-no", scale=0, min_width=90)
                next_btn = gr.Button("Next ▶", size="sm", elem_id="page-next", scale=0, min_width=90)
                info = gr.Markdown(elem_id="page-info")
            gallery = gr.Gallery(label="Pool", columns=8, height="auto", allow_preview=False, elem_id="pool-gallery",
                                 elem_classes=["pixelated"], object_fit="contain")
            with gr.Row(equal_height=True):
                select_mode = gr.Checkbox(False, label="Select mode (click adds to selection)", elem_id="select-mode")
                selection = gr.Textbox(label="Selected sample ids", placeholder="e.g. 3, 5, 10-12", elem_id="selection",
                                       scale=3)
                sel_page = gr.Button("Select page", size="sm", elem_id="select-page", scale=0, min_width=110)
                sel_clear = gr.Button("Clear", size="sm", elem_id="select-clear", scale=0, min_width=80)
            with gr.Row(equal_height=True):
                bulk_class = gr.Dropdown([], label="Relabel selection as", elem_id="bulk-class", scale=2)
                bulk_btn = gr.Button("Relabel selection", elem_id="bulk-relabel", scale=1)
                np_btn = gr.Button("Mark not preferred", elem_id="bulk-np", scale=1)
                unnp_btn = gr.Button("Unmark", elem_id="bulk-unnp", scale=0, min_width=90)
            with gr.Group():
                with gr.Row():
                    detail_img = gr.Image(label="Sample", height=220, interactive=False, elem_id="detail-image",
                                          elem_classes=["pixelated"], scale=1)
                    with gr.Column(scale=2):
                        detail_md = gr.Markdown("Click a thumbnail to inspect it.", elem_id="detail-md")
                        probs_plot = gr.Plot(show_label=False, elem_id="detail-probs")
                with gr.Row(equal_height=True):
                    fix_class = gr.Dropdown([], label="Correct label", elem_id="fix-class", scale=2)
                    fix_btn = gr.Button("Save label", variant="primary", elem_id="fix-save", scale=1)
                    unfix_btn = gr.Button("Use classifier label", elem_id="fix-clear", scale=1)
                    toggle_np = gr.Button("Toggle not preferred", elem_id="fix-np", scale=1)

    def context(model_id, grouping_id):
        mid, gid = as_int(model_id), as_int(grouping_id)
        g = attributes.get_grouping(db, gid) if gid is not None else None
        return mid, g

    def load_page(model_id, grouping_id, grp, st, lo, hi, page_n):
        mid, g = context(model_id, grouping_id)
        if mid is None:
            return [], [], "Register or pick a model (Models tab).", 1
        res = pool.gallery_page(db, mid, g["id"] if g else None, grp, lo, hi, st, page_n, PER_PAGE)
        items = []
        for r in res.rows:
            cap = f"#{r['id']}"
            if r["group"] is not None:
                cap += f" {r['group']}" + (" (manual)" if r["source"] == "manual" else f" {r['confidence']:.2f}")
            if r["not_preferred"]:
                cap += " · not preferred"
            items.append((str(settings.abs(r["path"])), cap))
        text = f"**{res.total:,}** samples match · page {res.page} of {res.pages}"
        return items, [r["id"] for r in res.rows], text, res.page

    def on_context(model_id, grouping_id):
        mid, g = context(model_id, grouping_id)
        if g is None:
            return (gr.Dropdown(choices=["any"], value="any"), gr.Dropdown(choices=[]), gr.Dropdown(choices=[]),
                    "Pick a grouping in the header.", plots.empty("Groups in the pool", "pick a grouping"))
        classes = attributes.get_classes(db, g["classifier"])
        choices = ["any", *g["groups"], "uncertain"]
        status_text = f"Classifier **{g['classifier']}**: {attributes.classifier_status(db, g['classifier'])}"
        return (gr.Dropdown(choices=choices, value="any"), gr.Dropdown(choices=classes, value=None),
                gr.Dropdown(choices=classes, value=None), status_text, counts_fig(mid, g))

    def counts_fig(mid, g):
        if mid is None or g is None:
            return plots.empty("Groups in the pool", "no model or grouping")
        counts = pool.group_counts(db, mid, g["id"])
        ordered = {k: counts.get(k, 0) for k in [*g["groups"], "uncertain"]}
        if not any(ordered.values()):
            return plots.empty("Groups in the pool", "label the pool to see its groups")
        return plots.composition(ordered, "Groups in the pool")

    @user_errors
    def generate(model_id, n_, steps_, device):
        mid = as_int(model_id)
        if mid is None:
            raise gr.Error("Pick a model first (Models tab).")
        return pool.submit_generate(db, mid, int(n_ or 0), int(steps_), device)

    @user_errors
    def label_pool(model_id, grouping_id, device):
        mid, g = context(model_id, grouping_id)
        if mid is None or g is None:
            raise gr.Error("Pick a model and a grouping first.")
        return pool.submit_label(db, mid, g["classifier"], device)

    def on_select(rows, select_on, sel_text, grouping_id, evt: gr.SelectData):
        if evt.index is None or evt.index >= len(rows):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        sid = rows[evt.index]
        if select_on:
            ids = set(parse_ids(sel_text))
            ids.symmetric_difference_update({sid})
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), _fmt_ids(ids), gr.skip()
        img, md, fig, cls = detail(sid, grouping_id)
        return sid, img, md, fig, gr.skip(), cls

    def detail(sid, grouping_id):
        g = attributes.get_grouping(db, as_int(grouping_id)) if as_int(grouping_id) is not None else None
        d = labels.sample_detail(db, sid, g["classifier"] if g else None)
        hist = "".join(f"\n- {t} **{a}** → {c or 'withdrawn'}" for t, a, c in d["history"][-5:])
        top = (f"{d['classes'][max(range(len(d['probs'])), key=d['probs'].__getitem__)]}"
               if d["probs"] else "not labelled")
        md = (f"**Sample #{d['id']}** · seed {d['seed']} · {d['steps']} steps · "
              f"{'**not preferred**' if d['not_preferred'] else 'preferred'}\n\n"
              f"Classifier: **{top}** · Manual: **{d['manual'] or '—'}**" + (f"\n\nManual history:{hist}" if hist else ""))
        big = upscale(read_png(settings.abs(d["path"])), 192)  # tiny samples: show crisp, enlarged pixels
        return (big[:, :, 0] if big.shape[2] == 1 else big, md,
                plots.probabilities(d["classes"], d["probs"], d["manual"]),
                gr.Dropdown(value=d["manual"]))

    @user_errors
    def save_label(sid, cls, grouping_id):
        if sid is None:
            raise gr.Error("Click a sample first.")
        if not cls:
            raise gr.Error("Choose the correct class first.")
        g = attributes.get_grouping(db, as_int(grouping_id))
        labels.set_manual_label(db, [sid], g["classifier"], cls, author="studio")
        gr.Info(f"Sample #{sid} labelled '{cls}'.")
        return detail(sid, grouping_id)

    @user_errors
    def clear_label(sid, grouping_id):
        if sid is None:
            raise gr.Error("Click a sample first.")
        g = attributes.get_grouping(db, as_int(grouping_id))
        labels.set_manual_label(db, [sid], g["classifier"], None, author="studio")
        return detail(sid, grouping_id)

    @user_errors
    def toggle(sid, grouping_id):
        if sid is None:
            raise gr.Error("Click a sample first.")
        d = labels.sample_detail(db, sid, None)
        labels.set_not_preferred(db, [sid], not d["not_preferred"])
        return detail(sid, grouping_id)

    @user_errors
    def bulk(sel_text, cls, grouping_id):
        if not cls:
            raise gr.Error("Choose the class to give the selection.")
        g = attributes.get_grouping(db, as_int(grouping_id))
        n_ = labels.set_manual_label(db, parse_ids(sel_text), g["classifier"], cls, author="studio (bulk)")
        gr.Info(f"{n_} samples relabelled '{cls}'.")

    @user_errors
    def mark(sel_text, flag):
        n_ = labels.set_not_preferred(db, parse_ids(sel_text), flag)
        gr.Info(f"{n_} samples {'marked' if flag else 'unmarked'} not preferred.")

    page_inputs = [page.model, page.grouping, group, status, min_conf, max_conf, page_no]
    page_outputs = [gallery, rows_state, info, page_no]
    ctx_outputs = [group, bulk_class, fix_class, clf_status, counts_plot]
    detail_outputs = [detail_img, detail_md, probs_plot, fix_class]

    for ev in (page.model.change, page.grouping.change):
        ev(on_context, [page.model, page.grouping], ctx_outputs).then(load_page, page_inputs, page_outputs)
    for comp in (group, status, min_conf, max_conf):
        comp.change(lambda *a: load_page(*a[:-1], 1), page_inputs, page_outputs)
    page_no.submit(load_page, page_inputs, page_outputs)
    prev_btn.click(lambda *a: load_page(*a[:-1], max(1, int(a[-1] or 1) - 1)), page_inputs, page_outputs)
    next_btn.click(lambda *a: load_page(*a[:-1], int(a[-1] or 1) + 1), page_inputs, page_outputs)
    gen_btn.click(generate, [page.model, n, steps, page.device], follow.job)
    label_btn.click(label_pool, [page.model, page.grouping, page.device], follow.job)
    follow.done.change(load_page, page_inputs, page_outputs).then(
        lambda m, g: counts_fig(*context(m, g)), [page.model, page.grouping], counts_plot)
    gallery.select(on_select, [rows_state, select_mode, selection, page.grouping],
                   [current, detail_img, detail_md, probs_plot, selection, fix_class])
    sel_page.click(lambda rows, text: _fmt_ids(set(parse_ids(text)) | set(rows)), [rows_state, selection], selection)
    sel_clear.click(lambda: "", None, selection)
    fix_btn.click(save_label, [current, fix_class, page.grouping], detail_outputs).success(
        load_page, page_inputs, page_outputs)
    unfix_btn.click(clear_label, [current, page.grouping], detail_outputs).success(load_page, page_inputs, page_outputs)
    toggle_np.click(toggle, [current, page.grouping], detail_outputs).success(load_page, page_inputs, page_outputs)
    bulk_btn.click(bulk, [selection, bulk_class, page.grouping], None).success(load_page, page_inputs, page_outputs)
    np_btn.click(lambda t: mark(t, True), selection, None).then(load_page, page_inputs, page_outputs)
    unnp_btn.click(lambda t: mark(t, False), selection, None).then(load_page, page_inputs, page_outputs)
    page.loaders.append((on_context, [page.model, page.grouping], ctx_outputs))
    page.loaders.append((load_page, page_inputs, page_outputs))
