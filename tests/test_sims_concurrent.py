"""Full SIMS with base and auxiliary in one vmapped call (--paired / paired=True) against the
sequential two calls, beyond tests/test_sampler.py's fp32 check: bf16, the paths that fall back
to the sequential code, and the API option."""

import numpy as np
import torch

from pipelines.demo.assets import DEMO_MODEL, DEMO_SAMPLER
from pipelines.generate import generate_batches, generate_sims
from pipelines.guidance import SIMSDenoiser
from pipelines.paired import PairedSIMSDenoiser
from pipelines.sampler import SamplerConfig
from tests.testkit import scaled_demo_pair

SAMPLER = SamplerConfig(**{**DEMO_SAMPLER.__dict__, "num_steps": 4})


def test_bf16_is_refused_with_the_reason():
    """vmap's batched convolutions bypass autocast, so a paired bf16 run would be fp32 convolutions
    under a bf16 label. Refused in the API, the CLI and the denoiser itself."""
    import pytest

    from pipelines.cli import main
    from pipelines.errors import UserError
    base, aux = scaled_demo_pair()
    with pytest.raises(UserError, match="fp32 only"):
        generate_sims(base, aux, 1.5, range(2), SAMPLER, batch_size=2, paired=True, precision="bf16")
    with pytest.raises(UserError, match="fp32 only"):
        generate_batches(PairedSIMSDenoiser(base, aux, 1.5), base, range(2), SAMPLER, 2, precision="bf16")
    assert main(["sample-sims", "--base", str(DEMO_MODEL), "--aux", str(DEMO_MODEL), "--omega", "1", "--paired",
                 "--precision", "bf16", "--device", "cpu", "--seeds", "0-1", "--out", "/nonexistent/x.npz"]) == 2


def test_the_refusal_s_cause_still_holds():
    """When torch starts autocasting batched convolutions this fails: then lift the bf16 refusal
    in pipelines/paired.py (and compare paired bf16 with sequential bf16 instead)."""
    w, x = torch.randn(2, 4, 3, 3, 3), torch.randn(5, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.nn.functional.conv2d(x, w[0], padding=1)
        batched = torch.vmap(lambda w: torch.nn.functional.conv2d(x, w, padding=1))(w)
    assert plain.dtype == torch.bfloat16 and batched.dtype == torch.float32


def test_fallbacks_take_the_sequential_path_bit_for_bit():
    """omega = 0, omega = -1, shared encoder and steps outside the interval run SIMSDenoiser's
    own code: bit-identical to it."""
    base, aux = scaled_demo_pair()
    for kw in ({"omega": 0.0}, {"omega": -1.0}, {"omega": 1.5, "shared_encoder": True}):
        seq = generate_batches(SIMSDenoiser(base, aux, **kw), base, range(3), SAMPLER, 3)[0]
        par_d = PairedSIMSDenoiser(base, aux, **kw)
        par = generate_batches(par_d, base, range(3), SAMPLER, 3)[0]
        assert torch.equal(par, seq), kw
    # An interval that no step falls in: never paired, bit-identical to the base alone.
    d = PairedSIMSDenoiser(base, aux, 1.5, interval=(1e-4, 1e-3))
    x = generate_batches(d, base, range(3), SAMPLER, 3)[0]
    assert torch.equal(x, generate_batches(base, base, range(3), SAMPLER, 3)[0]) and d.counts.aux == 0


def test_api_option_gives_the_same_images_and_pass_count():
    base, aux = scaled_demo_pair()
    a, nfe_a = generate_sims(base, aux, 1.5, range(4), SAMPLER, batch_size=2)
    b, nfe_b = generate_sims(base, aux, 1.5, range(4), SAMPLER, batch_size=2, paired=True)
    assert nfe_a == nfe_b == 2 * SAMPLER.nfe
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8: float rounding moves a level at most
