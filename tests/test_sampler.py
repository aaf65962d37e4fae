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
