"""Guide: score space vs weight-space merge with any guide (keys, renders, jobs), the merged export's card,
and the classifier-error-aware (CLEAM-style) fractions beside the raw ones."""
import numpy as np
import pytest

from pipelines.errors import UserError
from studio.services import guide, guide_model, merge_export, merge_guide
from studio.testing import run_now, tiny_finetuned_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    st, mid, g, cks = tiny_finetuned_world(tmp_path_factory.mktemp("mc") / "data", total_kimg=0.016)
    yield st, mid, g, cks
    st.close()


def _gs(**kw):
    return guide.GuideSettings(**{"preview_steps": 2, "preview_count": 4, "steps": 2, "n": 16, **kw})


def test_measurement_keys_name_mode_and_guide_and_keep_the_auxiliarys():
    gd = {"sha256": "ab" * 32}
    score_aux, merged_aux = guide_model.measurement_key(_gs(), None), guide_model.measurement_key(_gs(), None, "merged")
    assert score_aux == _gs().key() and guide_model.is_default_key(score_aux)  # existing caches keep working
    keys = {score_aux, merged_aux, guide_model.measurement_key(_gs(), gd, "score"),
            guide_model.measurement_key(_gs(), gd, "merged")}
    assert len(keys) == 4 and all(not guide_model.is_default_key(k) for k in keys - {score_aux})
    assert merged_aux.startswith("merged:aux:") and len(max(keys, key=len)) <= 64
    # one network has no guidance interval: the merged key does not depend on it, the score key does
    assert guide_model.measurement_key(_gs(skip_steps=1), None, "merged") == merged_aux
    assert guide_model.measurement_key(_gs(skip_steps=1), gd, "score") != guide_model.measurement_key(_gs(), gd)
    with pytest.raises(UserError, match="Unknown guidance mode"):
        guide_model.measurement_key(_gs(), None, "both")


def test_merged_preview_is_the_exported_merge_and_cached_apart(world):
    from pipelines.checkpoints.native import load_model
    from pipelines.generate import generate_images
    from pipelines.sampler import SamplerConfig
    st, mid, g, cks = world
    ck = cks[-1]["id"]
    merged = merge_guide.preview(st.db, st.settings, ck, 0.5, _gs(), "merged")
    score = merge_guide.preview(st.db, st.settings, ck, 0.5, _gs(), "score")
    assert merged["key"] != score["key"] and not merged["cached"]
    assert score["key"] == guide.preview(st.db, st.settings, ck, 0.5, _gs())["key"]  # the Guide's own cache
    assert merged["grid"] not in guide._cached_previews(st.db, st.settings, ck, _gs()).values()
    out = merge_export.export_merged(st.db, st.settings, ck, 0.5, name="m05")
    want = generate_images(load_model(out["file"])[0], range(4), SamplerConfig(num_steps=2))
    got = np.load(st.settings.abs(merged["grid"]).with_suffix(".npz"))["images"]
    assert np.array_equal(got, want)  # the in-memory merge renders exactly what the exported file renders
    assert merge_guide.preview(st.db, st.settings, ck, 0.5, _gs(), "merged")["cached"]
    with pytest.raises(UserError, match="no guidance interval"):
        merge_guide.preview(st.db, st.settings, ck, 1.0, _gs(skip_steps=1), "merged")


def test_merged_card_is_not_the_bundles_measurement(world):
    from studio.services import export
    st, mid, g, cks = world
    ck = cks[-1]["id"]
    job = guide.submit_sweep(st.db, ck, g["id"], _gs(), all_budgets=False, metric_omegas=[1.0])
    assert run_now(st, job).state == "succeeded"
    assert export._measured(st.db, ck, 1.0)  # score space measured at this ω ...
    out = merge_export.export_merged(st.db, st.settings, ck, 1.0, name="m1", gs=_gs(), grouping_id=g["id"])
    card = out["card_data"]
    assert card["measured"] is None and card["measured_note"].startswith("not measured")  # ... not copied
    md = st.settings.abs(out["card"]).read_text()
    assert "not measured" in md and card["parents"]["aux"]["sha256"] in md


def test_corrected_fractions_equal_pipelines_on_the_same_counts(world):
    from pipelines.fairness import digits_heldout_confusion, fairness_report
    from studio.services import attributes, fairness_view
    st, mid, g, cks = world
    target = {"0-4": 0.3, "5-9": 0.7}
    job = guide.submit_sweep(st.db, cks[-1]["id"], g["id"], _gs(), all_budgets=False, metric_omegas=[0.0])
    assert run_now(st, job).state == "succeeded"
    curve = fairness_view.discrepancy_curve(st.db, cks[-1]["id"], g, _gs().key(), target)
    counts = fairness_view.stored_counts(st.db, cks[-1]["id"], g["id"], _gs().key())[0.0]
    clf = attributes.load_classifier(st.db, "digits")
    conf = digits_heldout_confusion(clf, attributes.engine_grouping(g), g["threshold"])
    want = fairness_report(counts, target, confusion=conf)
    assert curve[0.0]["corrected"] == want["corrected"] and curve[0.0]["metrics"] == want["metrics"]
    md = fairness_view.report_md(curve[0.0], "at ω = 0")
    assert "corrected for classifier errors (95% bootstrap)" in md and "held-out split of sklearn digits" in md
    for grp, f in want["corrected"]["fractions"].items():
        assert f"{100 * f['value']:.1f}% [{100 * f['ci'][0]:.1f}–{100 * f['ci'][1]:.1f}]" in md
    # a classifier without a measured confusion: raw fractions only, and the table says why
    other = dict(g, classifier="deepface-gender")
    conf_none, note = fairness_view.classifier_confusion(st.db, other)
    r = fairness_view.report(counts, target, conf_none, note)
    assert conf_none is None and "corrected" not in r
    assert "Not corrected: deepface-gender has no measured confusion" in fairness_view.report_md(r, "x")


def _rows(st, ck, key):
    from studio.models import Metric
    with st.db.session(read_only=True) as s:
        return sorted((m.id, m.kind, m.group_name, m.omega, m.value) for m in s.query(Metric).filter_by(
            checkpoint_id=ck, settings_key=key))


def test_grid_and_find_in_merged_mode_and_with_another_guide_store_under_their_own_keys(world, tmp_path):
    from pipelines.attributes.groupings import label_counts
    from pipelines.checkpoints.native import load_model
    from pipelines.generate import generate_images
    from pipelines.sampler import SamplerConfig
    from studio.services import attributes, export, registry
    from studio.testing import make_tiny_model
    st, mid, g, cks = world
    ck, gs = cks[-1]["id"], _gs()
    first = guide.submit_sweep(st.db, ck, g["id"], gs, all_budgets=False, metric_omegas=[0.0, 1.0])
    assert run_now(st, first).state == "succeeded"
    plain = _rows(st, ck, gs.key())
    jobs = merge_guide.submit_compare_sweeps(st.db, st.settings, ck, g["id"], gs, metric_omegas=[0.0, 1.0])
    assert all(run_now(st, j).state == "succeeded" for j in jobs.values())
    assert _rows(st, ck, gs.key()) == plain  # score space with the auxiliary: its key and rows as they were
    mkey = guide_model.measurement_key(gs, None, "merged")
    merged = merge_guide.curves(st.db, ck, g["id"], mkey)
    score = merge_guide.curves(st.db, ck, g["id"], gs.key())
    assert sorted(merged["fraction"]["5-9"]) == [0.0, 1.0]
    assert merged["fraction"]["5-9"][0.0] == score["fraction"]["5-9"][0.0]  # ω = 0: the base alone in both modes
    # the merged model's card carries that measurement, which is what the exported file generates
    out = merge_export.export_merged(st.db, st.settings, ck, 1.0, name="m1g", gs=gs, grouping_id=g["id"])
    m = out["card_data"]["measured"]
    images = generate_images(load_model(out["file"])[0], range(guide.METRIC_SEED0, guide.METRIC_SEED0 + gs.n),
                             SamplerConfig(num_steps=gs.steps))
    clf, eg = attributes.load_classifier(st.db, "digits"), attributes.engine_grouping(g)
    want = label_counts(eg.assign(clf.predict_proba(images), clf.classes, g["threshold"])[0], eg)
    assert m["counts"] == {k: want[k] for k in g["groups"]} and m["settings_key"] == mkey and m["n"] == gs.n
    assert m["fractions"]["5-9"]["value"] == pytest.approx(merged["fraction"]["5-9"][1.0][0])
    assert "only 16 images" in out["card_data"]["measured_note"]  # small-sample warning on the card
    assert "measured on this merged model: n = 16" in st.settings.abs(out["card"]).read_text()
    assert all(":" not in k for k in export._measured(st.db, ck, 1.0))  # the bundle's card never quotes it
    # another guide (same shape): its own key in score space, the auxiliary's rows untouched
    other = registry.register_checkpoint(st.db, st.settings, make_tiny_model(tmp_path / "g.safetensors", seed=7))
    job = merge_guide.submit_sweep(st.db, st.settings, ck, g["id"], gs, "score", f"model:{other}", [1.0])
    assert run_now(st, job).state == "succeeded"
    gd = guide_model.resolve_guide(st.db, st.settings, ck, f"model:{other}")
    okey = guide_model.measurement_key(gs, gd, "score")
    assert okey not in (gs.key(), mkey) and sorted(merge_guide.curves(st.db, ck, g["id"], okey)["fraction"]["5-9"]) == [1.0]
    assert _rows(st, ck, gs.key()) == plain
    # find ω in merged mode: reuses its own stored points, answers on its own scale
    job = merge_guide.submit_find(st.db, st.settings, ck, g["id"], "5-9", 0.5, gs, "merged", iterations=1)
    v = run_now(st, job)
    assert v.state == "succeeded" and v.result["mode"] == "merged"
    assert merge_guide.latest_find(st.db, ck, mkey, "5-9").id == job
    assert merge_guide.latest_find(st.db, ck, gs.key(), "5-9") is None or \
        merge_guide.latest_find(st.db, ck, gs.key(), "5-9").id != job
    with pytest.raises(UserError, match="no guidance interval"):
        merge_guide.submit_find(st.db, st.settings, ck, g["id"], "5-9", 0.5, _gs(skip_steps=1), "merged")


def test_comparison_figures_state_both_modes_and_sample_sizes():
    from studio.ui.merge_compare_panel import fd_figure, fraction_figure
    c = {"score": {"fraction": {"b": {0.0: (0.5, 0.4, 0.6), 1.0: (0.6, 0.5, 0.7)}}, "fd_group": {"b": {0.0: 9.0}},
                   "count": {"a": {0.0: 50, 1.0: 40}, "b": {0.0: 50, 1.0: 60}}},
         "merged": {"fraction": {"b": {0.0: (0.5, 0.4, 0.6)}}, "fd_group": {}, "count": {"a": {0.0: 50}, "b": {0.0: 50}}}}
    fig = fraction_figure(c, "b", 0.7, 0.5)
    assert "score space 100" in fig.layout.title.text and "merged 100" in fig.layout.title.text
    names = [t.name for t in fig.data if t.name]
    assert names == [merge_guide.MODE_LABELS["score"], merge_guide.MODE_LABELS["merged"]]
    assert [t.name for t in fd_figure(c, "FD-digits", 0.5).data] == ["b · score space"]


def test_comparison_panel_builds_and_draws_both_modes(world):
    import gradio as gr
    from studio.ui.app import build_ui
    from studio.ui.common import Page
    from studio.ui.merge_compare_panel import ComparePanel
    st, mid, g, cks = world
    ids = {getattr(b, "elem_id", None) for b in build_ui(st).blocks.values()}
    assert {"compare-guide", "compare-sweep", "compare-find-merged", "compare-grid-merged",
            "plot-compare-fraction", "plot-compare-fd"} <= ids
    with gr.Blocks():
        panel = ComparePanel(Page(st))
    gs_vals = (2, 4, 2, 16, 0, False)
    closed = panel.figures(False, cks[-1]["id"], g["id"], 1.0, "aux", "5-9", 70, *gs_vals)
    assert all(x == gr.skip() for x in closed)  # a closed panel draws nothing
    score, merged, caption = panel.grids(True, cks[-1]["id"], 0.5, "aux", "cpu", *gs_vals)
    assert score and merged and score != merged and "4 preview seeds" in caption
    frac, fd, found = panel.figures(True, cks[-1]["id"], g["id"], 1.0, "aux", "5-9", 70, *gs_vals)
    assert "score space" in frac.layout.title.text and "| find ω |" in found


def test_bundle_card_carries_corrected_fractions_of_its_own_measurement(world):
    from pipelines.fairness import digits_heldout_confusion, fairness_report
    from studio.services import attributes, export
    st, mid, g, cks = world
    ck, gs = cks[-1]["id"], _gs()
    job = guide.submit_sweep(st.db, ck, g["id"], gs, all_budgets=False, metric_omegas=[1.0])
    assert run_now(st, job).state == "succeeded"
    from studio.models import SyntheticSet
    with st.db.session() as s:  # this S was built with a mix, not a target: give it one
        for row in s.query(SyntheticSet):
            row.target = {"0-4": 30.0, "5-9": 70.0}
    out = export.export_bundle(st.db, st.settings, ck, 1.0, steps=2, name="corr", classifier="digits")
    fair = out["card_data"]["fairness_vs_target"]
    assert set(fair) == {gs.key()}  # score space with the auxiliary only
    target = {"0-4": 0.3, "5-9": 0.7}
    counts = out["card_data"]["measured"][gs.key()]["counts"]
    conf = digits_heldout_confusion(attributes.load_classifier(st.db, "digits"), attributes.engine_grouping(g),
                                    g["threshold"])
    assert fair[gs.key()]["corrected"] == fairness_report(counts, target, confusion=conf)["corrected"]
    assert "classifier-error-aware fractions" in st.settings.abs(out["card"]).read_text()
