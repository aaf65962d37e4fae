"""Heun sampler: schedule, NFE, per-sample seeds."""
import torch

from pipelines.sampler import SamplerConfig, SeededNoise, sample_from_seeds, sigma_steps


def test_schedule_matches_edm_formula():
    cfg = SamplerConfig(num_steps=18)
    t = sigma_steps(cfg)
    assert len(t) == 19 and t[-1] == 0
    assert abs(float(t[0]) - 80.0) < 1e-9 and abs(float(t[-2]) - 0.002) < 1e-12
    assert torch.all(t[:-1][1:] < t[:-1][:-1])  # strictly decreasing


def test_nfe_is_2n_minus_1(mlp_pair):
    base, _, _ = mlp_pair
    for n in (1, 2, 5):
        _, nfe = sample_from_seeds(base, [0, 1], (2,), SamplerConfig(num_steps=n))
        assert nfe == 2 * n - 1


def test_single_image_regenerates_from_its_seed(mlp_pair):
    base, _, _ = mlp_pair
    cfg = SamplerConfig(num_steps=6, S_churn=10)  # churn exercises the per-sample noise too
    with torch.no_grad():
        batch, _ = sample_from_seeds(base, [5, 42, 7], (2,), cfg)
        again, _ = sample_from_seeds(base, [5, 42, 7], (2,), cfg)
        alone, _ = sample_from_seeds(base, [42], (2,), cfg)
    assert torch.equal(batch, again)  # same seeds, same batching: bit-for-bit
    # Alone, float32 matmul blocking may differ with batch size: equal to rounding error.
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-5)
    assert torch.equal(SeededNoise([42]).randn((2,)), SeededNoise([5, 42]).randn((2,))[1:])


def test_different_seeds_give_different_samples(mlp_pair):
    base, _, _ = mlp_pair
    with torch.no_grad():
        x, _ = sample_from_seeds(base, [1, 2], (2,), SamplerConfig(num_steps=4))
    assert not torch.equal(x[0], x[1])


def test_paired_call_equals_two_calls_to_float_rounding(tmp_path):
    """Full SIMS with base and auxiliary in one vmapped call: the same samples as two calls to
    float32 rounding (not bit for bit, hence an option), the same pass counts."""

    import pytest

    from pipelines.demo.assets import DEMO_SAMPLER
    from pipelines.errors import UserError
    from pipelines.generate import generate_batches
    from pipelines.guidance import SIMSDenoiser
    from pipelines.paired import PairedSIMSDenoiser
    from tests.testkit import make_mlp, scaled_demo_pair

    base, aux = scaled_demo_pair()
    for kw in ({}, {"interval": (0.28, 1.61)}):
        two, paired = SIMSDenoiser(base, aux, 1.5, **kw), PairedSIMSDenoiser(base, aux, 1.5, **kw)
        a, _ = generate_batches(two, base, range(6), DEMO_SAMPLER, 3)
        b, _ = generate_batches(paired, base, range(6), DEMO_SAMPLER, 3)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
        assert not torch.equal(a, generate_batches(base, base, range(6), DEMO_SAMPLER, 3)[0])
        assert paired.counts == two.counts
    from pipelines.models import ModelConfig, build_model
    from pipelines.networks.songunet import songunet_config
    from pipelines.paired import PairedNetworks
    narrow = build_model(ModelConfig(network=songunet_config("tiny", img_resolution=8, img_channels=1,
                                                             model_channels=16))).eval()
    with pytest.raises(UserError, match="same architecture"):
        PairedSIMSDenoiser(base, narrow, 1.0)  # same sample shape, other widths
    with pytest.raises(UserError, match="same architecture"):
        PairedNetworks(base, make_mlp(0)[0])
