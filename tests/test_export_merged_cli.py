"""`export merged` on the demo: the merged checkpoint with a card of its own measured numbers."""
import json

import numpy as np
import pytest

from pipelines.resources import ASSETS

BASE = ASSETS / "demo" / "digits_base.safetensors"
EARLY = ASSETS / "demo" / "digits_early_20kimg.safetensors"


def _run(*argv):
    from pipelines.cli import main
    return main(["export", "merged", *map(str, argv)])


def test_card_holds_the_merged_models_own_measurement(tmp_path, capsys):
    from pipelines.attributes import get_classifier
    from pipelines.attributes.groupings import label_counts, resolve_grouping
    from pipelines.checkpoints.native import load_model
    from pipelines.generate import generate_images, generate_sims
    from pipelines.merge import merge_checkpoints
    from pipelines.sampler import SamplerConfig
    out = tmp_path / "m.safetensors"
    assert _run("--base", BASE, "--aux", EARLY, "--omega", "0.5", "--out", out, "--measure-seeds", "0-23",
                "--steps", "2", "--classifier", "digits", "--grouping", "digits 0-4 vs 5-9", "--target", "5-9=0.7",
                "--n-boot", "50", "--no-cache") == 0
    card = json.loads(out.with_suffix(".card.json").read_text())
    m = card["measured"]
    assert card["omega"] == 0.5 and m["n"] == 24 and m["seeds"] == "0-23" and m["steps"] == 2
    # recompute: the merged file sampled alone on the same seeds, labelled by the same classifier
    ref = merge_checkpoints(BASE, EARLY, 0.5, tmp_path / "ref.safetensors")
    clf = get_classifier("digits")
    grouping = resolve_grouping("digits 0-4 vs 5-9", "digits", clf.classes)
    merged = generate_images(load_model(ref)[0], range(24), SamplerConfig(num_steps=2))
    want = label_counts(grouping.assign(clf.predict_proba(merged), clf.classes, 0.5)[0], grouping)
    assert m["counts"] == want
    assert m["fractions"]["5-9"]["value"] == pytest.approx(want["5-9"] / (want["0-4"] + want["5-9"]))
    # score-space SIMS at the same omega samples other images: the card is not a copy of the bundle's numbers
    base, early = load_model(BASE)[0], load_model(EARLY)[0]
    sims = generate_sims(base, early, 0.5, range(24), SamplerConfig(num_steps=2))[0]
    assert not np.array_equal(sims, merged)
    assert any("only 24 images" in w for w in m["warnings"])  # the small-sample warning
    fair = m["fairness_vs_target"]
    assert fair["n"] == 24 and "corrected" in fair  # digits: confusion from its held-out split
    md = out.with_suffix(".md").read_text()
    assert "measured on this merged model: n = 24" in md and "95% CI" in md and "warning: only 24" in md
    assert "fairness discrepancy (L2)" in md and "classifier-error-aware fractions" in md


def test_without_measurement_the_card_says_so(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert _run("--base", BASE, "--guide", EARLY, "--omega", "-1", "--out", out) == 0
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["measured"] is None and card["measured_note"].startswith("not measured")
    assert "not measured" in out.with_suffix(".md").read_text()
    assert "not measured" in capsys.readouterr().out


def test_measurement_options_without_seeds_are_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert _run("--base", BASE, "--aux", EARLY, "--omega", "1", "--out", out, "--target", "5-9=0.7") == 2
    assert "--measure-seeds" in capsys.readouterr().err and not out.exists()
    assert _run("--base", BASE, "--aux", EARLY, "--omega", "1", "--out", out, "--measure-seeds", "0-3") == 2
    assert "--classifier" in capsys.readouterr().err
