"""Studio side of weight-space merge, guide choice and fairness metrics (service level)."""
import pytest
import torch

from pipelines.checkpoints.native import load_state_file, read_metadata
from pipelines.errors import UserError
from pipelines.merge import merge_checkpoints
from studio.services import evaluate, merge_export, registry
from studio.testing import run_now, tiny_finetuned_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    st, mid, g, cks = tiny_finetuned_world(tmp_path_factory.mktemp("mg") / "data", total_kimg=0.016)
    yield st, mid, g, cks
    st.close()


def test_pass_counts_are_counted_on_the_real_sampler():
    c = merge_export.pass_counts(steps=4, skip_steps=0, omega=1.0)
    assert c["merged"]["network passes"] == 7  # Heun: 2N - 1 evaluations, one network
    assert c["bundle"]["network passes"] == 14  # both networks at every evaluation
    skipped = merge_export.pass_counts(steps=4, skip_steps=1, omega=1.0)
    assert 7 < skipped["bundle"]["network passes"] < 14  # unguided evaluations run the base alone
    assert merge_export.pass_counts(steps=4, omega=0.0)["bundle"]["network passes"] == 7


def test_merged_export_equals_pipelines_merge_and_is_registered(world, tmp_path):
    st, mid, g, cks = world
    out = merge_export.export_merged(st.db, st.settings, cks[-1]["id"], 0.75, name="m")
    _, base_path, aux_path = evaluate.pair_paths(st.db, st.settings, cks[-1]["id"])
    ref = merge_checkpoints(base_path, aux_path, 0.75, tmp_path / "ref.safetensors")
    got, want = load_state_file(out["file"]), load_state_file(ref)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    merge = read_metadata(out["file"])["provenance"]["merge"]
    assert merge["omega"] == 0.75 and len(merge["base"]["sha256"]) == 64 and len(merge["aux"]["sha256"]) == 64
    assert out["card_data"]["parents"]["aux"]["sha256"] == merge["aux"]["sha256"]
    m = registry.get_model(st.db, out["model_id"])
    assert m.source == "merge" and st.settings.abs(m.path).is_file()
    with pytest.raises(UserError, match="between"):
        merge_export.export_merged(st.db, st.settings, cks[-1]["id"], 9.0)


def test_export_tab_states_both_costs_and_the_merged_card(world):
    from studio.ui import export_tab
    st, mid, g, cks = world
    text = export_tab.cost_md(merge_export.pass_counts(steps=4, omega=1.0))
    assert export_tab.BUNDLE in text and export_tab.MERGED in text and "14 network passes (7 base + 7 auxiliary)" in text and "2.00×" in text
    out = merge_export.export_merged(st.db, st.settings, cks[-1]["id"], 0.5)
    card = export_tab.merged_md(out)
    assert out["card_data"]["parents"]["base"]["sha256"][:12] in card and "generate --model" in card


def test_the_ui_builds_with_the_export_choice(world):
    from studio.ui.app import build_ui
    st, *_ = world
    blocks = build_ui(st)
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    assert {"model-export-kind", "target-fairness", "plot-fairness", "guide-model", "crosscheck-with"} <= ids




def _gs():
    from studio.services import guide
    return guide.GuideSettings(preview_steps=2, preview_count=4, steps=2, n=16)


def test_wrong_shape_guide_is_refused_with_both_shapes(world, tmp_path):
    from studio.services import guide_model
    from studio.testing import make_tiny_model
    st, mid, g, cks = world
    big = registry.register_checkpoint(st.db, st.settings, make_tiny_model(tmp_path / "big.safetensors", resolution=16))
    offered = [v for _, v in guide_model.guide_choices(st.db, st.settings, cks[-1]["id"])]
    assert offered[0] == guide_model.AUX and f"model:{big}" not in offered  # other resolution: not offered
    with pytest.raises(UserError, match=r"sample shape.*\(1, 8, 8\).*\(1, 16, 16\)"):
        guide_model.resolve_guide(st.db, st.settings, cks[-1]["id"], f"model:{big}")
    with pytest.raises(UserError, match="cannot guide itself"):
        guide_model.resolve_guide(st.db, st.settings, cks[-1]["id"], f"model:{mid}")


def test_renders_and_measurement_keys_differ_per_guide(world, tmp_path):
    from studio.services import guide, guide_model
    from studio.testing import make_tiny_model
    st, mid, g, cks = world
    other = registry.register_checkpoint(st.db, st.settings, make_tiny_model(tmp_path / "o.safetensors", seed=7))
    choice = f"model:{other}"
    assert choice in [v for _, v in guide_model.guide_choices(st.db, st.settings, cks[-1]["id"])]
    *_, (_, aux) = guide_model.preview_stream(st.db, st.settings, cks[-1]["id"], 1.0, _gs(), guide_model.AUX)
    *_, (_, oth) = guide_model.preview_stream(st.db, st.settings, cks[-1]["id"], 1.0, _gs(), choice)
    assert aux["key"] != oth["key"] and not oth["cached"]
    # the auxiliary keeps its historical key and cache; the other guide's grid is not one of its previews
    assert aux["key"] == guide.preview(st.db, st.settings, cks[-1]["id"], 1.0, _gs())["key"]
    cached = guide._cached_previews(st.db, st.settings, cks[-1]["id"], _gs())
    assert oth["grid"] not in cached.values()
    again = guide_model.preview_stream(st.db, st.settings, cks[-1]["id"], 1.0, _gs(), choice)
    assert list(again)[-1][1]["cached"]
    gd = guide_model.resolve_guide(st.db, st.settings, cks[-1]["id"], choice)
    assert guide_model.measurement_key(_gs(), None) == _gs().key() != guide_model.measurement_key(_gs(), gd)


def test_fairness_numbers_of_target_and_guide_equal_pipelines_fairness(world):
    from pipelines.fairness import fairness_report
    from studio.services import fairness_view, guide, pool
    st, mid, g, cks = world
    target = {"0-4": 0.3, "5-9": 0.7}
    bf = pool.base_fractions(st.db, mid, g)
    base = fairness_view.base_vs_target(st.db, mid, g, target)
    want = fairness_report({k: v["count"] for k, v in bf["groups"].items()}, target)
    assert base["metrics"] == want["metrics"] and base["n"] == bf["assigned"]
    assert fairness_view.L2 in base["metrics"] and "FD" not in " ".join(base["metrics"])
    md = fairness_view.report_md(base, "base pool")
    assert "fairness discrepancy (L2)" in md and ("only" in md) == (base["n"] < 100)  # small-sample warning
    job = guide.submit_sweep(st.db, cks[-1]["id"], g["id"], _gs(), all_budgets=False, metric_omegas=[0.0, 1.0])
    assert run_now(st, job).state == "succeeded"
    curve = fairness_view.discrepancy_curve(st.db, cks[-1]["id"], g, _gs().key(), target)
    assert sorted(curve) == [0.0, 1.0]
    c = guide.curves(st.db, cks[-1]["id"], g["id"], _gs())["fraction"]
    for w, r in curve.items():
        counts = fairness_view.stored_counts(st.db, cks[-1]["id"], g["id"], _gs().key())[w]
        assert sum(counts.values()) == r["n"] and r["metrics"] == fairness_report(counts, target)["metrics"]
        assert r["fractions"]["5-9"] == pytest.approx(c["5-9"][w][0])  # the same rows as the fraction curve


def test_classifier_cross_check_agreement_and_disagree_filter(world):
    from pipelines.attributes.groupings import wilson_interval
    from studio.models import Assignment, Grouping, Sample
    from studio.services import crosscheck
    st, mid, g, cks = world
    with st.db.session() as s:  # a second classifier's grouping of the same attribute, assignments by hand
        other = Grouping(classifier="digits-second-opinion", name="digits 0-4 vs 5-9", groups=g["groups"],
                         threshold=0.5, builtin=False)
        s.add(other)
        s.flush()
        oid = other.id
        mine = {a.sample_id: a.group_name for a in s.query(Assignment).filter_by(grouping_id=g["id"])
                if a.group_name is not None}
        ids = sorted(i for i in mine if s.get(Sample, i).model_id == mid)[:30]
        flip = {"0-4": "5-9", "5-9": "0-4"}
        for k, i in enumerate(ids):  # every third sample disagrees; the 30th gets no group from B
            grp = None if k == 29 else (flip[mine[i]] if k % 3 == 0 else mine[i])
            s.add(Assignment(sample_id=i, grouping_id=oid, group_name=grp, confidence=0.9, source="classifier"))
    assert any(p["id"] == oid for p in crosscheck.partners(st.db, g["id"]))
    r = crosscheck.agreement(st.db, mid, g["id"], oid)
    assert r["n"] == 29 and r["disagree"] == 10 and r["agree"] == 19
    assert r["rate"]["ci"] == list(wilson_interval(19, 29)) and r["warnings"]
    page = crosscheck.disagreement_page(st.db, mid, g["id"], oid, per_page=4)
    assert page.total == 10 and page.pages == 3 and all(x["group_a"] != x["group_b"] for x in page.rows)
    assert {x["id"] for x in page.rows} <= {ids[k] for k in range(0, 29, 3)}
    with pytest.raises(UserError, match="two classifiers"):
        crosscheck.agreement(st.db, mid, g["id"], g["id"])


def test_cross_check_text_states_rate_interval_and_counts():
    from studio.ui.fairness_guide_panels import crosscheck_md
    r = {"a": "A", "b": "B", "n": 29, "agree": 19, "disagree": 10, "rate": {"value": 19 / 29, "ci": [0.47, 0.8]},
         "table": {"x": {"x": 10, "y": 4}, "y": {"x": 6, "y": 9}}, "warnings": ["only 29"], "how": "both assign"}
    md = crosscheck_md(r)
    assert "19 of 29" in md and "65.5%" in md and "47.0–80.0%" in md and "| A: x | 10 | 4 |" in md and "only 29" in md


def test_discrepancy_figure_states_sample_size_and_interval():
    from pipelines.fairness import fairness_report
    from studio.ui.fairness_guide_panels import curve_figure
    t = {"a": 0.3, "b": 0.7}
    fig = curve_figure({0.0: fairness_report({"a": 50, "b": 50}, t), 1.0: fairness_report({"a": 40, "b": 60}, t)}, 0.5)
    assert "n = 100 per ω, 95% bootstrap" in fig.layout.title.text and "L2" in fig.layout.title.text
    assert list(fig.data[0].x) == [0.0, 1.0] and fig.data[0].y[0] == pytest.approx(2 ** 0.5 * 0.2)


def test_omega_zero_is_the_base_alone_whatever_the_guide(world, tmp_path):
    from studio.services import guide_model
    from studio.testing import make_tiny_model
    st, mid, g, cks = world
    other = registry.register_checkpoint(st.db, st.settings, make_tiny_model(tmp_path / "z.safetensors", seed=9))
    *_, (_, aux) = guide_model.preview_stream(st.db, st.settings, cks[-1]["id"], 0.0, _gs(), guide_model.AUX)
    *_, (_, oth) = guide_model.preview_stream(st.db, st.settings, cks[-1]["id"], 0.0, _gs(), f"model:{other}")
    assert oth["key"] == aux["key"] and oth["cached"]
