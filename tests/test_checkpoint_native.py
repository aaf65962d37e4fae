"""Our checkpoint format and the SIMS bundle: save -> load -> same outputs; bad files -> clear errors."""
import pytest
import torch
from safetensors.torch import save_file

from pipelines.checkpoints.bundle import load_bundle, save_bundle
from pipelines.checkpoints.native import load_model, read_metadata, save_model
from pipelines.demo.aux import read_diff_header
from pipelines.errors import UserError
from pipelines.models import ModelConfig
from pipelines.sampler import SamplerConfig


def _same_outputs(a, b):
    x, sigma = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.full((5,), 0.7)
    with torch.no_grad():
        return torch.equal(a(x, sigma), b(x, sigma))


def test_save_load_round_trip(tmp_path, mlp_pair):
    base, _, cfg = mlp_pair
    path = save_model(tmp_path / "m.safetensors", base, cfg, dataset={"name": "toy"}, provenance={"parent": None})
    loaded, meta = load_model(path)
    assert _same_outputs(base, loaded)
    assert meta["model"] == cfg.to_dict() and meta["dataset"] == {"name": "toy"}
    assert "git_commit" in meta["provenance"]


def test_bundle_round_trip(tmp_path, mlp_pair):
    base, aux, cfg = mlp_pair
    b = save_model(tmp_path / "base.safetensors", base, cfg)
    a = save_model(tmp_path / "aux.safetensors", aux, cfg)
    path = save_bundle(tmp_path / "shift.safetensors", b, a, 1.5, interval=(0.3, 2.0),
                       sampler=SamplerConfig(num_steps=7), card={"fractions": {"5-9": 0.7}})
    bundle = load_bundle(path)
    assert bundle.omega == 1.5 and bundle.interval == (0.3, 2.0) and bundle.sampler.num_steps == 7
    assert _same_outputs(base, bundle.base) and _same_outputs(aux, bundle.aux)
    assert "fractions" in path.with_suffix(".md").read_text()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4 + b"garbage" * 10)
    with pytest.raises(UserError, match="not a readable"):
        read_metadata(bad)


def test_truncated_checkpoint(tmp_path, mlp_pair):
    base, _, cfg = mlp_pair
    path = save_model(tmp_path / "m.safetensors", base, cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError):
        load_model(path)


@pytest.mark.parametrize("name,match", [("model.pkl", "pickle"), ("model.png", "not a readable")])
def test_wrong_file_type(tmp_path, name, match):
    f = tmp_path / name
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(UserError, match=match):
        read_metadata(f)


@pytest.mark.parametrize("read,meta,match", [
    (read_metadata, {"sims": "{not json"}, "not valid JSON"),
    (read_metadata, {"sims": "[1, 2]"}, "holds no model config"),
    (read_metadata, {"other": "{}"}, "no SIMS metadata"),
    (read_diff_header, {"sims_diff": "{not json"}, "not valid JSON.*build-demo-aux"),
    (read_diff_header, {"sims_diff": "[1]"}, "not a sims-model-diff/1 file.*build-demo-aux"),
    (read_diff_header, {"sims": "{}"}, "not a sims-model-diff/1 file"),
])
def test_bad_metadata_is_named(tmp_path, read, meta, match):
    f = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(f), metadata=meta)
    with pytest.raises(UserError, match=match):
        read(f)


def test_unreadable_difference_file_says_how_to_rebuild(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="not a readable difference file.*build-demo-aux"):
        read_diff_header(tmp_path / "junk.safetensors")


def test_unknown_config_key_is_named():
    with pytest.raises(UserError, match="'chanels'"):
        ModelConfig.from_dict({"backbone": "mlp", "chanels": 3})
