"""SIMS guidance: exact limits (omega 0 / -1) and the network calls each mode spends."""
import pytest
import torch

from pipelines.errors import UserError
from pipelines.guidance import SIMSDenoiser, parse_interval, parse_omega
from pipelines.sampler import SamplerConfig, sample_from_seeds, sigma_steps

SEEDS = [0, 1, 2, 3, 11]
CFG = SamplerConfig(num_steps=8)


def _sample(denoiser):
    with torch.no_grad():
        return sample_from_seeds(denoiser, SEEDS, (2,), CFG)


def test_omega_zero_is_exactly_base(mlp_pair):
    base, aux, _ = mlp_pair
    x_base, nfe_base = _sample(base)
    x_sims, nfe_sims = _sample(SIMSDenoiser(base, aux, 0.0))
    assert torch.equal(x_base, x_sims)
    assert nfe_base == nfe_sims == CFG.nfe


def test_omega_minus_one_is_exactly_aux(mlp_pair):
    base, aux, _ = mlp_pair
    x_aux, _ = _sample(aux)
    x_sims, _ = _sample(SIMSDenoiser(base, aux, -1.0))
    assert torch.equal(x_aux, x_sims)


def test_guided_denoiser_is_the_extrapolation(mlp_pair):
    base, aux, _ = mlp_pair
    x, sigma = torch.randn(6, 2), torch.full((6,), 1.3)
    with torch.no_grad():
        got = SIMSDenoiser(base, aux, 1.5)(x, sigma)
        want = 2.5 * base(x, sigma) - 1.5 * aux(x, sigma)
    torch.testing.assert_close(got, want)
    # and it moves samples: omega != 0 changes the output
    assert not torch.equal(_sample(SIMSDenoiser(base, aux, 1.5))[0], _sample(base)[0])


class CountingBackbone(torch.nn.Module):
    """Wraps a backbone and counts its encoder and decoder passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.encodes, self.decodes = inner, 0, 0
        self.sample_shape = inner.sample_shape

    def encode(self, *args, **kwargs):
        self.encodes += 1
        return self.inner.encode(*args, **kwargs)

    def decode(self, feats):
        self.decodes += 1
        return self.inner.decode(feats)


def _counted(mlp_pair):
    base, aux, _ = mlp_pair
    base.model, aux.model = CountingBackbone(base.model), CountingBackbone(aux.model)
    return base, aux


def _sigmas_evaluated(cfg):
    t = sigma_steps(cfg).tolist()
    return t[:-1] + t[1:-1]  # Euler evaluations at t_i, Heun corrections at t_{i+1} (i < N-1)


def test_full_guidance_doubles_network_calls(mlp_pair):
    base, aux = _counted(mlp_pair)
    _sample(SIMSDenoiser(base, aux, 1.0))
    assert base.model.decodes == aux.model.decodes == CFG.nfe
    assert base.model.encodes == aux.model.encodes == CFG.nfe


def test_interval_guides_only_inside_sigma_range(mlp_pair):
    base, aux = _counted(mlp_pair)
    lo, hi = 0.3, 2.0
    guided = SIMSDenoiser(base, aux, 1.0, interval=(lo, hi))
    _sample(guided)
    inside = sum(lo <= s <= hi for s in _sigmas_evaluated(CFG))
    assert 0 < inside < CFG.nfe
    assert base.model.decodes == CFG.nfe      # base runs at every step
    assert aux.model.decodes == inside        # auxiliary only inside the interval
    assert guided.counts.guided == inside


def test_shared_encoder_runs_encoder_once_per_step(mlp_pair):
    base, aux = _counted(mlp_pair)
    guided = SIMSDenoiser(base, aux, 1.0, shared_encoder=True)
    _sample(guided)
    assert base.model.encodes == CFG.nfe      # one encoder pass feeds both decoders
    assert aux.model.encodes == 0
    assert base.model.decodes == aux.model.decodes == CFG.nfe
    assert guided.counts.encoder == CFG.nfe


def test_shared_encoder_equals_full_guidance_when_encoders_match(mlp_pair):
    base, aux, _ = mlp_pair
    aux.model.inp.load_state_dict(base.model.inp.state_dict())  # decoder-only fine-tune keeps the encoder
    full, _ = _sample(SIMSDenoiser(base, aux, 1.0))
    shared, _ = _sample(SIMSDenoiser(base, aux, 1.0, shared_encoder=True))
    torch.testing.assert_close(full, shared)


@pytest.mark.parametrize("bad", ["abc", "", None, "nan", float("inf")])
def test_non_numeric_omega_is_refused(bad):
    with pytest.raises(UserError, match="omega"):
        parse_omega(bad)


def test_interval_parsing():
    assert parse_interval(None) is None and parse_interval(" ") is None
    assert parse_interval("0.28, 1.61") == (0.28, 1.61)
    for bad in ["1", "a,b", "1,2,3"]:
        with pytest.raises(UserError, match="--interval takes 'sigma_lo,sigma_hi'"):
            parse_interval(bad)


def test_nonzero_omega_needs_aux(mlp_pair):
    base, _, _ = mlp_pair
    with pytest.raises(UserError, match="auxiliary"):
        SIMSDenoiser(base, None, 1.0)


def test_shared_encoder_with_a_decoder_only_unet():
    """A UNet auxiliary that differs from the base only in `dec.*` (decoder-only fine-tune):
    one shared encoder pass gives the same guided samples as two full passes."""
    from pipelines.models import ModelConfig, build_model
    from pipelines.networks.songunet import songunet_config
    cfg = ModelConfig(backbone="songunet", network=songunet_config("tiny", img_resolution=8, img_channels=1))
    torch.manual_seed(0)
    base = build_model(cfg).eval()
    aux = build_model(cfg).eval()
    aux.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in aux.model.decoder_parameters():
            p.add_(0.05 * torch.randn_like(p))
    full = sample_from_seeds(SIMSDenoiser(base, aux, 1.0), [0, 1], (1, 8, 8), SamplerConfig(num_steps=4))[0]
    shared = sample_from_seeds(SIMSDenoiser(base, aux, 1.0, shared_encoder=True), [0, 1], (1, 8, 8),
                               SamplerConfig(num_steps=4))[0]
    torch.testing.assert_close(full, shared, rtol=1e-5, atol=1e-5)
    assert not torch.equal(full, sample_from_seeds(base, [0, 1], (1, 8, 8), SamplerConfig(num_steps=4))[0])


def _songunet(resolution, channels, seed=0):
    from pipelines.models import ModelConfig, build_model
    from pipelines.networks.songunet import songunet_config
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="songunet", network=songunet_config("tiny", img_resolution=resolution,
                                                                    img_channels=channels))
    return build_model(cfg).eval(), cfg


def test_guide_of_the_wrong_shape_is_refused_with_both_shapes():
    base, _ = _songunet(8, 1)
    with pytest.raises(UserError, match=r"sample shape differ \(base sample shape \(1, 8, 8\); guide sample "
                                        r"shape \(3, 8, 8\)\)"):
        SIMSDenoiser(base, _songunet(8, 3)[0], 1.0)
    with pytest.raises(UserError, match="sample shape"):
        SIMSDenoiser(base, _songunet(16, 1)[0], 1.0)


def test_guide_with_other_preconditioning_is_refused(mlp_pair):
    from tests.testkit import make_mlp
    base, _, _ = mlp_pair
    with pytest.raises(UserError, match=r"preconditioning.* differ \(base preconditioning EDMPrecond"):
        SIMSDenoiser(base, make_mlp(2, precond="vp")[0], 1.0)


def test_any_model_of_the_same_shape_can_guide(tmp_path):
    """Autoguidance: a guide of another architecture but the same sample shape is accepted,
    in the Python API, in a bundle (guide kind and sha recorded) and on the CLI as --guide."""
    from pipelines.checkpoints.bundle import load_bundle, read_bundle_metadata, save_bundle
    from pipelines.checkpoints.download import sha256_file
    from pipelines.checkpoints.native import save_model
    from pipelines.cli import main
    from pipelines.models import ModelConfig, build_model
    base, cfg = _songunet(8, 1)
    small_cfg = ModelConfig(backbone="songunet", network={**cfg.network, "model_channels": 8})
    torch.manual_seed(1)
    guide = build_model(small_cfg).eval()
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.0)
    with torch.no_grad():
        got = SIMSDenoiser(base, guide, 0.5)(x, sigma)
        torch.testing.assert_close(got, 1.5 * base(x, sigma) - 0.5 * guide(x, sigma))
    b = save_model(tmp_path / "b.safetensors", base, cfg)
    g = save_model(tmp_path / "g.safetensors", guide, small_cfg)
    bundle = save_bundle(tmp_path / "auto.safetensors", b, g, 0.5, guide_kind="other-model")
    card = read_bundle_metadata(bundle)["card"]
    assert card["guide_kind"] == "other-model" and card["aux_sha256"] == sha256_file(g)
    assert card["base_sha256"] == sha256_file(b)
    loaded = load_bundle(bundle)
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoiser()(x, sigma), got)
    assert main(["sample-sims", "--base", str(b), "--guide", str(g), "--omega", "0.5", "--seeds", "0-1",
                 "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "s.npz")]) == 0
    wrong = save_model(tmp_path / "w.safetensors", *_songunet(16, 1))
    assert main(["sample-sims", "--base", str(b), "--guide", str(wrong), "--omega", "0.5", "--seeds", "0",
                 "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "w.npz")]) == 2
    with pytest.raises(UserError, match="sample shape"):
        save_bundle(tmp_path / "bad.safetensors", b, wrong, 0.5)
