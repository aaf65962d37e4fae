"""Weight-space SIMS merge: exact limits, the rule itself, refusals, provenance, and that the
merged file is an ordinary checkpoint the other verbs load."""
import json

import numpy as np
import pytest
import torch

from pipelines.checkpoints.bundle import save_bundle
from pipelines.checkpoints.download import sha256_file
from pipelines.checkpoints.native import load_model, load_state_file, read_metadata, save_model
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.merge import merge_bundle, merge_checkpoints, merge_state_dicts
from pipelines.models import ModelConfig, build_model


@pytest.fixture
def pair(tmp_path, mlp_pair):
    base, aux, cfg = mlp_pair
    return (save_model(tmp_path / "base.safetensors", base, cfg, provenance={"name": "base"}),
            save_model(tmp_path / "aux.safetensors", aux, cfg, provenance={"name": "aux"}))


def _bits_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_omega_zero_is_base_and_minus_one_is_aux_bit_for_bit(tmp_path, pair):
    b, a = pair
    m0 = merge_checkpoints(b, a, 0.0, tmp_path / "m0.safetensors")
    m1 = merge_checkpoints(b, a, -1.0, tmp_path / "m1.safetensors")
    assert _bits_equal(load_state_file(m0), load_state_file(b))
    assert _bits_equal(load_state_file(m1), load_state_file(a))
    # and the models agree bit for bit, not only the tensors
    x, s = torch.randn(4, 2), torch.full((4,), 0.9)
    with torch.no_grad():
        assert torch.equal(load_model(m0)[0](x, s), load_model(b)[0](x, s))


@pytest.mark.parametrize("omega", [0.5, 1.5, 3.0, -0.3])
def test_merged_weights_follow_the_rule(tmp_path, pair, omega):
    b, a = pair
    m = load_state_file(merge_checkpoints(b, a, omega, tmp_path / "m.safetensors"))
    tb, ta = load_state_file(b), load_state_file(a)
    moved = 0
    for k, v in m.items():
        want = (1 + omega) * tb[k] - omega * ta[k]  # float32 arithmetic
        torch.testing.assert_close(v, want, rtol=4 * torch.finfo(torch.float32).eps, atol=1e-6)
        assert v.dtype == tb[k].dtype
        moved += int(not torch.equal(v, tb[k]))
    assert moved > 0


def test_half_precision_tensors_are_merged_in_float64_and_cast_back():
    b = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)}
    a = {"w": torch.tensor([0.5, 2.5], dtype=torch.float16)}
    m = merge_state_dicts(b, a, 2.0)
    assert m["w"].dtype == torch.float16
    assert torch.equal(m["w"], torch.tensor([2.0, 1.0], dtype=torch.float16))


def test_non_float_buffers_must_agree():
    b = {"w": torch.ones(2), "count": torch.tensor([3], dtype=torch.int64)}
    same = merge_state_dicts(b, {"w": torch.zeros(2), "count": torch.tensor([3])}, 1.0)
    assert torch.equal(same["count"], b["count"]) and torch.equal(same["w"], torch.full((2,), 2.0))
    with pytest.raises(UserError, match="'count'"):
        merge_state_dicts(b, {"w": torch.zeros(2), "count": torch.tensor([4])}, 1.0)


def test_different_architectures_are_refused_with_the_key(tmp_path, pair):
    b, _ = pair
    torch.manual_seed(3)
    cfg = ModelConfig(backbone="mlp", network={"dim": 2, "hidden": 16, "depth": 2})
    other = save_model(tmp_path / "other.safetensors", build_model(cfg), cfg)
    with pytest.raises(UserError, match=r"network\.hidden \(base 32, aux 16\)"):
        merge_checkpoints(b, other, 1.0, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_provenance_records_both_parents_and_omega(tmp_path, pair):
    b, a = pair
    meta = read_metadata(merge_checkpoints(b, a, 1.25, tmp_path / "m.safetensors"))
    merge = meta["provenance"]["merge"]
    assert merge["omega"] == 1.25
    assert merge["base"]["sha256"] == sha256_file(b) and merge["aux"]["sha256"] == sha256_file(a)
    assert merge["base"]["provenance"]["name"] == "base" and merge["aux"]["provenance"]["name"] == "aux"
    assert meta["model"] == read_metadata(b)["model"]


def test_cli_merge_then_generate_accepts_it(tmp_path, pair, capsys):
    b, a = pair
    out = tmp_path / "m.safetensors"
    assert main(["merge", "--base", str(b), "--aux", str(a), "--omega", "0.7", "--out", str(out)]) == 0
    assert '"omega": 0.7' in capsys.readouterr().out
    assert main(["generate", "--model", str(out), "--seeds", "0-3", "--steps", "4",
                 "--out", str(tmp_path / "g.npz")]) == 0
    assert np.load(tmp_path / "g.npz")["samples"].shape == (4, 2)
    assert main(["merge", "--base", str(b), "--out", str(out)]) == 2  # missing --aux/--omega: clean error


def test_bundle_merge_uses_its_omega_and_records_the_bundle(tmp_path, pair):
    b, a = pair
    bundle = save_bundle(tmp_path / "bundle.safetensors", b, a, 0.8)
    m = merge_bundle(bundle, tmp_path / "m.safetensors")
    direct = merge_checkpoints(b, a, 0.8, tmp_path / "d.safetensors")
    assert _bits_equal(load_state_file(m), load_state_file(direct))
    merge = read_metadata(m)["provenance"]["merge"]
    assert merge["bundle"]["sha256"] == sha256_file(bundle)
    assert merge["base"]["sha256"] == sha256_file(b) and merge["aux"]["sha256"] == sha256_file(a)
    assert json.loads(json.dumps(merge))["omega"] == 0.8


def test_studio_registers_a_merged_checkpoint(tmp_path):
    """The merged file is an ordinary checkpoint: the studio's registry takes it, provenance included."""
    from studio.core import open_studio
    from studio.services import registry
    from studio.settings import Settings
    from studio.testing import make_tiny_model
    b = make_tiny_model(tmp_path / "b.safetensors")
    a = tmp_path / "a.safetensors"
    model, meta = load_model(b)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_model(a, model, ModelConfig.from_dict(meta["model"]))
    m = merge_checkpoints(b, a, 0.5, tmp_path / "merged.safetensors")
    st = open_studio(Settings(data_dir=tmp_path / "data"), start_runner=False)
    try:
        card = registry.card(st.db, registry.register_checkpoint(st.db, st.settings, m, name="merged"))
        assert card.resolution == 8 and card.channels == 1
    finally:
        st.close()
