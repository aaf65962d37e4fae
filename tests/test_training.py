"""Training loop: EMA/lr math, budget accounting, decoder-only, fine-tune provenance, CLI, learning."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.checkpoints.native import load_model, read_metadata
from pipelines.cli import main
from pipelines.data import DigitsDataset, PointDataset, TensorImageDataset, to_model_input
from pipelines.errors import UserError
from pipelines.models import ModelConfig, build_model
from pipelines.networks.songunet import songunet_config
from pipelines.sampler import SamplerConfig, sample_from_seeds, to_uint8
from pipelines.training import TrainConfig, list_checkpoints, train
from pipelines.training.config import lr_factor
from pipelines.training.ema import ema_beta, update_ema
from pipelines.training.loop import _split_batch
from pipelines.training.state import file_sha256, read_log

MLP = ModelConfig(backbone="mlp", network={"dim": 2, "hidden": 32, "depth": 2})


def unet(label_dim=0, **net):
    return ModelConfig(network=songunet_config("tiny", img_resolution=8, img_channels=1, **net), label_dim=label_dim)


def points(n=256, seed=0):
    return PointDataset(np.random.default_rng(seed).multivariate_normal([0, 0], [[2, 1], [1, 2]], size=n))


def cfg(**kw):
    base = dict(batch_size=16, total_kimg=0.032, lr_rampup_kimg=0, log_every=1)
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------
# Recipe math.

def test_ema_half_life_rule():
    # Without ramp-up, the weight of a step halves every half-life images: beta^(halflife/batch) = 1/2.
    beta = ema_beta(10 ** 7, 64, ema_halflife_kimg := 0.5, None)
    assert beta ** (ema_halflife_kimg * 1000 / 64) == pytest.approx(0.5)
    # With ramp-up the half-life is min(halflife, ratio * nimg): 0.05 * 10,000 = 500 images here.
    assert ema_beta(10_000, 64, 500, 0.05) ** (500 / 64) == pytest.approx(0.5)
    assert ema_beta(10 ** 9, 64, 500, 0.05) == pytest.approx(ema_beta(0, 64, 500, None))
    assert ema_beta(0, 64, 500, 0.05) == 0.0  # the first step copies the weights

    net, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    torch.nn.init.ones_(net.weight), torch.nn.init.zeros_(ema.weight)
    net.bias.requires_grad_(False)
    frozen = ema.bias.detach().clone()
    update_ema(ema, net, 0.25)
    assert torch.allclose(ema.weight, torch.full((2, 2), 0.75)) and torch.equal(ema.bias, frozen)


def test_lr_ramp_up(tmp_path):
    assert [lr_factor(n, 10) for n in (0, 5000, 10_000, 50_000)] == [0.0, 0.5, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0  # no ramp: full lr from the first step
    train(MLP, points(), cfg(lr=0.01, lr_rampup_kimg=0.064, total_kimg=0.096), tmp_path)
    lrs = [r["lr"] for r in read_log(tmp_path)]  # lr used by the step ending at each record
    assert lrs == pytest.approx([0.01 * min(16 * k / 64, 1) for k in range(6)])


def test_budget_in_images_seen_and_checkpoints(tmp_path):
    seen = []
    result = train(MLP, points(), cfg(total_kimg=0.1, checkpoint_kimg=0.05, log_every=3), tmp_path,
                   progress=seen.append)
    # Stops at the first step reaching the budget: ceil(100 / 16) * 16 = 112 images.
    assert result["status"] == "done" and result["nimg"] == 112 and result["steps"] == 7
    assert [n for n, _ in list_checkpoints(tmp_path)] == [64, 112]  # crossings of 50 and 100, then the end
    meta = read_metadata(result["final_checkpoint"])
    assert meta["training"]["nimg"] == 112 and meta["training"]["budget_kimg"] == 0.1
    assert meta["training"]["batch_size"] == 16 and meta["provenance"]["kind"] == "train"
    assert [s["checkpoint"] is not None for s in seen] == [False, True, False, True]  # steps 3, 4, 6, 7
    assert seen[-1]["kimg"] == 0.112 and seen[-1]["eta_s"] == 0 and seen[-1]["loss"] > 0
    assert [r["nimg"] for r in read_log(tmp_path)] == [48, 64, 96, 112]
    again = train(MLP, points(), cfg(total_kimg=0.1, checkpoint_kimg=0.05), tmp_path)
    assert again["steps"] == 7 and again["nimg"] == 112  # finished run: nothing more to do
    longer = train(MLP, points(), cfg(total_kimg=0.15, checkpoint_kimg=0.05), tmp_path)
    assert longer["nimg"] == 160 and [n for n, _ in list_checkpoints(tmp_path)] == [64, 112, 160]


def test_dataloader_workers_do_not_change_the_result(tmp_path):
    # Image files decoded in 2 worker processes give the same batches, so the same weights.
    from pipelines.imageio import write_image_folder
    digits = DigitsDataset()
    write_image_folder(tmp_path / "data", digits.images[:40].permute(0, 2, 3, 1).numpy(), digits.labels[:40])
    runs = [train(unet(), tmp_path / "data", cfg(num_workers=w, total_kimg=0.032), tmp_path / f"w{w}")
            for w in (0, 2)]
    a, b = (load_file(r["final_checkpoint"]) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_errors(tmp_path):
    for bad in (0, -1):
        with pytest.raises(UserError, match="budget must be > 0 kimg"):
            TrainConfig(total_kimg=bad)
    with pytest.raises(UserError, match="did you mean 'lr_rampup_kimg'"):
        TrainConfig.from_dict({"lr_rampup": 1})
    with pytest.raises(UserError, match="precision must be 'fp32' or 'bf16'"):
        cfg(precision="fp16")  # bf16 runs on CPU too (CPU autocast): tests/test_precision.py
    with pytest.raises(UserError, match="does not split over 3 processes"):
        _split_batch(cfg(batch_size=16), 3)
    with pytest.raises(UserError, match="shaped \\(1, 8, 8\\)"):
        train(unet(), points(), cfg(), tmp_path)
    with pytest.raises(UserError, match="has no labels"):
        train(unet(label_dim=10), TensorImageDataset(np.zeros((4, 8, 8, 1), np.uint8)), cfg(), tmp_path)
    with pytest.raises(UserError, match="no dropout setting"):
        train(MLP, points(), cfg(dropout=0.1), tmp_path)


def test_resume_refuses_a_different_recipe(tmp_path):
    train(MLP, points(), cfg(), tmp_path)
    with pytest.raises(UserError, match="different recipe"):
        train(MLP, points(), cfg(lr=0.5, total_kimg=0.064), tmp_path)


# ----------------------------------------------------------------------------
# Decoder-only, conditioning, fine-tuning.

def test_vp_preconditioning_trains_with_vp_loss(tmp_path):
    vp = ModelConfig(backbone="mlp", network={"dim": 2, "hidden": 32, "depth": 2}, precond="vp")
    result = train(vp, points(), cfg(lr=1e-2, total_kimg=0.32, log_every=10), tmp_path)
    meta = read_metadata(result["final_checkpoint"])
    assert meta["training"]["loss"] == "vp" and meta["model"]["precond"] == "vp"
    losses = [loss for _, loss in result["loss_history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_decoder_only_leaves_encoder_bit_identical(tmp_path):
    torch.manual_seed(0)
    init = build_model(unet()).state_dict()
    result = train(unet(), DigitsDataset(), cfg(decoder_only=True), tmp_path)
    final = load_file(result["final_checkpoint"])
    model, _ = load_model(result["final_checkpoint"])
    decoder = {id(p) for p in model.model.decoder_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in decoder}
    assert names and all(n.startswith("model.dec.") for n in names)
    encoder = [n for n, _ in model.named_parameters() if n not in names]
    assert encoder and all(torch.equal(final[n], init[n]) for n in encoder)
    assert any(not torch.equal(final[n], init[n]) for n in names)


def test_class_conditional_training(tmp_path):
    result = train(unet(label_dim=10), DigitsDataset(), cfg(), tmp_path)
    model, meta = load_model(result["final_checkpoint"])
    assert meta["model"]["label_dim"] == 10 and model.model.map_label is not None


def test_finetune_starts_from_base_and_records_provenance(tmp_path):
    base = train(unet(), DigitsDataset(), cfg(batch_size=8, total_kimg=0.016), tmp_path / "base")
    base_ckpt = base["final_checkpoint"]
    model, _ = load_model(base_ckpt)
    x, _ = sample_from_seeds(model, range(8), (1, 8, 8), SamplerConfig(num_steps=2))
    synthetic = TensorImageDataset(to_uint8(x), name="synthetic-from-base")
    # With an lr ramp the first step runs at lr 0 and the first EMA step copies the net: weights = base.
    ft = train(None, synthetic, cfg(batch_size=8, total_kimg=0.008, lr_rampup_kimg=1), tmp_path / "aux",
               init_checkpoint=base_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(load_file(ft["final_checkpoint"]).values(),
                                                  load_file(base_ckpt).values()))
    meta = read_metadata(ft["final_checkpoint"])
    prov = meta["provenance"]
    assert prov["kind"] == "finetune" and prov["images_seen"] == 8
    assert prov["parent"]["sha256"] == file_sha256(base_ckpt)
    assert prov["parent"]["path"].endswith(base_ckpt.split("/")[-1])
    assert prov["parent"]["training"]["nimg"] == 16 and prov["parent"]["dataset"]["name"] == "digits:8"
    assert meta["dataset"]["name"] == "synthetic-from-base" and meta["model"] == read_metadata(base_ckpt)["model"]
    more = train(None, synthetic, cfg(batch_size=8, total_kimg=0.024, lr_rampup_kimg=1), tmp_path / "aux",
                 init_checkpoint=base_ckpt)
    assert more["nimg"] == 24 and not torch.equal(load_file(more["final_checkpoint"])["model.dec.8x8_aux_conv.weight"],
                                                  load_file(base_ckpt)["model.dec.8x8_aux_conv.weight"])


def test_cli_train_and_finetune(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--run-dir", str(run), "--budget-kimg", "0.032", "--batch", "16",
                 "--lr", "0.002", "--arch", "tiny", "--seed", "3"]) == 0
    (n, ckpt), = list_checkpoints(run)
    assert n == 32 and read_metadata(ckpt)["training"]["config"]["seed"] == 3
    synth = tmp_path / "synth.npz"
    np.savez(synth, images=np.zeros((4, 8, 8, 1), np.uint8))
    capsys.readouterr()
    assert main(["finetune", "--base", str(ckpt), "--data", str(synth), "--run-dir", str(tmp_path / "ft"),
                 "--budget-mi", "0.001", "--decoder-only", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    training = resolved["training"]
    assert training["decoder_only"] and training["total_kimg"] == 1.0
    assert training["batch_size"] == 16 and training["lr"] == 0.002  # the base's recipe is inherited
    assert main(["finetune", "--base", str(ckpt), "--data", str(synth), "--run-dir", str(tmp_path / "ft"),
                 "--budget-kimg", "-1"]) == 2
    assert "budget must be > 0 kimg" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--run-dir", str(run), "--budget-kimg", "1",
                 "--config", '{"batch": 3}']) == 2
    assert "Unknown config key(s) for training config: 'batch'" in capsys.readouterr().err


def test_finetune_ends_with_one_summary_line_and_a_stable_final_checkpoint(tmp_path, capsys):
    """Off a terminal (capsys is not a tty) progress is plain lines, not a redrawn bar; the run ends
    with wall time, mean images/s, final loss and the final checkpoint, copied to stable names."""
    base = tmp_path / "base.safetensors"
    torch.manual_seed(0)
    from pipelines.checkpoints.native import save_model
    save_model(base, build_model(unet()), unet())
    synth = tmp_path / "synth.npz"
    np.savez(synth, images=np.random.default_rng(0).integers(0, 255, (8, 8, 8, 1), dtype=np.uint8))
    out = tmp_path / "exported" / "aux.safetensors"
    capsys.readouterr()
    assert main(["finetune", "--base", str(base), "--data", str(synth), "--run-dir", str(tmp_path / "ft"),
                 "--budget-kimg", "0.032", "--batch", "8", "--log-every", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("finetune done on cpu: 0.032 kimg, wall ") and "images/s, final loss " in last
    assert last.endswith(f"checkpoint {out}")
    assert "\r" not in captured.err and "finetune: 0.03/0.03 kimg (100%)" in captured.err
    (n, ckpt), = list_checkpoints(tmp_path / "ft")  # the stable copy is not one of the budget checkpoints
    final = tmp_path / "ft" / "checkpoint-final.safetensors"
    assert file_sha256(final) == file_sha256(ckpt) == file_sha256(out)
    assert main(["finetune", "--base", str(base), "--data", str(synth), "--run-dir", str(tmp_path / "ft"),
                 "--budget-kimg", "0.032", "--out", str(tmp_path / "aux.pt")]) == 2
    assert "ending in .safetensors" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# A tiny model learns digits.

def _nearest_real_distance(model, real: torch.Tensor) -> float:
    """Mean L2 distance (pixels in [-1, 1], 64 dims) from each of 64 samples to its nearest real digit."""
    with torch.no_grad():
        x, _ = sample_from_seeds(model, range(64), (1, 8, 8), SamplerConfig(num_steps=12))
    return torch.cdist(x.clamp(-1, 1).reshape(64, -1), real).min(dim=1).values.mean().item()


@pytest.mark.slow
def test_tiny_unet_learns_digits(tmp_path):
    """About a minute of CPU training: the loss falls and samples move close to real digits.

    Measure: mean distance from each sample (seeds 0-63, 12 Heun steps) to its nearest real
    digit; for scale, a real digit's nearest other real digit is ~2.1 away."""
    data = DigitsDataset()
    real = to_model_input(data.images).reshape(len(data), -1)
    model_cfg = unet()
    torch.manual_seed(0)
    init_score = _nearest_real_distance(build_model(model_cfg).eval(), real)
    result = train(model_cfg, data, TrainConfig(batch_size=32, total_kimg=3.2, lr=2e-3, lr_rampup_kimg=0.5,
                                                ema_halflife_kimg=0.5, log_every=5), tmp_path)
    losses = [loss for _, loss in result["loss_history"]]
    trained_score = _nearest_real_distance(load_model(result["final_checkpoint"])[0], real)
    print(f"loss {np.mean(losses[:2]):.3f} -> {np.mean(losses[-2:]):.3f}; nearest-real distance "
          f"{init_score:.2f} -> {trained_score:.2f}; {result['images_per_s']:.0f} images/s")
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])
    assert trained_score < 0.7 * init_score


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path):
    """--compile (torch.compile of the backbone halves) changes speed, not the run: same losses to
    float rounding, checkpoints with the usual keys, the first step's time reported."""
    eager = train(MLP, points(), cfg(total_kimg=0.064, log_every=2), tmp_path / "eager")
    compiled = train(MLP, points(), cfg(total_kimg=0.064, log_every=2, compile=True), tmp_path / "compiled")
    assert compiled["compiled"] and compiled["first_step_s"] > 0
    a = [loss for _, loss in eager["loss_history"]]
    b = [loss for _, loss in compiled["loss_history"]]
    assert len(a) == 2 and b == pytest.approx(a, rel=1e-4)
    ka, kb = load_file(eager["final_checkpoint"]), load_file(compiled["final_checkpoint"])
    assert ka.keys() == kb.keys()
    assert max((ka[k] - kb[k]).abs().max().item() for k in ka) < 1e-4
