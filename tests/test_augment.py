"""EDM's non-leaking augmentation: the pipe, the loss hook, training with it, inheritance by fine-tunes."""
import numpy as np
import pytest
import torch

from pipelines.checkpoints.native import read_metadata
from pipelines.data import TensorImageDataset
from pipelines.errors import UserError
from pipelines.loss import make_loss
from pipelines.models import ModelConfig, build_model
from pipelines.networks.songunet import songunet_config
from pipelines.training import TrainConfig, train
from pipelines.training.augment import (AUGMENT_DIM, AugmentPipe, LABELS, check_network, recipe_augment_p,
                                        resolve_augment_p)

ONLY = {"xflip": 0, "yflip": 0, "scale": 0, "rotate_frac": 0, "aniso": 0, "translate_frac": 0}
COLUMNS = {"xflip": [0], "yflip": [1], "scale": [2], "rotate_frac": [3, 4], "aniso": [5, 6], "translate_frac": [7, 8]}


def _images(n=64, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _model(augment_dim):
    torch.manual_seed(0)
    net = songunet_config("tiny", img_resolution=8, img_channels=1, augment_dim=augment_dim)
    return ModelConfig(backbone="songunet", network=net)


def test_p_zero_is_the_identity_with_zero_labels():
    x = _images()
    y, labels = AugmentPipe(p=0)(x, torch.Generator().manual_seed(1))
    assert torch.equal(y, x) and labels.shape == (64, AUGMENT_DIM) and not labels.any()
    assert len(LABELS) == AUGMENT_DIM


@pytest.mark.parametrize("name", list(COLUMNS))
def test_each_transform_fills_only_its_own_label_columns(name):
    pipe = AugmentPipe(p=1.0, **{**ONLY, name: 1.0})
    x = _images()
    y, labels = pipe(x, torch.Generator().manual_seed(2))
    others = [c for c in range(AUGMENT_DIM) if c not in COLUMNS[name]]
    assert not labels[:, others].any()
    assert labels[:, COLUMNS[name]].abs().sum() > 0
    changed = (y != x).flatten(1).any(1)
    assert torch.equal(changed, labels[:, COLUMNS[name]].ne(0).any(1))  # moved exactly where labelled


def test_flips_are_exact_and_constant_images_stay_constant():
    x = _images()
    y, labels = AugmentPipe(p=1.0, **{**ONLY, "xflip": 1e8})(x, torch.Generator().manual_seed(3))
    flipped = labels[:, 0] == 1
    assert 10 < int(flipped.sum()) < 54  # each image flipped with probability 1/2
    assert torch.equal(y[flipped], x[flipped].flip(3)) and torch.equal(y[~flipped], x[~flipped])
    const = torch.full((16, 1, 8, 8), 0.3)
    y, _ = AugmentPipe(p=1.0)(const, torch.Generator().manual_seed(4))  # every transform on: borders reflect
    assert torch.allclose(y, const, atol=1e-5)


def test_edm_gates_at_p_012_and_seeded():
    pipe = AugmentPipe(p=0.12)
    x = _images(4000)
    _, a = pipe(x, torch.Generator().manual_seed(5))
    _, b = pipe(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert abs(float((a[:, 0] == 1).float().mean()) - 0.5) < 0.03        # xflip multiplier 1e8: always drawn
    assert abs(float((a[:, 2] != 0).float().mean()) - 0.12) < 0.02       # scale gated at p
    assert abs(float((a[:, 1] == 1).float().mean()) - 0.06) < 0.015      # yflip: p, then a coin


def test_loss_without_augmentation_is_unchanged_and_leaky_networks_are_refused():
    net = build_model(_model(0)).train()
    x = _images(8)
    plain = make_loss("edm")(net, x, generator=torch.Generator().manual_seed(0))
    zero = make_loss("edm", augment_p=0.0)(net, x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, zero)
    with pytest.raises(UserError, match="augment_dim=9"):
        make_loss("edm", augment_p=0.5)(net, x, generator=torch.Generator().manual_seed(0))
    check_network(build_model(_model(AUGMENT_DIM)))  # reads the labels: accepted


def test_the_network_gets_the_labels_and_map_augment_learns():
    net = build_model(_model(AUGMENT_DIM)).train()
    seen = []
    net.model.map_augment.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    loss = make_loss("edm", augment_p=1.0)(net, _images(8), generator=torch.Generator().manual_seed(0))
    loss.sum().backward()
    assert seen and seen[0].shape == (8, AUGMENT_DIM) and seen[0].abs().sum() > 0
    assert net.model.map_augment.weight.grad.abs().sum() > 0


def test_training_with_augmentation_runs_and_a_finetune_inherits_it(tmp_path):
    rng = np.random.default_rng(0)
    data = TensorImageDataset(rng.integers(0, 256, size=(32, 8, 8, 1), dtype=np.uint8))
    small = dict(batch_size=16, total_kimg=0.032, lr_rampup_kimg=0, device="cpu")
    base = train(_model(AUGMENT_DIM), data, TrainConfig(**small, augment_p=0.3), tmp_path / "base")
    assert base["status"] == "done" and np.isfinite(base["loss"])
    ckpt = base["final_checkpoint"]
    assert read_metadata(ckpt)["training"]["config"]["augment_p"] == 0.3
    assert resolve_augment_p(None, ckpt) == (0.3, "the base checkpoint's training config")
    tuned = train(None, data, TrainConfig(**small), tmp_path / "aux", init_checkpoint=ckpt)  # augment_p unset
    assert read_metadata(tuned["final_checkpoint"])["training"]["config"]["augment_p"] == 0.3
    off = train(None, data, TrainConfig(**small, augment_p=0.0), tmp_path / "off", init_checkpoint=ckpt)
    assert read_metadata(off["final_checkpoint"])["training"]["config"]["augment_p"] == 0.0
    # from scratch, unset: off
    plain = train(_model(0), data, TrainConfig(**small), tmp_path / "plain")
    assert read_metadata(plain["final_checkpoint"])["training"]["config"]["augment_p"] == 0.0


def test_imported_edm_checkpoints_inherit_edms_recipe():
    def meta(res, augment_dim, **prov):
        return {"model": {"network": {"img_resolution": res, "augment_dim": augment_dim}},
                "provenance": {"importer": "edm_pickle", **prov}}

    assert recipe_augment_p(meta(64, 9))[0] == 0.15
    assert recipe_augment_p(meta(32, 9))[0] == 0.12
    assert recipe_augment_p(meta(32, 9, augment_p=0.2))[0] == 0.2
    assert recipe_augment_p(meta(64, 0))[0] == 0.0  # an EDM network without augment labels
    with pytest.raises(UserError, match="set augment_p"):
        recipe_augment_p(meta(128, 9))
    assert TrainConfig(augment_p=None).recipe() == TrainConfig().recipe()
    with pytest.raises(UserError, match="augment_p"):
        TrainConfig(augment_p=1.5)


def test_cli_flag_sets_augment_p(capsys, tmp_path):
    from pipelines.cli import main

    assert main(["train", "--data", "digits", "--arch", "tiny", "--budget-kimg", "1", "--augment-p", "0.2",
                 "--run-dir", str(tmp_path), "--dry-run"]) == 0
    assert '"augment_p": 0.2' in capsys.readouterr().out
