"""Inference precision: fp32 stays bit-identical to the code before the option; bf16 autocasts the
network only and keeps the demo's samples (same seeds) in the same digit class."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.attributes.digits import load_digits_classifier
from pipelines.checkpoints.native import load_model
from pipelines.demo.assets import DEMO_CLASSIFIER, DEMO_MODEL, DEMO_SAMPLER
from pipelines.errors import UserError
from pipelines.generate import generate_batches, generate_images
from pipelines.guidance import SIMSDenoiser
from pipelines.precision import network_precision, parse_precision

# Samples of the demo model (seeds 0-7, 12 Heun steps, batches of 4, one thread) written by the
# code before `precision` existed: base, full SIMS at omega 1.5, interval, shared encoder, omega -1;
# with the CPU capability and torch version they were computed with (other vector units round
# float32 sums differently, so the stored bits hold only there).
REFERENCE = Path(__file__).parent / "data" / "fp32_reference_samples.pt"


@pytest.fixture(scope="module")
def demo_pair():
    base, _ = load_model(DEMO_MODEL)
    aux = copy.deepcopy(base)  # a distinct auxiliary: the demo weights plus fixed small noise
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in aux.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return base, aux


def _modes(base, aux):
    return {"base": (base, 4), "full": (SIMSDenoiser(base, aux, 1.5), 4),
            "interval": (SIMSDenoiser(base, aux, 1.0, interval=(0.28, 1.61)), 4),
            "shared": (SIMSDenoiser(base, aux, 1.0, shared_encoder=True), 4),
            "minus1": (SIMSDenoiser(base, aux, -1.0), 8)}


def _unchanged_path(denoiser, base, batch):
    """The sampling loop as it was before the precision option: sampler only, no precision context."""
    from pipelines.sampler import sample_from_seeds
    with torch.no_grad():
        return torch.cat([sample_from_seeds(denoiser, list(range(i, i + batch)), (1, 8, 8), DEMO_SAMPLER)[0]
                          for i in range(0, 8, batch)])


@pytest.mark.slow
def test_fp32_is_bit_identical_to_before(demo_pair):
    base, aux = demo_pair
    ref = torch.load(REFERENCE, weights_only=True)
    same_cpu = (ref["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
                and ref["torch"] == str(torch.__version__))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was written with one thread
    try:
        for name, (denoiser, batch) in _modes(base, aux).items():
            got, _ = generate_batches(denoiser, base, range(8), DEMO_SAMPLER, batch, precision="fp32")
            assert torch.equal(got, _unchanged_path(denoiser, base, batch)), name  # on any machine
            if same_cpu:  # and the stored bits of the old code, where they were computed
                assert torch.equal(got, ref[name]), name
            else:
                torch.testing.assert_close(got, ref[name], rtol=0, atol=1e-4)
            bf16, _ = generate_batches(denoiser, base, range(8), DEMO_SAMPLER, batch, precision="bf16")
            assert not torch.equal(bf16, ref[name]), name  # bf16 really changes the arithmetic
    finally:
        torch.set_num_threads(threads)


def test_bf16_autocasts_the_network_only(demo_pair):
    base, aux = demo_pair
    seen = []
    conv = next(m for m in base.model.modules() if type(m).__name__ == "Conv2d")  # SongUNet's own conv
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(2, 1, 8, 8)
    try:
        with torch.no_grad(), network_precision("bf16"):
            out = SIMSDenoiser(base, aux, 1.5)(x, torch.full((2,), 1.0))
        with torch.no_grad():
            out32 = base(x, torch.full((2,), 1.0))
    finally:
        handle.remove()
    assert torch.bfloat16 in seen and torch.float32 in seen  # the conv ran in bf16, then in fp32
    assert out.dtype == torch.float32 and out32.dtype == torch.float32  # the combination stays fp32
    x_bf, _ = generate_batches(base, base, [0, 1], DEMO_SAMPLER, precision="bf16")
    assert x_bf.dtype == torch.float32
    with pytest.raises(UserError, match="precision must be one of fp32, bf16"):
        parse_precision("fp16")


@pytest.mark.slow
def test_bf16_keeps_the_digit_class_of_at_least_95_percent_of_samples():
    base, _ = load_model(DEMO_MODEL)
    clf = load_digits_classifier(DEMO_CLASSIFIER)
    seeds = range(300)
    a = generate_images(base, seeds, DEMO_SAMPLER, batch_size=150, precision="fp32")
    b = generate_images(base, seeds, DEMO_SAMPLER, batch_size=150, precision="bf16")
    ca, cb = clf.predict_proba(a).argmax(1), clf.predict_proba(b).argmax(1)
    agree = float((ca == cb).mean())
    print(f"bf16 vs fp32 digit class agreement on 300 seeds: {agree:.3f}; "
          f"mean |pixel diff| {np.abs(a.astype(int) - b.astype(int)).mean():.2f} of 255")
    assert agree >= 0.95
    assert not np.array_equal(a, b)


# ----------------------------------------------------------------------------
# Training.

def _loss_curve(tmp_path, name, **kw):
    from pipelines.data import DigitsDataset
    from pipelines.models import ModelConfig
    from pipelines.networks.songunet import songunet_config
    from pipelines.training import TrainConfig, train
    model = ModelConfig(network=songunet_config("tiny", img_resolution=8, img_channels=1))
    cfg = TrainConfig(**{**dict(batch_size=32, total_kimg=0.96, lr=2e-3, lr_rampup_kimg=0, log_every=5,
                                device="cpu"), **kw})
    result = train(model, DigitsDataset(), cfg, tmp_path / name)
    return np.array([loss for _, loss in result["loss_history"]]), result


@pytest.mark.slow
def test_bf16_training_loss_stays_within_noise_of_fp32(tmp_path):
    fp32, _ = _loss_curve(tmp_path, "fp32", seed=0)
    bf16, result = _loss_curve(tmp_path, "bf16", seed=0, precision="bf16")
    other_seed, _ = _loss_curve(tmp_path, "seed1", seed=1)  # the noise: same recipe, other data order/noise
    noise = np.abs(fp32 - other_seed).mean()
    gap = np.abs(fp32 - bf16).mean()
    print(f"loss curves over {len(fp32)} reports: |bf16 - fp32| = {gap:.4f}, |fp32 seed 0 - seed 1| = {noise:.4f}")
    assert len(fp32) == len(bf16) == 6 and np.isfinite(bf16).all()
    assert gap < noise  # same seed, other precision: closer than another seed at the same precision
    assert bf16[-2:].mean() < bf16[:2].mean()  # and it learns
    assert result["first_step_s"] > 0 and result["device"] == "cpu"


# ----------------------------------------------------------------------------
# Studio: a setting (SIMS_PRECISION) that renders, sweeps and their cache keys follow.

def test_studio_renders_follow_the_precision_setting_and_keep_caches_apart(tmp_path, monkeypatch):
    from studio.services.evaluate import render, render_key
    from studio.services.guide import GuideSettings
    from studio.settings import Settings
    assert Settings(data_dir=tmp_path).precision == "fp32"
    fp32_key, fp32_metrics = render_key("h", 1, 1.0, None, [0, 1], 12, False), GuideSettings().key()
    assert render_key("h", 1, 1.0, None, [0, 1], 12, False, "fp32") == fp32_key  # old caches stay valid
    assert render_key("h", 1, 1.0, None, [0, 1], 12, False, "bf16") != fp32_key
    monkeypatch.setenv("SIMS_PRECISION", "bf16")
    assert Settings(data_dir=tmp_path).precision == "bf16" and GuideSettings().key() != fp32_metrics
    a = render(DEMO_MODEL, DEMO_MODEL, 0.0, range(4), 4, precision="fp32")
    b = render(DEMO_MODEL, DEMO_MODEL, 0.0, range(4), 4, precision="bf16")
    assert a.shape == b.shape == (4, 8, 8, 1) and not np.array_equal(a, b)
    monkeypatch.setenv("SIMS_PRECISION", "fp16")
    with pytest.raises(UserError, match="precision must be one of"):
        Settings(data_dir=tmp_path)
