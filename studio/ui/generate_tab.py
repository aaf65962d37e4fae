"""Generate & label tab: grow the pool, label it, browse a paged filterable gallery, correct labels."""
from __future__ import annotations

import re

import gradio as gr
import numpy as np

from ..services import attributes, labels, pool, verify
from ..storage import read_png, upscale, write_png
from . import plots
from ..settings import DEFAULT_STEPS
from .common import Page, as_int, header_models, hidden_id, hidden_value, user_errors
from .curation_panel import SHIFT_JS, CurationPanel

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


def _caption(r: dict) -> str:
    """Short thumbnail caption: group and confidence (or 'manual'), 'NP' when not preferred."""
    cap = "" if r["group"] is None else r["group"] + (" manual" if r["source"] == "manual" else f" {r['confidence']:.2f}")
    return (cap + " NP").strip() if r["not_preferred"] else (cap or f"#{r['id']}")


def placeholder_image(size: int = 64) -> np.ndarray:
    """Grey square with a red cross: stands in for a sample whose file is missing or damaged."""
    img = np.full((size, size, 3), 200, np.uint8)
    d = np.arange(size)
    for off in (-1, 0, 1):
        k = np.clip(d + off, 0, size - 1)
        img[d, k] = img[d, size - 1 - k] = (220, 38, 38)
    return img


def _fmt_ids(ids) -> str:
    return ", ".join(str(i) for i in sorted(set(ids)))


class GenerateTab:
    """Components and handlers of the tab (handlers are methods: small, one job each)."""

    def __init__(self, page: Page):
        self.page, self.db, self.settings = page, page.db, page.settings
        self.rows = hidden_value([])
        self.current = hidden_id()
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                self._pool_controls(page)
            with gr.Column(scale=3):
                self._gallery()
                self._detail()
                self.curation.map_section()

    def _pool_controls(self, page: Page) -> None:
        gr.Markdown("#### Grow the pool")
        self.n = gr.Number(256, label="Samples to add", precision=0, minimum=1, elem_id="gen-n")
        self.steps = gr.Slider(2, 64, DEFAULT_STEPS, step=1, label="Heun steps", elem_id="gen-steps")
        self.gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-btn")
        gr.Markdown("#### Label")
        self.label_btn = gr.Button("Label pool with the grouping's classifier", elem_id="label-btn")
        self.clf_status = gr.Markdown(elem_id="clf-status")
        gr.Markdown("#### Check")
        self.verify_btn = gr.Button("Verify pool", elem_id="verify-btn")
        self.follow = page.follower("generate", "label", "verify_pool")
        self.counts_plot = gr.Plot(show_label=False, elem_id="group-counts")

    def _gallery(self) -> None:
        with gr.Row():
            self.group = gr.Dropdown(["any"], value="any", label="Group", elem_id="filter-group", scale=2)
            self.status = gr.Dropdown(list(pool.STATUSES), value="all", label="Status", elem_id="filter-status",
                                      scale=2)
            self.min_conf = gr.Slider(0, 1, 0, step=0.05, label="Confidence ≥", elem_id="filter-min", scale=2)
            self.max_conf = gr.Slider(0, 1, 1, step=0.05, label="Confidence ≤", elem_id="filter-max", scale=2)
        with gr.Row(equal_height=True):
            self.prev_btn = gr.Button("◀ Prev", size="sm", elem_id="page-prev", scale=0, min_width=90)
            self.page_no = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="page-no", scale=0,
                                     min_width=90)
            self.next_btn = gr.Button("Next ▶", size="sm", elem_id="page-next", scale=0, min_width=90)
            self.info = gr.Markdown(elem_id="page-info")
        self.gallery = gr.Gallery(label="Pool", columns=8, height="auto", allow_preview=False,
                                  elem_id="pool-gallery", elem_classes=["pixelated"], object_fit="contain")
        with gr.Row(equal_height=True):
            self.select_mode = gr.Checkbox(False, label="Select mode (click adds to selection)",
                                           elem_id="select-mode")
            self.selection = gr.Textbox(label="Selected sample ids", placeholder="e.g. 3, 5, 10-12",
                                        elem_id="selection", scale=3)
            self.sel_page = gr.Button("Select page", size="sm", elem_id="select-page", scale=0, min_width=110)
            self.sel_clear = gr.Button("Clear", size="sm", elem_id="select-clear", scale=0, min_width=80)
        with gr.Row(equal_height=True):
            self.bulk_class = gr.Dropdown([], label="Relabel selection as", elem_id="bulk-class", scale=2)
            self.bulk_btn = gr.Button("Relabel selection", elem_id="bulk-relabel", scale=1)
            self.np_btn = gr.Button("Mark not preferred", elem_id="bulk-np", scale=1)
            self.unnp_btn = gr.Button("Unmark", elem_id="bulk-unnp", scale=0, min_width=90)
        self.curation = CurationPanel(self)  # select all matching, only the selection, S from it, undo

    def _detail(self) -> None:
        with gr.Group():
            with gr.Row():
                self.detail_img = gr.Image(label="Sample", height=220, interactive=False, elem_id="detail-image",
                                           elem_classes=["pixelated"], scale=1)
                with gr.Column(scale=2):
                    self.detail_md = gr.Markdown("Click a thumbnail to inspect it.", elem_id="detail-md")
                    self.probs_plot = gr.Plot(show_label=False, elem_id="detail-probs")
            with gr.Row(equal_height=True):
                self.fix_class = gr.Dropdown([], label="Correct label", elem_id="fix-class", scale=2)
                self.fix_btn = gr.Button("Save label", variant="primary", elem_id="fix-save", scale=1)
                self.unfix_btn = gr.Button("Use classifier label", elem_id="fix-clear", scale=1)
                self.toggle_np = gr.Button("Toggle not preferred", elem_id="fix-np", scale=1)

    # -- handlers ------------------------------------------------------------------------------------
    def context(self, model_id, grouping_id):
        """(model id, grouping dict) of the header pickers."""
        gid = as_int(grouping_id)
        return as_int(model_id), (attributes.get_grouping(self.db, gid) if gid is not None else None)

    def load_page(self, model_id, grouping_id, grp, st, lo, hi, only_sel, sel_text, page_n):
        """One gallery page with captions (group, confidence, manual, not preferred)."""
        mid, g = self.context(model_id, grouping_id)
        if mid is None:
            return [], [], "Register or pick a model (Models tab).", 1
        res = (self.curation.page(mid, grouping_id, grp, st, lo, hi, sel_text, page_n) if only_sel else
               pool.gallery_page(self.db, mid, g["id"] if g else None, grp, lo, hi, st, page_n, PER_PAGE))
        items = [self._thumb(r) for r in res.rows]
        text = f"**{res.total:,}** samples match · page {res.page} of {res.pages}"
        return items, [r["id"] for r in res.rows], text, res.page

    def _placeholder_path(self) -> str:
        """The placeholder thumbnail as a file in the data directory (written once; the gallery serves files)."""
        path = self.settings.path("ui", "unreadable-sample.png")
        if not path.is_file():
            write_png(path, placeholder_image())
        return str(path)

    def _thumb(self, r: dict) -> tuple[str, str]:
        """(file, caption) of a gallery thumbnail; a sample whose PNG does not decode gets the placeholder,
        captioned as unreadable with its id and file."""
        path = self.settings.abs(r["path"])
        if verify.unreadable_reason(path) is None:
            return str(path), _caption(r)
        return self._placeholder_path(), f"#{r['id']} unreadable: {path.name}"

    def on_context(self, model_id, grouping_id):
        """Filters, class pickers, classifier status and group counts for the picked model and grouping."""
        mid, g = self.context(model_id, grouping_id)
        if g is None:
            return (gr.Dropdown(choices=["any"], value="any"), gr.Dropdown(choices=[]), gr.Dropdown(choices=[]),
                    "Pick a grouping in the header.", plots.empty("Groups in the pool", "pick a grouping"))
        classes = attributes.get_classes(self.db, g["classifier"])
        status_text = f"Classifier **{g['classifier']}**: {attributes.classifier_status(self.db, g['classifier'])}"
        return (gr.Dropdown(choices=["any", *g["groups"], "uncertain"], value="any"),
                gr.Dropdown(choices=classes, value=None), gr.Dropdown(choices=classes, value=None), status_text,
                self.counts_fig(model_id, grouping_id))

    def counts_fig(self, model_id, grouping_id):
        """Bar chart of the pool's groups."""
        mid, g = self.context(model_id, grouping_id)
        if mid is None or g is None:
            return plots.empty("Groups in the pool", "no model or grouping")
        counts = pool.group_counts(self.db, mid, g["id"])
        ordered = {k: counts.get(k, 0) for k in [*g["groups"], "uncertain"]}
        if not any(ordered.values()):
            return plots.empty("Groups in the pool", "label the pool to see its groups")
        return plots.composition(ordered, "Groups in the pool")

    @user_errors
    def generate(self, model_id, n, steps, device):
        """Queue a generate job."""
        if as_int(model_id) is None:
            raise gr.Error("Pick a model first (Models tab).")
        return pool.submit_generate(self.db, as_int(model_id), int(n or 0), int(steps), device)

    @user_errors
    def label_pool(self, model_id, grouping_id, device):
        """Queue a label job with the grouping's classifier."""
        mid, g = self.context(model_id, grouping_id)
        if mid is None or g is None:
            raise gr.Error("Pick a model and a grouping first.")
        return pool.submit_label(self.db, mid, g["classifier"], device)

    @user_errors
    def verify_pool(self, model_id, device):
        """Queue a job checking every sample's stored hash and regenerating the bad ones from their seeds."""
        if as_int(model_id) is None:
            raise gr.Error("Pick a model first (Models tab).")
        return verify.submit_verify(self.db, as_int(model_id), device)

    @user_errors
    def on_select(self, rows, select_on, sel_text, grouping_id, shift, anchor, evt: gr.SelectData):
        """A thumbnail click: toggle it in the selection (select mode; Shift adds a range) or open its detail."""
        if evt.index is None or evt.index >= len(rows):
            return (gr.skip(),) * 7
        sid = rows[evt.index]
        if select_on:
            text, anchor = self.curation.click(rows, sid, sel_text, shift, anchor)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), text, gr.skip(), anchor
        img, md, fig, cls = self.detail(sid, grouping_id)
        return sid, img, md, fig, gr.skip(), cls, gr.skip()

    def detail(self, sid, grouping_id):
        """Enlarged image, label summary + manual history, probability chart, current manual class."""
        g = attributes.get_grouping(self.db, as_int(grouping_id)) if as_int(grouping_id) is not None else None
        d = labels.sample_detail(self.db, sid, g["classifier"] if g else None)
        hist = "".join(f"\n- {t} **{a}** → {c or 'withdrawn'}" for t, a, c in d["history"][-5:])
        top = d["classes"][max(range(len(d["probs"])), key=d["probs"].__getitem__)] if d["probs"] else "not labelled"
        md = (f"**Sample #{d['id']}** · seed {d['seed']} · {d['steps']} steps · "
              f"{'**not preferred**' if d['not_preferred'] else 'preferred'}\n\n"
              f"Classifier: **{top}** · Manual: **{d['manual'] or '—'}**" + (f"\n\nManual history:{hist}" if hist else ""))
        path = self.settings.abs(d["path"])
        why = verify.unreadable_reason(path)
        if why is not None:  # still labelable: the label belongs to the seed, the file can be regenerated
            md += (f"\n\n**The image file cannot be read** ({why}): `{path}`. Labels still save. "
                   "*Verify pool* (left) regenerates it from its seed.")
            big = upscale(placeholder_image(), 192)
        else:
            big = upscale(read_png(path, f"sample #{d['id']}"), 192)  # tiny samples: crisp, enlarged pixels
        return (big[:, :, 0] if big.shape[2] == 1 else big, md,
                plots.probabilities(d["classes"], d["probs"], d["manual"]), gr.Dropdown(value=d["manual"]))

    def _classifier(self, grouping_id) -> str:
        return attributes.get_grouping(self.db, as_int(grouping_id))["classifier"]

    @user_errors
    def save_label(self, sid, cls, grouping_id):
        """Manual label for the open sample."""
        if sid is None:
            raise gr.Error("Click a sample first.")
        if not cls:
            raise gr.Error("Choose the correct class first.")
        labels.set_manual_label(self.db, [sid], self._classifier(grouping_id), cls, author="studio")
        gr.Info(f"Sample #{sid} labelled '{cls}'.")
        return self.detail(sid, grouping_id)

    @user_errors
    def clear_label(self, sid, grouping_id):
        """Withdraw the manual label (the classifier's counts again)."""
        if sid is None:
            raise gr.Error("Click a sample first.")
        labels.set_manual_label(self.db, [sid], self._classifier(grouping_id), None, author="studio")
        return self.detail(sid, grouping_id)

    @user_errors
    def toggle(self, sid, grouping_id):
        """Flip the open sample's not-preferred mark."""
        if sid is None:
            raise gr.Error("Click a sample first.")
        labels.set_not_preferred(self.db, [sid], not labels.sample_detail(self.db, sid, None)["not_preferred"])
        return self.detail(sid, grouping_id)

    # -- events --------------------------------------------------------------------------------------
    def wire(self) -> None:
        """Connect the components to the handlers."""
        page = self.page
        page_in = [page.model, page.grouping, self.group, self.status, self.min_conf, self.max_conf,
                   self.curation.only_sel, self.selection, self.page_no]
        page_out = [self.gallery, self.rows, self.info, self.page_no]
        ctx_in = [page.model, page.grouping]
        ctx_out = [self.group, self.bulk_class, self.fix_class, self.clf_status, self.counts_plot]
        detail_out = [self.detail_img, self.detail_md, self.probs_plot, self.fix_class]
        for ev in (page.model.change, page.grouping.change):
            ev(self.on_context, ctx_in, ctx_out).then(self.load_page, page_in, page_out)
        for comp in (self.group, self.status, self.min_conf, self.max_conf):
            comp.change(lambda *a: self.load_page(*a[:-1], 1), page_in, page_out)
        self.page_no.submit(self.load_page, page_in, page_out)
        self.prev_btn.click(lambda *a: self.load_page(*a[:-1], max(1, int(a[-1] or 1) - 1)), page_in, page_out)
        self.next_btn.click(lambda *a: self.load_page(*a[:-1], int(a[-1] or 1) + 1), page_in, page_out)
        self.gen_btn.click(self.generate, [page.model, self.n, self.steps, page.device], self.follow.job)
        self.label_btn.click(self.label_pool, [page.model, page.grouping, page.device], self.follow.job)
        self.verify_btn.click(self.verify_pool, [page.model, page.device], self.follow.job)
        # a finished generate/label job changes the pool: gallery, group counts and the header's pool size
        self.follow.done.change(self.load_page, page_in, page_out).then(self.counts_fig, ctx_in, self.counts_plot).then(
            lambda m: header_models(self.db, m), page.model, page.model, show_progress="hidden")
        self.gallery.select(self.on_select, [self.rows, self.select_mode, self.selection, page.grouping,
                                             self.curation.shift, self.curation.anchor],
                            [self.current, self.detail_img, self.detail_md, self.probs_plot, self.selection,
                             self.fix_class, self.curation.anchor], js=SHIFT_JS)
        self.sel_page.click(lambda rows, text: _fmt_ids(set(parse_ids(text)) | set(rows)),
                            [self.rows, self.selection], self.selection)
        self.sel_clear.click(lambda: "", None, self.selection)
        self.fix_btn.click(self.save_label, [self.current, self.fix_class, page.grouping], detail_out).success(
            self.load_page, page_in, page_out).success(self.counts_fig, ctx_in, self.counts_plot)
        self.unfix_btn.click(self.clear_label, [self.current, page.grouping], detail_out).success(
            self.load_page, page_in, page_out).success(self.counts_fig, ctx_in, self.counts_plot)
        self.toggle_np.click(self.toggle, [self.current, page.grouping], detail_out).success(
            self.load_page, page_in, page_out)
        self.curation.wire_bulk(page_in, page_out)  # relabel / mark / unmark the selection, undoable
        self.curation.wire(page_in, page_out)
        page.loaders.append((self.on_context, ctx_in, ctx_out))
        page.loaders.append((self.load_page, page_in, page_out))


def build(page: Page) -> None:
    """Lay out the tab and wire its events."""
    GenerateTab(page).wire()
