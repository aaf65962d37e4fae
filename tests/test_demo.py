"""The bundled digits world: the assets load, the demo model makes real-looking digits,
and demo-shift runs end to end and reports what it measured."""
import json

import numpy as np
import pytest

from pipelines.demo.assets import DEMO_CLASSIFIER, DEMO_MODEL, DEMO_SAMPLER
from pipelines.demo.build import evaluate_demo_model
from pipelines.demo.shift import HIGH, DemoWorld, ShiftSettings, run_demo_shift
from pipelines.generate import generate_images


def test_bundled_assets_exist_and_are_small():
    for path in (DEMO_MODEL, DEMO_CLASSIFIER):
        assert path.exists(), f"{path} missing: run `python -m pipelines build-demo`"
        assert path.stat().st_size < 8 * 2 ** 20


def test_demo_model_samples_are_confident_digits():
    report = evaluate_demo_model(n=300)
    assert report["confident_fraction"] >= 0.85  # build-demo measures >= 0.9 on 1000 samples (build_report.json)
    assert report["histogram_tv_distance"] < 0.12  # class histogram close to the data's (uniform-ish)


@pytest.mark.slow
def test_demo_shift_end_to_end(tmp_path):
    world = DemoWorld()
    settings = ShiftSettings(pool_size=200, n_s=120, finetune_kimg=1.0, omegas=[0.0, 1.0], eval_samples=60)
    lines = []
    report = run_demo_shift(settings, tmp_path, log=lines.append, world=world)
    assert json.loads((tmp_path / "report.json").read_text())["closest_omega"] == report["closest_omega"]
    counts = report["aux_counts"]
    assert sum(counts.values()) == 120
    assert abs(report["s_fraction_high"] - counts[HIGH] / 120) < 1e-9  # S has exactly the asked mix
    # omega = 0 is the base model: its fraction equals the base's on the same seeds.
    seeds = range(10_000_000, 10_000_000 + 60)
    groups, _ = world.label(generate_images(world.base, seeds, DEMO_SAMPLER, batch_size=250))
    decided = groups != "uncertain"
    assert report["sweep"][0]["fraction_high"] == pytest.approx(float(np.mean(groups[decided] == HIGH)))
    assert any("closest omega" in line for line in lines)
    # find-omega reused the sweep's points and measured the rest of its coarse grid (-1, 2, 3) itself
    found = report["find_omega"]
    assert found["measured"][:3] == [-1.0, 2.0, 3.0] and found["status"] in ("reached", "closest", "above_range",
                                                                              "below_range")
    assert any(line.startswith("find omega: omega =") for line in lines)
