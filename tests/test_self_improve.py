"""Self-improvement grid on the digits world: trajectory errors, per-point measures, the CLI run."""
import json

import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.guidance import SIMSDenoiser
from pipelines.models import ModelConfig, build_model
from pipelines.networks.songunet import songunet_config


def _tiny(seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="songunet", network=songunet_config("tiny", img_resolution=8, img_channels=1))
    return build_model(cfg).eval()


def test_trajectory_errors_match_the_sims_denoiser_and_omega_star_is_the_minimum():
    from pipelines.experiments.self_improve import trajectory_errors

    base, aux = _tiny(0), _tiny(1)
    real = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)
    out = trajectory_errors(base, aux, real, sigmas=[0.5], omegas=[0.0, 1.0, 2.0], seed=3)
    row = out["rows"][0]
    # the same noise, drawn again: the error of SIMSDenoiser at omega 1 equals the closed form
    x0 = torch.as_tensor(real).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)) * 0.5
    with torch.no_grad():
        d = SIMSDenoiser(base, aux, 1.0)(x0 + noise, torch.full((6,), 0.5))
    assert row["mse"]["1.0"] == pytest.approx(float(((d - x0) ** 2).mean()), rel=1e-4)
    assert row["mse"]["0.0"] == pytest.approx(row["mse_base"])
    # mse is a parabola in omega with its minimum at omega_star
    w = row["omega_star"]
    assert all(row["mse"][k] >= 0 for k in row["mse"])
    again = trajectory_errors(base, aux, real, sigmas=[0.5], omegas=[w, w + 0.3, w - 0.3], seed=3)["rows"][0]["mse"]
    assert again[str(w)] <= min(again[str(w + 0.3)], again[str(w - 0.3)])


def test_trajectory_errors_with_an_identical_auxiliary_do_not_depend_on_omega():
    from pipelines.experiments.self_improve import trajectory_errors

    base = _tiny(0)
    real = np.zeros((4, 8, 8, 1), np.uint8)
    row = trajectory_errors(base, base, real, [1.0], [0.0, 2.0])["rows"][0]
    assert row["omega_star"] == 0.0 and row["mse"]["0.0"] == row["mse"]["2.0"] == row["mse_base"] == row["mse_aux"]


def test_measure_real_digits_sit_at_the_floor_and_a_biased_set_does_not():
    from pipelines.experiments.self_improve import Reference, SelfImproveSettings, measure

    ref = Reference()
    s = SelfImproveSettings(bases={"x": __file__}, bootstrap=10, floor_repeats=10)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ref.features), 600)
    real = measure(ref.features[idx], ref.classes[idx].astype(object), ref, s)
    assert real["floor_ci"][0] * 0.5 <= real["overall"] <= real["floor_ci"][1] * 2
    assert set(real["per_class"]) == set("0123456789") and set(real["per_half"]) == {"0-4", "5-9"}
    # ~60 samples per class < 128 dimensions: every class FD says so
    assert sum("class" in w for w in real["warnings"]) == 10 and not any("overall" in w for w in real["warnings"])
    only_low = np.flatnonzero(np.isin(ref.classes, list("01234")))[:600]
    low = measure(ref.features[only_low], ref.classes[only_low].astype(object), ref, s,
                  zero={"overall": real["overall"], "features": ref.features[idx]})
    assert low["overall"] > 3 * real["floor_ci"][1]            # the mix is off: far above the floor
    assert low["delta_vs_0_ci"][0] > 0                           # and measurably worse than the real sample
    assert low["per_class"]["7"]["n"] == 0 and low["per_class"]["7"]["fd"] is None


def test_settings_refuse_a_grid_without_omega_zero(tmp_path):
    from pipelines.experiments.self_improve import SelfImproveSettings

    with pytest.raises(UserError, match="include 0"):
        SelfImproveSettings(bases={"x": __file__}, omegas=[1.0])
    with pytest.raises(UserError, match="not found"):
        SelfImproveSettings(bases={"x": str(tmp_path / "none.safetensors")})
    assert main(["self-improve", "--base", "nonsense", "--out", str(tmp_path)]) == 2
    assert main(["self-improve", "--augment-p", "1.5", "--out", str(tmp_path)]) == 2
    assert main(["self-improve", "--augment-p", "on", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_cli_runs_a_tiny_grid_and_resumes_from_its_files(tmp_path, capsys):
    args = ["self-improve", "--s-sizes", "16", "--budgets", "0.128,0.256", "--omegas", "0,1",
            "--eval-samples", "24", "--steps", "3", "--bootstrap", "3", "--floor-repeats", "2",
            "--batch-size", "24", "--png", "none", "--out", str(tmp_path)]
    assert main(args) == 0
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert [(p["budget_kimg"], p["omega"]) for p in grid["points"]] == [(0.128, 1.0), (0.256, 1.0)]
    p = grid["points"][0]
    assert p["n"] == 24 and p["nfe"] == 2 * (2 * 3 - 1) and len(p["delta_vs_0_ci"]) == 2
    assert (tmp_path / "self_improve_heatmap.html").exists()
    assert set(grid["trajectory"]) == {"demo/aux-s16/b0.128", "demo/aux-s16/b0.256"}
    assert grid["floors"]["n"] == 24 and grid["floors"]["disjoint_halves"] > 0 and grid["floors"]["resampled"] > 0
    out = capsys.readouterr().out
    assert "WARNING: FD-digits overall: 24 samples < 128" in out and "| demo | 16 | 0.128 kimg | 1 |" in out
    stamp = (tmp_path / "demo" / "points" / "s16-b0.128-w+1.json").stat().st_mtime
    assert main(args) == 0  # everything is on disk: nothing is recomputed
    assert (tmp_path / "demo" / "points" / "s16-b0.128-w+1.json").stat().st_mtime == stamp
    assert json.loads((tmp_path / "grid.json").read_text())["points"] == grid["points"]


def test_demo_shift_measure_warns_on_small_samples():
    from pipelines.data import DigitsDataset
    from pipelines.demo.shift import DemoWorld

    world = DemoWorld()
    real = DigitsDataset(8).images.permute(0, 2, 3, 1).numpy()
    small = world.measure(real[:60])
    assert any(w.startswith("FD-digits overall: 60 samples < 128") for w in small["warnings"])
    assert sum("group" in w for w in small["warnings"]) == 2
    assert world.measure(real[:600])["warnings"] == []  # ~300 a group: no warning


def test_finetune_augmentation_follows_the_base_recipe_unless_set_and_is_passed_explicitly(tmp_path):
    from pipelines.checkpoints.native import read_metadata
    from pipelines.data import TensorImageDataset
    from pipelines.experiments.self_improve import SelfImproveSettings, _finetune, finetune_augment_ps
    from pipelines.training import TrainConfig, train

    torch.manual_seed(0)
    net = ModelConfig(backbone="songunet", network=songunet_config("tiny", img_resolution=8, img_channels=1,
                                                                    augment_dim=9))
    images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)
    small = dict(batch_size=16, total_kimg=0.032, lr_rampup_kimg=0, device="cpu")
    ckpt = train(net, TensorImageDataset(images), TrainConfig(**small, augment_p=0.3), tmp_path / "base")["final_checkpoint"]
    settings = SelfImproveSettings(bases={"b": str(ckpt)}, budgets_kimg=[0.016], augment_p=[None, 0.0, 0.3])
    # on/off: the base's recipe (0.3) and 0; an explicit 0.3 is the same run, kept once
    augs = finetune_augment_ps(settings, ckpt)
    assert augs == [(0.3, "the base checkpoint's training config"), (0.0, "set explicitly")]
    np.savez(tmp_path / "S16.npz", images=images)  # S already drawn: no sampling in this test
    for name, (p, _) in zip(("on", "off"), augs):
        _finetune(None, ckpt, 16, settings, tmp_path, tmp_path / name, lambda m: None, "b", 0.016, p)
        tuned = sorted((tmp_path / name).glob("checkpoint-*.safetensors"))[-1]
        # off stays off even though the base's recipe used augmentation (the loop would inherit an unset p)
        assert read_metadata(tuned)["training"]["config"]["augment_p"] == p


def test_kaleido_png_has_the_figure_layout_size(tmp_path):
    # kaleido draws 700x500 unless given the size: a four-panel heat map came out unreadable
    import plotly.graph_objects as go
    from PIL import Image

    from pipelines.experiments.mad.report import write_figures

    fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout={"width": 900, "height": 300})
    out = write_figures({"map": fig}, tmp_path, png="auto", prefix="t_")
    if out["png_renderer"] != "kaleido":
        pytest.skip(f"kaleido not usable here ({out['png_renderer']})")
    assert Image.open(tmp_path / "t_map.png").size == (900, 300)
