"""Curation at scale inside Generate & label: the pool's embedding map linked with the gallery,
bulk selection (shift-click range, select page, select all matching) with undo, S from a
selection, and the near-duplicate finder.

Plot -> gallery: the box or lasso drawn on the map is sent (in map coordinates) through an HTML
component's value; the server picks the points inside from the cached projection, they become
the gallery's selection and the gallery shows only them. Gallery -> plot: the selection is drawn
highlighted on the map.
"""
from __future__ import annotations

import re

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from ..services import curation
from .common import as_int, hidden_id, hidden_value, user_errors
from .plots import LAYOUT, PALETTE, empty

COLOR_BY = ("group", "confidence", "not preferred")
MAP_TITLE = "Embedding map"

# Installed once per page: remembers whether Shift was held on the last click (range selection in
# the gallery) and sends the geometry of a box/lasso drawn on the map (in map coordinates) to the
# server through this HTML component's value; the server finds the points inside.
BRIDGE_JS = """
window.simsShift = false;
if (!window.__simsShiftHook) {
  window.__simsShiftHook = true;
  document.addEventListener('click', (e) => { window.simsShift = e.shiftKey; }, true);
}
const onSelected = (ev) => {
  if (!ev) return;
  let geo = null;
  if (ev.range && ev.range.x) geo = {box: [ev.range.x[0], ev.range.x[1], ev.range.y[0], ev.range.y[1]]};
  else if (ev.lassoPoints && ev.lassoPoints.x) geo = {lasso: [ev.lassoPoints.x, ev.lassoPoints.y]};
  if (geo) { geo.t = Date.now(); props.value = JSON.stringify(geo); trigger('change'); }
};
// Re-register on every tick: a redraw may replace the plot or drop its listeners (off + on keeps
// exactly one). A remount of this component replaces the previous timer and handler.
const previous = window.__simsOnSelected;
window.__simsOnSelected = onSelected;
if (window.__simsMapTimer) clearInterval(window.__simsMapTimer);
window.__simsMapTimer = setInterval(() => {
  const el = document.querySelector('#emb-map .js-plotly-plot');
  if (!el || !el.on) return;
  if (previous) el.removeListener('plotly_selected', previous);
  el.removeListener('plotly_selected', onSelected);
  el.on('plotly_selected', onSelected);
}, 400);
"""
# The gallery click handler's inputs are (rows, select mode, selection, grouping, shift, anchor).
SHIFT_JS = "(...a) => { a[4] = !!window.simsShift; return a.slice(0, 6); }"


def fmt_ranges(ids) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9, 10': runs of 3 or more as ranges (short even for 50,000 ids)."""
    a = np.unique(np.asarray(list(ids), dtype=np.int64))
    if not len(a):
        return ""
    breaks = np.flatnonzero(np.diff(a) != 1)
    starts, ends = np.r_[a[0], a[breaks + 1]], np.r_[a[breaks], a[-1]]
    parts = []
    for s, e in zip(starts, ends):
        parts += [f"{s}-{e}"] if e - s >= 2 else [str(v) for v in range(s, e + 1)]
    return ", ".join(parts)


_VALID_IDS = re.compile(r"[,\s]*(?:\d+(?:-\d+)?(?:[,\s]+|\Z))*")
_ID_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse(text: str) -> list[int]:
    """Selection text -> ids, read as the gallery's parser reads it ('3, 5, 10-12'), in one regex pass
    (a selection of a map box holds thousands of parts); text it cannot read goes to the gallery's
    parser, which names the bad part."""
    if not _VALID_IDS.fullmatch(text or ""):
        from .generate_tab import parse_ids  # late: generate_tab imports this module
        return parse_ids(text)
    ids: list[int] = []
    for a, b in _ID_OR_RANGE.findall(text):
        ids.extend(range(int(a), int(b or a) + 1))
    return ids


def model_or_error(model_id) -> int:
    """The picked model id, or a clear error."""
    mid = as_int(model_id)
    if mid is None:
        raise gr.Error("Pick a model first (Models tab).")
    return mid


def map_figure(m: dict | None, attrs: dict | None, color_by: str, selected: set[int]) -> go.Figure:
    """Scatter of the pool map coloured by group / confidence / not preferred; selected points highlighted."""
    if m is None:
        return empty(MAP_TITLE, "no map yet: press 'Compute map'")
    n = len(m["ids"])
    fig = go.Figure()
    sel = np.isin(m["ids"], np.fromiter(selected, dtype=np.int64)) if selected else None

    def add(name, mask, **marker):
        idx = np.flatnonzero(mask)
        fig.add_trace(go.Scattergl(
            x=m["xy"][idx, 0], y=m["xy"][idx, 1], customdata=m["ids"][idx], mode="markers", name=name,
            marker=dict(size=5 if n < 5000 else 3, **marker), hovertemplate="#%{customdata}<extra>" + name + "</extra>",
            selectedpoints=None if sel is None else np.flatnonzero(sel[idx]).tolist(),
            selected=dict(marker=dict(opacity=1.0)), unselected=dict(marker=dict(opacity=0.12))))

    if color_by == "confidence":
        conf = attrs["confidence"]
        labelled = ~np.isnan(conf)
        add("confidence", labelled, color=np.where(labelled, conf, 0)[labelled], colorscale="Viridis", cmin=0,
            cmax=1, colorbar=dict(title="conf.", thickness=12))
        add("unlabelled", ~labelled, color="#cbd5e1")
    elif color_by == "not preferred":
        add("preferred", ~attrs["not_preferred"], color="#94a3b8")
        add("not preferred", attrs["not_preferred"], color="#e11d48")
    else:
        groups = attrs["group"]
        names = sorted({g for g in groups if g is not None})
        for k, g in enumerate(names):
            add(g, groups == g, color=PALETTE[k % len(PALETTE)])
        add("unlabelled", np.array([g is None for g in groups], dtype=bool), color="#cbd5e1")
    title = (f"{MAP_TITLE} · {m['method']} of {m['feature'].split(':')[0]} features · n = {n:,}"
             + (f" · {len(selected):,} selected" if selected else ""))
    # No named template: copying plotly_white costs about 0.5 s per figure, as much as 50,000 points.
    fig.update_layout(**{**LAYOUT, "height": 460, "legend": dict(orientation="h", y=-0.08, x=0), "template": "none"},
                      paper_bgcolor="white", plot_bgcolor="white",
                      title=dict(text=title, x=0, font=dict(size=14)), dragmode="lasso", uirevision="map")
    axis = dict(showticklabels=False, gridcolor="#e5e7eb", zerolinecolor="#cbd5e1", showline=False)
    fig.update_xaxes(title=f"{m['method']} 1", **axis)
    fig.update_yaxes(title=f"{m['method']} 2", **axis)
    return fig


class CurationPanel:
    """Extra bulk controls under the gallery and the map / near-duplicate sections of the tab."""

    def __init__(self, tab):
        self.tab, self.db, self.settings = tab, tab.db, tab.settings
        self.anchor = hidden_id()                         # last clicked sample (shift-click range start)
        self.shift = gr.Checkbox(False, visible="hidden")  # set from the browser at each gallery click
        with gr.Row(equal_height=True):
            self.only_sel = gr.Checkbox(False, label="Show only the selection", elem_id="filter-selected")
            self.sel_all = gr.Button("Select all matching", size="sm", elem_id="select-all", scale=0,
                                     min_width=150)
            self.set_name = gr.Textbox(label="Name of S", placeholder="selection (N)", elem_id="sel-set-name",
                                       scale=1)
            self.to_set = gr.Button("Build S from selection", size="sm", elem_id="sel-to-set", scale=0,
                                    min_width=170)
            self.drop_dups = gr.Checkbox(False, label="drop near-duplicate copies", elem_id="sel-drop-dups",
                                         scale=0, min_width=150)
            self.undo_btn = gr.Button("Undo last bulk action", size="sm", elem_id="bulk-undo", scale=0,
                                      min_width=170)
        self.undo_md = gr.Markdown("", elem_id="bulk-undo-info")

    def map_section(self) -> None:
        """The embedding map and the near-duplicate finder (two accordions)."""
        with gr.Accordion("Embedding map of the pool", open=True, elem_id="emb-accordion"):
            with gr.Row(equal_height=True):
                self.color_by = gr.Radio(list(COLOR_BY), value="group", label="Colour by", elem_id="emb-color",
                                         scale=2)
                self.map_btn = gr.Button("Compute map", elem_id="emb-compute", scale=1)
            self.follow = self.tab.page.follower("embed")
            self.map_md = gr.Markdown(elem_id="emb-status")
            self.map_plot = gr.Plot(show_label=False, elem_id="emb-map")
            self.bridge = gr.HTML("", html_template="", js_on_load=BRIDGE_JS, elem_id="emb-bridge")
        with gr.Accordion("Near-duplicates", open=False, elem_id="dup-accordion"):
            with gr.Row(equal_height=True):
                self.dup_thr = gr.Slider(0.90, 1.0, 0.99, step=0.001, label="Cosine similarity above",
                                         elem_id="dup-threshold", scale=3)
                self.dup_btn = gr.Button("Find near-duplicates", elem_id="dup-find", scale=1)
            self.dup_md = gr.Markdown(elem_id="dup-result")
            self.dup_groups = hidden_value([])
            with gr.Row():
                self.dup_sel = gr.Button("Select the extra copies", size="sm", elem_id="dup-select")
                self.dup_np = gr.Button("Mark the extra copies not preferred", size="sm", elem_id="dup-np")

    # -- selection ----------------------------------------------------------------------------------
    def click(self, rows: list[int], sid: int, sel_text: str, shift: bool, anchor) -> tuple[str, int]:
        """Select-mode click: toggle the sample, or with Shift add the range from the last click; (text, anchor)."""
        ids = set(parse(sel_text))
        a = as_int(anchor)
        if shift and a in rows:
            i, j = sorted((rows.index(a), rows.index(sid)))
            ids |= set(rows[i:j + 1])
        else:
            ids ^= {sid}
        return fmt_ranges(ids), sid

    @user_errors
    def select_all(self, model_id, grouping_id, grp, st, lo, hi):
        """Every sample matching the gallery's filters."""
        mid = model_or_error(model_id)
        ids = curation.matching_ids(self.db, mid, as_int(grouping_id), grp, lo, hi, st)
        gr.Info(f"{len(ids):,} samples selected.")
        return fmt_ranges(ids)

    @user_errors
    def from_map(self, model_id, grouping_id, geometry):
        """A box/lasso drawn on the map -> the points inside become the gallery's selection, shown alone."""
        import json
        mid, g = self.tab.context(model_id, grouping_id)
        m = curation.load_map(self.db, self.settings, mid, g["classifier"]) if mid and g else None
        if m is None or not geometry:
            return gr.skip(), gr.skip()
        ids = curation.ids_in_selection(m, json.loads(geometry))
        return fmt_ranges(ids), bool(ids)

    def page(self, model_id, grouping_id, grp, st, lo, hi, sel_text, page_n):
        """A gallery page of the selection (the tab calls this when 'Show only the selection' is on)."""
        from .generate_tab import PER_PAGE
        return curation.selection_page(self.db, int(model_id), parse(sel_text), as_int(grouping_id), grp, lo, hi,
                                       st, page_n, per_page=PER_PAGE)

    # -- bulk actions -------------------------------------------------------------------------------
    @user_errors
    def relabel(self, model_id, sel_text, cls, grouping_id):
        """Manual label for the whole selection (undoable)."""
        if not cls:
            raise gr.Error("Choose the class to give the selection.")
        n = curation.bulk_label(self.db, self.settings, model_or_error(model_id), parse(sel_text),
                                self.tab._classifier(grouping_id), cls)
        gr.Info(f"{n} samples relabelled '{cls}' (Undo last bulk action reverts it).")
        return self.undo_text(model_id)

    @user_errors
    def mark(self, model_id, sel_text, flag: bool):
        """Mark or unmark the selection not preferred (undoable)."""
        n = curation.bulk_not_preferred(self.db, self.settings, model_or_error(model_id), parse(sel_text), flag)
        gr.Info(f"{n} samples {'marked' if flag else 'unmarked'} not preferred.")
        return self.undo_text(model_id)

    @user_errors
    def undo(self, model_id):
        """Revert the last bulk action exactly."""
        gr.Info(curation.undo_last(self.db, self.settings, model_or_error(model_id)))
        return self.undo_text(model_id)

    def undo_text(self, model_id) -> str:
        """What undo would revert."""
        if as_int(model_id) is None:
            return ""
        return curation.describe(curation.last_action(self.settings, int(model_id)))

    @user_errors
    def make_set(self, model_id, sel_text, grouping_id, name, drop, groups):
        """S = the selection (less the near-duplicates' extra copies when asked)."""
        from pipelines.embedding import extra_copies
        mid, g = self.tab.context(model_id, grouping_id)
        if mid is None:
            raise gr.Error("Pick a model first (Models tab).")
        if drop and not groups:
            raise gr.Error("No near-duplicates listed: press 'Find near-duplicates' first, or untick 'drop'.")
        exclude = extra_copies(groups) if drop else []
        ids = parse(sel_text)
        sid = curation.build_set_from_selection(self.db, mid, ids, g, (name or "").strip(), exclude)
        dropped = len(set(ids) & set(exclude))
        gr.Info(f"Synthetic set #{sid} built from the selection" + (f" less {dropped} near-duplicate copies"
                                                                    if drop else "") + ": pick it in the Fine-tune tab.")

    # -- map ----------------------------------------------------------------------------------------
    @user_errors
    def compute(self, model_id, grouping_id, device):
        """Queue the map job for the grouping's classifier."""
        mid, g = self.tab.context(model_id, grouping_id)
        if mid is None or g is None:
            raise gr.Error("Pick a model and a grouping first.")
        return curation.submit_map(self.db, mid, g["classifier"], device)

    def draw(self, model_id, grouping_id, color_by, sel_text):
        """(map figure, status line) from the cache."""
        mid, g = self.tab.context(model_id, grouping_id)
        if mid is None or g is None:
            return empty(MAP_TITLE, "pick a model and a grouping"), ""
        m = curation.load_map(self.db, self.settings, mid, g["classifier"])
        if m is None:
            return map_figure(None, None, color_by, set()), "No map of this pool yet."
        attrs = curation.point_attributes(self.db, mid, g["id"], m["ids"])
        try:
            selected = set(parse(sel_text))
        except gr.Error:
            selected = set()
        note = (f"**{m['missing']:,} samples were added since this map was computed**: press *Compute map* "
                "to include them." if m["missing"] else
                "Draw a box or lasso on the map to select samples; the gallery then shows only them.")
        return map_figure(m, attrs, color_by, selected), note

    # -- near-duplicates ----------------------------------------------------------------------------
    @user_errors
    def find_dups(self, model_id, grouping_id, threshold):
        """Groups of near-duplicates (cosine of the map's features above the threshold)."""
        mid, g = self.tab.context(model_id, grouping_id)
        if mid is None or g is None:
            raise gr.Error("Pick a model and a grouping first.")
        out = curation.near_duplicates(self.db, self.settings, mid, g["classifier"], threshold)
        groups = out["groups"]
        extra = sum(len(x) - 1 for x in groups)
        lines = [f"**{len(groups)} groups**, {extra} extra copies among {out['searched']:,} samples "
                 f"({out['feature'].split(':')[0]} features, cosine > {out['threshold']:.3f})."]
        if out["missing"]:
            lines.append(f"{out['missing']:,} newer samples have no features yet: recompute the map to search them.")
        lines += [f"- {len(x)} samples: {fmt_ranges(x)}" for x in groups[:25]]
        if len(groups) > 25:
            lines.append(f"- … and {len(groups) - 25} more groups")
        return "\n".join(lines), groups

    def dup_extra(self, groups):
        """Everything but the first sample of each group becomes the selection, shown alone."""
        from pipelines.embedding import extra_copies
        ids = extra_copies(groups or [])
        return fmt_ranges(ids), bool(ids)

    @user_errors
    def dup_mark(self, model_id, groups):
        """Mark the extra copies not preferred (one undoable bulk action)."""
        from pipelines.embedding import extra_copies
        ids = extra_copies(groups or [])
        if not ids:
            raise gr.Error("No near-duplicates listed: press 'Find near-duplicates' first.")
        return self.mark(model_id, fmt_ranges(ids), True)

    # -- events -------------------------------------------------------------------------------------
    def wire(self, page_in, page_out) -> None:
        """Connect the panel (page_in/page_out: the tab's gallery loader inputs and outputs)."""
        tab, page = self.tab, self.tab.page
        filters = [page.model, page.grouping, tab.group, tab.status, tab.min_conf, tab.max_conf]
        draw_in = [page.model, page.grouping, self.color_by, tab.selection]
        draw_out = [self.map_plot, self.map_md]
        reload = dict(fn=tab.load_page, inputs=page_in, outputs=page_out)
        counts = dict(fn=tab.counts_fig, inputs=[page.model, page.grouping], outputs=tab.counts_plot)
        self.sel_all.click(self.select_all, filters, tab.selection)
        self.only_sel.input(lambda *a: tab.load_page(*a[:-1], 1), page_in, page_out)
        self.bridge.change(self.from_map, [page.model, page.grouping, self.bridge], [tab.selection, self.only_sel]).then(
            **reload)
        tab.selection.change(self.draw, draw_in, draw_out, trigger_mode="always_last", show_progress="hidden")
        self.color_by.change(self.draw, draw_in, draw_out)
        self.map_btn.click(self.compute, [page.model, page.grouping, page.device], self.follow.job)
        self.follow.done.change(self.draw, draw_in, draw_out)
        self.undo_btn.click(self.undo, page.model, self.undo_md).success(**reload).success(**counts).success(
            self.draw, draw_in, draw_out)
        self.to_set.click(self.make_set, [page.model, tab.selection, page.grouping, self.set_name, self.drop_dups,
                                          self.dup_groups], None)
        self.dup_btn.click(self.find_dups, [page.model, page.grouping, self.dup_thr], [self.dup_md, self.dup_groups])
        self.dup_sel.click(self.dup_extra, self.dup_groups, [tab.selection, self.only_sel]).then(**reload)
        self.dup_np.click(self.dup_mark, [page.model, self.dup_groups], self.undo_md).success(**reload).success(
            self.draw, draw_in, draw_out)
        for ev in (page.model.change, page.grouping.change):
            ev(self.draw, draw_in, draw_out).then(self.undo_text, page.model, self.undo_md)
        page.loaders.append((self.draw, draw_in, draw_out))
        page.loaders.append((self.undo_text, [page.model], [self.undo_md]))

    def wire_bulk(self, page_in, page_out):
        """The tab's bulk buttons, routed through the undoable actions."""
        tab, page = self.tab, self.tab.page
        reload = dict(fn=tab.load_page, inputs=page_in, outputs=page_out)
        counts = dict(fn=tab.counts_fig, inputs=[page.model, page.grouping], outputs=tab.counts_plot)
        after = dict(fn=self.draw, inputs=[page.model, page.grouping, self.color_by, tab.selection],
                     outputs=[self.map_plot, self.map_md])
        tab.bulk_btn.click(self.relabel, [page.model, tab.selection, tab.bulk_class, page.grouping],
                           self.undo_md).success(**reload).success(**counts).success(**after)
        tab.np_btn.click(lambda m, t: self.mark(m, t, True), [page.model, tab.selection], self.undo_md).success(
            **reload).success(**after)
        tab.unnp_btn.click(lambda m, t: self.mark(m, t, False), [page.model, tab.selection], self.undo_md).success(
            **reload).success(**after)
