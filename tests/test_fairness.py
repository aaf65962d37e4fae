"""Fairness metrics against hand-computed values; empty groups; targets; CLEAM-style correction."""
import math

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.fairness import (Confusion, KL_EMPTY_NOTE, confusion_from_labels, corrected_fractions,
                                fairness_discrepancy, fairness_report, format_report, kl_divergence,
                                parse_share, parse_target, total_variation)


def test_point_metrics_by_hand():
    p, q = [0.6, 0.4], [0.7, 0.3]
    assert fairness_discrepancy(p, q) == pytest.approx(math.sqrt(0.01 + 0.01))
    assert total_variation(p, q) == pytest.approx(0.1)
    assert kl_divergence(p, q) == pytest.approx(0.6 * math.log(0.6 / 0.7) + 0.4 * math.log(0.4 / 0.3))
    three = [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]
    assert fairness_discrepancy(*three) == pytest.approx(math.sqrt((1 / 6) ** 2 + 2 * (1 / 12) ** 2))
    assert total_variation(*three) == pytest.approx(1 / 6)


def test_kl_with_an_empty_group_is_finite_and_said_so():
    # group b has no samples: its term is 0 log 0 = 0
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))
    r = fairness_report({"a": 10, "b": 0}, {"a": 0.5, "b": 0.5}, n_boot=200)
    kl = r["metrics"]["KL divergence (nats)"]
    assert kl["value"] == pytest.approx(math.log(2)) and math.isfinite(kl["ci"][0]) and math.isfinite(kl["ci"][1])
    assert KL_EMPTY_NOTE in kl["note"] and "['b']" in kl["note"]
    assert "KL divergence" in format_report(r) and "0 log 0" in format_report(r)


def test_kl_against_a_zero_target_is_undefined_not_infinite():
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) is None
    r = fairness_report({"a": 5, "b": 5}, {"a": 1.0, "b": 0.0}, n_boot=100)
    kl = r["metrics"]["KL divergence (nats)"]
    assert kl["value"] is None and kl["ci"] == [None, None] and "infinite" in kl["undefined"]
    assert "undefined" in format_report(r)


def test_report_values_and_seeded_intervals():
    counts, target = {"0-4": 30, "5-9": 70}, {"0-4": 0.3, "5-9": 0.7}
    r = fairness_report(counts, target, n_boot=500, seed=3)
    fd = r["metrics"]["fairness discrepancy (L2)"]
    assert fd["value"] == pytest.approx(0.0, abs=1e-15)
    assert fd["ci"][0] >= 0 and fd["ci"][1] > 0     # sampling noise keeps the upper end above zero
    assert r == fairness_report(counts, target, n_boot=500, seed=3)   # seeded: reproducible
    off = fairness_report({"0-4": 50, "5-9": 50}, target, n_boot=500)
    d = off["metrics"]["fairness discrepancy (L2)"]
    assert d["value"] == pytest.approx(math.sqrt(2) * 0.2)
    assert d["ci"][0] <= d["value"] <= d["ci"][1]
    tv = off["metrics"]["total variation"]
    assert tv["value"] == pytest.approx(0.2) and tv["ci"][0] <= 0.2 <= tv["ci"][1]
    assert off["n_boot"] == 500 and off["n"] == 100 and not off["warnings"]
    assert fairness_report({"0-4": 5, "5-9": 5}, target, n_boot=50)["warnings"]  # small sample warned


def test_parse_target():
    assert parse_target("5-9=0.7", ["0-4", "5-9"]) == pytest.approx({"0-4": 0.3, "5-9": 0.7})
    assert parse_target("a=50%;b=25%", ["a", "b", "c"]) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    with pytest.raises(UserError, match="lacks"):
        parse_target("x=0.5", ["a", "b"])
    with pytest.raises(UserError, match="sum"):
        parse_target("a=0.8,b=0.5", ["a", "b"])
    with pytest.raises(UserError, match="sum"):
        parse_target("a=0.5,b=0.2", ["a", "b"])
    with pytest.raises(UserError, match="target share of group 'a' must be a number"):
        parse_target("a=lots", ["a", "b"])
    with pytest.raises(UserError, match="target share of group 'a' must be between 0 and 1"):
        parse_target("a=120%", ["a", "b"])


def test_parse_share():
    assert parse_share(" 70% ", "x") == pytest.approx(0.7) and parse_share("0.25", "x") == 0.25
    for bad, match in [("70", "between 0 and 1"), ("-0.1", "between"), ("nan", "between"), ("7o%", "a number")]:
        with pytest.raises(UserError, match=f"--target must be {match}"):
            parse_share(bad, "--target")


def test_correction_inverts_a_known_confusion():
    # Classifier: true a -> a 90%, true b -> b 80%. True mix 70/30 gives observed
    # a = 0.7*0.9 + 0.3*0.2 = 0.69, b = 0.31.
    conf = Confusion(["a", "b"], np.array([[900, 100], [200, 800]]), "synthetic")
    out = corrected_fractions(np.array([690, 310]), conf, np.array([0.7, 0.3]), n_boot=300)
    assert out["fractions"]["a"]["value"] == pytest.approx(0.7)
    assert out["fractions"]["b"]["value"] == pytest.approx(0.3)
    lo, hi = out["fractions"]["a"]["ci"]
    assert lo < 0.7 < hi and hi - lo < 0.1
    assert out["fairness discrepancy (L2)"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert out["confusion"]["per_group_accuracy"] == pytest.approx({"a": 0.9, "b": 0.8})


def test_perfect_classifier_changes_nothing_and_missing_group_is_refused():
    perfect = confusion_from_labels(["a", "a", "b", "b", "b"], ["a", "a", "b", "b", "uncertain"], ["a", "b"], "t")
    assert perfect.counts.tolist() == [[2, 0], [0, 2]]  # the 'uncertain' prediction is left out
    out = corrected_fractions(np.array([6, 4]), perfect, np.array([0.5, 0.5]), n_boot=50)
    assert out["fractions"]["a"]["value"] == pytest.approx(0.6)
    assert out["warnings"]  # 2 labelled images per group: rough
    none_b = confusion_from_labels(["a", "a"], ["a", "b"], ["a", "b"], "t")
    assert "undefined" in corrected_fractions(np.array([6, 4]), none_b, np.array([0.5, 0.5]))


def test_digits_heldout_confusion_feeds_the_report():
    from pipelines.attributes.digits import load_digits_classifier
    from pipelines.attributes.groupings import builtin_groupings
    from pipelines.fairness import digits_heldout_confusion
    clf = load_digits_classifier()
    g = builtin_groupings("digits")["digits 0-4 vs 5-9"]
    conf = digits_heldout_confusion(clf, g)
    assert conf.counts.sum() <= 360 and conf.counts.sum() >= 350
    assert np.diag(conf.rates()).min() > 0.97
    r = fairness_report({"0-4": 40, "5-9": 60}, {"0-4": 0.3, "5-9": 0.7}, n_boot=100, confusion=conf)
    assert set(r["corrected"]["fractions"]) == {"0-4", "5-9"}
    assert "classifier-error-aware" in format_report(r)


def test_label_and_fid_cli_report_fairness(tmp_path, capsys):
    """`label` and `fid --per-group` with --target write the metrics to JSON and print them."""
    import json

    from sklearn.datasets import load_digits

    from pipelines.cli import main
    d = load_digits()
    keep = np.r_[np.flatnonzero(d.target < 5)[:60], np.flatnonzero(d.target >= 5)[:140]]
    src = tmp_path / "set.npz"
    np.savez(src, images=np.round(d.images[keep] * 255 / 16).astype(np.uint8)[..., None])
    out = tmp_path / "labels.json"
    common = ["--classifier", "digits", "--grouping", "digits 0-4 vs 5-9", "--target", "5-9=0.7",
              "--n-boot", "200", "--no-cache", "--device", "cpu"]
    assert main(["label", str(src), "--out", str(out), *common]) == 0
    text = capsys.readouterr().out
    assert "fairness discrepancy (L2)" in text and "classifier-error-aware" in text
    fair = json.loads(out.read_text())["fairness"]
    assert fair["n_boot"] == 200 and fair["target"] == pytest.approx({"0-4": 0.3, "5-9": 0.7})
    p = fair["fractions"]["5-9"]
    assert fair["metrics"]["fairness discrepancy (L2)"]["value"] == pytest.approx(math.sqrt(2) * abs(p - 0.7))
    assert fair["corrected"]["confusion"]["source"].startswith("held-out split")
    rep = tmp_path / "fid.json"
    assert main(["fid", str(src), "--ref", str(src), "--feature", "digits", "--per-group", "--out", str(rep),
                 *common]) == 0
    assert json.loads(rep.read_text())["fairness"]["metrics"]["total variation"]["value"] == pytest.approx(
        abs(p - 0.7))
    assert main(["fid", str(src), "--ref", str(src), "--feature", "digits", "--target", "5-9=0.7",
                 "--no-cache"]) == 2  # --target without --per-group: clean error


def test_card_fairness_from_stored_counts():
    from pipelines.fairness import card_fairness
    measured = {"n256": {"counts": {"0-4": 80, "5-9": 176}}, "old": {"fractions": {}}}
    out = card_fairness(measured, {"0-4": 30, "5-9": 70}, n_boot=100)  # percent, as a UI may store it
    r = out["n256"]
    assert set(out) == {"n256"} and r["target"] == pytest.approx({"0-4": 0.3, "5-9": 0.7})
    assert r["metrics"]["total variation"]["value"] == pytest.approx(abs(176 / 256 - 0.7))
    assert card_fairness(measured, None) is None
    assert "skipped" in card_fairness(measured, {"a": 0.5, "b": 0.5})["n256"]


def test_bundle_card_renders_fairness(tmp_path, mlp_pair):
    from pipelines.checkpoints.bundle import save_bundle
    from pipelines.checkpoints.native import save_model
    from pipelines.fairness import card_fairness
    base, aux, cfg = mlp_pair
    b, a = save_model(tmp_path / "b.safetensors", base, cfg), save_model(tmp_path / "a.safetensors", aux, cfg)
    card = {"fairness_vs_target": card_fairness({"n200": {"counts": {"0-4": 60, "5-9": 140}}},
                                                {"0-4": 0.3, "5-9": 0.7}, n_boot=50)}
    md = save_bundle(tmp_path / "x.safetensors", b, a, 1.0, card=card).with_suffix(".md").read_text()
    assert "fairness discrepancy (L2)" in md and "KL divergence" in md and "total variation" in md
