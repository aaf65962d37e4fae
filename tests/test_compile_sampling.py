"""--compile for sampling (pipelines.compiling): a missing compiler is a UserError, the paired
SIMS call of compiled models uses both models' weights, and compiled samples equal eager ones to
float rounding (tolerance 1e-3 on [-1, 1] pixels; 1.1e-4 was measured on this CPU)."""
import copy
import json

import numpy as np
import pytest
import torch

from pipelines import compiling
from pipelines.errors import UserError
from tests.testkit import scaled_demo_pair


def test_mode_is_cuda_graphs_on_cuda_only():
    assert compiling.compile_mode("cuda") == "reduce-overhead"
    assert compiling.compile_mode("cuda:1") == "reduce-overhead"
    assert compiling.compile_mode("cpu") is None


def test_missing_cpu_compiler_is_a_user_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"C\+\+ compiler \(g\+\+ or c\+\+ or clang\+\+\)"):
        compiling.require_compiler("cpu")
    monkeypatch.setenv("CXX", "no-such-cxx")
    with pytest.raises(UserError, match="no-such-cxx"):
        compiling.require_compiler("cpu")


def test_missing_triton_is_a_user_error(monkeypatch):
    monkeypatch.setattr(compiling.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="Triton"):
        compiling.require_compiler("cuda")


def test_compiler_present_here_passes():
    compiling.require_compiler("cpu")  # this machine has g++ (torch.compile ran on it)


def test_cli_compile_without_compiler_exits_with_message(tmp_path, mlp_pair, monkeypatch, capsys):
    from pipelines.checkpoints.native import save_model
    from pipelines.cli import main
    base, _, cfg = mlp_pair
    ckpt = save_model(tmp_path / "base.safetensors", base, cfg)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    code = main(["generate", "--model", str(ckpt), "--seeds", "0-1", "--steps", "2", "--device", "cpu",
                 "--compile", "--out", str(tmp_path / "g.npz")])
    assert code == 2
    assert "needs a C++ compiler" in capsys.readouterr().err
    assert not (tmp_path / "g.npz").exists()


def test_compile_failure_during_warm_up_is_a_user_error(mlp_pair):
    base, _, _ = mlp_pair

    def broken(x, sigma, labels):
        raise RuntimeError("inductor: compiler exploded\nmore lines")
    with pytest.raises(UserError, match="could not compile the network on cpu: RuntimeError: inductor: compiler "
                                        "exploded. Sample without --compile"):
        compiling.warm_up(broken, base, [2], type("S", (), {"sigma_max": 80.0})(), "cpu")


def test_warm_up_leaves_pass_counts_alone(mlp_pair):
    from pipelines.guidance import SIMSDenoiser
    from pipelines.sampler import SamplerConfig
    base, aux, _ = mlp_pair
    d = SIMSDenoiser(base, aux, 1.0, interval=(0.5, 2.0))
    seen = []
    real = d.aux.forward
    d.aux.forward = lambda *a, **k: (seen.append(float(a[1].reshape(-1)[0])), real(*a, **k))[1]
    compiling.warm_up(d, base, [3, 1], SamplerConfig(num_steps=4), "cpu")
    assert d.counts.calls == 0 and d.counts.aux == 0
    assert len(seen) == 2 and all(0.5 <= s <= 2.0 for s in seen)  # inside the interval: the aux compiles too


def test_paired_call_of_compiled_models_uses_both_weight_sets():
    """A compiled backbone's halves are bound to its own weights: the vmapped skeleton must not
    call them (it would run the base twice). Compilation is lazy, so this check is quick."""
    from pipelines.checkpoints.native import load_model
    from pipelines.demo.assets import DEMO_MODEL
    from pipelines.paired import PairedNetworks
    from pipelines.precond import compile_backbone
    base, _ = load_model(DEMO_MODEL)
    aux = copy.deepcopy(base)
    compile_backbone(base), compile_backbone(aux)
    pair = PairedNetworks(base, aux)
    assert "encode" not in pair.skeleton.model.__dict__ and "decode" not in pair.skeleton.model.__dict__
    assert "encode" in base.model.__dict__  # the base itself stays compiled
    assert hasattr(pair._run, "_torchdynamo_orig_callable")  # the paired call is compiled instead
    assert not hasattr(next(iter(pair.params.values())), "_dynamo_static_input_type")
    # Under CUDA graphs the stacked weights are marked static: not copied into the graph per replay.
    b2, a2 = scaled_demo_pair()
    compile_backbone(b2, "reduce-overhead"), compile_backbone(a2, "reduce-overhead")
    graphs = PairedNetworks(b2, a2)
    assert all(hasattr(t, "_dynamo_static_input_type") for t in graphs.params.values())


@pytest.mark.slow
def test_compiled_sampling_equals_eager(tmp_path, capsys):
    """Demo model, seeds 0-3 in batches of 2, 4 Heun steps: base alone, full SIMS (two calls)
    and full SIMS paired, each compiled vs eager. On this 2-core CPU each compilation takes
    1-3 minutes, hence slow."""
    from pipelines.demo.assets import DEMO_SAMPLER
    from pipelines.generate import compile_and_warm_up, generate_batches
    from pipelines.guidance import SIMSDenoiser
    from pipelines.paired import PairedSIMSDenoiser
    from pipelines.sampler import SamplerConfig
    sampler = SamplerConfig(**{**DEMO_SAMPLER.__dict__, "num_steps": 4})
    seeds = range(4)
    base, aux = scaled_demo_pair()
    eager_base = generate_batches(base, base, seeds, sampler, 2)[0]
    eager_sims = generate_batches(SIMSDenoiser(base, aux, 1.5), base, seeds, sampler, 2)[0]
    c_base, c_aux = copy.deepcopy(base), copy.deepcopy(aux)
    d, compile_s = compile_and_warm_up(lambda: c_base, [c_base], c_base, seeds, sampler, 2, "cpu")
    assert compile_s > 0
    torch.testing.assert_close(generate_batches(d, c_base, seeds, sampler, 2)[0], eager_base, rtol=0, atol=1e-3)
    for make in (SIMSDenoiser, PairedSIMSDenoiser):
        d, _ = compile_and_warm_up(lambda: make(c_base, c_aux, 1.5), [c_base, c_aux], c_base, seeds, sampler, 2,
                                   "cpu")
        x = generate_batches(d, c_base, seeds, sampler, 2)[0]
        torch.testing.assert_close(x, eager_sims, rtol=0, atol=1e-3)
        assert (x - eager_base).abs().max() > 0.05  # guided: the auxiliary's weights were used
        assert d.counts.aux == d.counts.base > 0

    # The CLI prints the compilation apart and records it next to the sampling time.
    from pipelines.cli import main
    from pipelines.demo.assets import DEMO_MODEL
    out = tmp_path / "c.npz"
    assert main(["generate", "--model", str(DEMO_MODEL), "--seeds", "0-1", "--batch", "2", "--steps", "4",
                 "--device", "cpu", "--compile", "--out", str(out)]) == 0
    assert "compile: " in capsys.readouterr().out
    info = json.loads(str(np.load(out)["info"]))
    assert info["compiled"] and info["compile_seconds"] > 0 and "seconds" in info
