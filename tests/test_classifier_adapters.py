"""deepface and FairFace adapters run their real code paths on weight files written here
(random weights of the right architecture) and fail with an actionable error without them;
the registry lists every plug-in.
"""
import numpy as np
import pytest
import torch
from skimage import data

from pipelines.attributes import available_classifiers, get_classifier
from pipelines.errors import UserError

torch_meta = torch.device("meta")


# ----------------------------------------------------------------------------
# helpers


def _random_state(module: torch.nn.Module, seed: int = 0, full_limit: int = 1_000_000) -> dict:
    """He-scaled random tensors for every entry of module's state dict.

    Tensors above `full_limit` elements (VGG-Face's fc6/fc7, ~500 MB in all) are strided views of
    one random row per tensor (each output row a shifted window of it), so the file stays ~12 MB
    while torch.load(weights_only=True) + load_state_dict see full-shape tensors.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        fan_in = int(np.prod(v.shape[1:])) if v.ndim > 1 else 1
        std = (2.0 / fan_in) ** 0.5 if v.ndim > 1 else 0.01
        if v.numel() <= full_limit:
            out[k] = torch.randn(v.shape, generator=g) * std
        else:
            step = 97
            base = torch.randn((v.shape[0] - 1) * step + fan_in, generator=g) * std
            out[k] = base.as_strided(tuple(v.shape), (step,) + torch.empty(v.shape[1:]).stride())
    return out


def _faces(n=2, size=224):
    img = data.astronaut()[:, 128:384 + 64]  # a face-centred crop, resized by the adapters
    rng = np.random.default_rng(0)
    out = [np.asarray(torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                                                      size=(size, size), mode="area")[0].permute(1, 2, 0).round(),
                      dtype=np.uint8)]
    out += [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n - 1)]
    return np.stack(out)


def test_registry_lists_every_plugin():
    assert set(available_classifiers()) == {"digits", "deepface-gender", "deepface-race", "deepface-age",
                                            "fairface-gender", "fairface-race7", "fairface-age", "fairface-race4",
                                            "facenet-probe"}
    with pytest.raises(UserError, match="unknown classifier"):
        get_classifier("no-such-classifier")


# ----------------------------------------------------------------------------
# deepface

DEEPFACE = {"gender": ("Gender", "GenderModel", "gender_model_weights.pth", 2),
            "race": ("Race", "RaceModel", "race_model_single_batch.pth", 6),
            "age": ("Age", "AgeModel", "age_model_weights.pth", 9)}


@pytest.fixture
def deepface_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "pytorch")
    (tmp_path / ".deepface" / "weights").mkdir(parents=True)
    return tmp_path


def _write_deepface_weights(home, task):
    import importlib

    module_name, cls, file, _ = DEEPFACE[task]
    module = importlib.import_module(f"deepface.models.demography.pytorch.{module_name}")
    with torch_meta:
        model = getattr(module, cls)()
    torch.save(_random_state(model, seed=len(task)), home / ".deepface" / "weights" / file)


@pytest.mark.parametrize("task", list(DEEPFACE))
def test_deepface_without_weights_names_file_and_never_downloads(task, deepface_home, monkeypatch):
    from deepface.commons import weight_utils

    def no_download(*a, **k):
        raise AssertionError("deepface tried to download weights")
    monkeypatch.setattr(weight_utils, "download_weights_if_necessary", no_download)
    with pytest.raises(UserError) as e:
        get_classifier(f"deepface-{task}", device="cpu")
    msg = str(e.value)
    assert DEEPFACE[task][2] in msg and str(deepface_home / ".deepface" / "weights") in msg


@pytest.mark.slow
def test_deepface_gender_batched_equals_deepface_analyze(deepface_home):
    """Our one-call batch gives exactly what DeepFace.analyze gives image by image."""
    from deepface import DeepFace

    _write_deepface_weights(deepface_home, "gender")
    clf = get_classifier("deepface-gender", device="cpu")
    assert clf.classes == ["Woman", "Man"]
    images = _faces(2)
    p = clf.predict_proba(images)
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    for i in range(2):
        ref = DeepFace.analyze(images[i][..., ::-1].copy(), actions=["gender"], detector_backend="skip",
                               enforce_detection=False, silent=True)[0]["gender"]
        assert np.allclose(p[i], [ref["Woman"] / 100, ref["Man"] / 100], atol=1e-5)
    assert np.allclose(clf.predict_proba(images[:1]), p[:1], atol=1e-6)  # n = 1 keeps its batch axis


@pytest.mark.slow
@pytest.mark.parametrize("task", ["race", "age"])
def test_deepface_race_and_age_run_end_to_end(task, deepface_home):
    _write_deepface_weights(deepface_home, task)
    clf = get_classifier(f"deepface-{task}", device="cpu")
    images = _faces(2, size=100)  # not 224: the adapter letterboxes like deepface
    p = clf.predict_proba(images)
    assert p.shape == (2, DEEPFACE[task][3]) and np.allclose(p.sum(1), 1) and (p >= 0).all()
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.allclose(clf.predict_proba(t), p, atol=1e-4)


def test_deepface_age_bins_sum_the_101_ages():
    from pipelines.attributes.deepface_adapter import bin_ages

    p = np.zeros((2, 101))
    p[0, 2], p[0, 3], p[1, 100] = 0.5, 0.5, 1.0
    assert np.allclose(bin_ages(p), [[0.5, 0.5, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1]])


# ----------------------------------------------------------------------------
# FairFace


@pytest.fixture(scope="module")
def fairface_weights(tmp_path_factory):
    from pipelines.attributes.fairface import build_resnet34_18

    torch.manual_seed(0)
    net = build_resnet34_18().eval()
    path = tmp_path_factory.mktemp("ff") / "fairface_alldata_20191111.pt"
    torch.save(net.state_dict(), path)
    return path, net


def _fairface_reference(net, images):
    """Independent preprocessing: torchvision resize 224 (antialias) + ImageNet normalisation."""
    import torchvision.transforms.functional as TF

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = TF.normalize(TF.resize(x, [224, 224], antialias=True), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        return net(x).double()


def test_fairface_heads_match_the_network_outputs(fairface_weights):
    path, net = fairface_weights
    images = _faces(3, size=96)
    logits = _fairface_reference(net, images)
    for name, sl, k in (("fairface-race7", slice(0, 7), 7), ("fairface-gender", slice(7, 9), 2),
                        ("fairface-age", slice(9, 18), 9)):
        clf = get_classifier(name, weights=path, device="cpu")
        p = clf.predict_proba(images, batch_size=2)
        assert p.shape == (3, k) and np.allclose(p.sum(1), 1)
        assert np.allclose(p, torch.softmax(logits[:, sl], 1).numpy(), atol=1e-4), name
    assert get_classifier("fairface-gender", weights=path).classes == ["Male", "Female"]


def test_fairface_all_heads_env_var_and_module_prefix(fairface_weights, tmp_path, monkeypatch):
    from pipelines.attributes.fairface import predict_all_heads

    path, net = fairface_weights
    images = _faces(2, size=64)
    monkeypatch.setenv("SIMS_FAIRFACE_WEIGHTS", str(path))
    heads = predict_all_heads(images, device="cpu")
    assert np.allclose(heads["gender"], get_classifier("fairface-gender").predict_proba(images))
    prefixed = tmp_path / "dp.pt"  # saved from nn.DataParallel
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, prefixed)
    with pytest.raises(UserError, match="Cannot tell which FairFace model"):  # no telling name, no statement
        get_classifier("fairface-race7", weights=prefixed, device="cpu")
    p = get_classifier("fairface-race7", weights=prefixed, device="cpu", variant="race7").predict_proba(images)
    assert np.allclose(p, heads["race7"], atol=1e-6)


def test_fairface_face_crop_path_runs(fairface_weights):
    path, _ = fairface_weights
    clf = get_classifier("fairface-gender", weights=path, device="cpu", crop_faces=True)
    p = clf.predict_proba(data.astronaut()[None])
    assert p.shape == (1, 2) and np.allclose(p.sum(1), 1)


def test_fairface_errors_are_actionable(tmp_path, monkeypatch):
    from pathlib import Path
    monkeypatch.delenv("SIMS_FAIRFACE_WEIGHTS", raising=False)
    with pytest.raises(UserError, match="SIMS_FAIRFACE_WEIGHTS") as e:
        get_classifier("fairface-race7")
    msg = str(e.value)
    assert "res34_fair_align_multi_7_20190809.pt" in msg and "fairface_alldata_20191111.pt" in msg
    assert "github.com/dchen236/FairFace" in msg
    with pytest.raises(UserError) as e4:
        get_classifier("fairface-race4")
    assert "fairface_alldata_4race_20191111.pt" in str(e4.value) and "res34_fair_align_multi_4_20190809.pt" in str(e4.value)
    # the README section the message points to exists
    section = msg.split("section '")[1].split("'")[0]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"### {section}" in readme
    with pytest.raises(UserError, match=str(tmp_path / "nope.pt")):
        get_classifier("fairface-race7", weights=tmp_path / "nope.pt")
    torch.save({"fc.weight": torch.zeros(4, 512)}, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="expected \\(18, 512\\)"):
        get_classifier("fairface-race7", weights=tmp_path / "wrong.pt", variant="race7")


@pytest.fixture(scope="module")
def fairface4(tmp_path_factory):
    from pipelines.attributes.fairface import build_resnet34_18

    torch.manual_seed(4)
    net = build_resnet34_18().eval()
    folder = tmp_path_factory.mktemp("ff4")
    for name in ("fairface_alldata_4race_20191111.pt", "res34_fair_align_multi_4_20190809.pt", "mine.pt"):
        torch.save(net.state_dict(), folder / name)
    return folder, net


@pytest.mark.parametrize("name", ["fairface_alldata_4race_20191111.pt", "res34_fair_align_multi_4_20190809.pt"])
def test_fairface_4race_file_is_never_taken_for_the_7race_model(fairface4, name, monkeypatch):
    """Both published 4-race files: race7/gender/age refuse; race4 reads the first 4 logits (upstream predict.py)."""
    monkeypatch.delenv("SIMS_FAIRFACE_VARIANT", raising=False)
    folder, net = fairface4
    for head in ("race7", "gender", "age"):
        with pytest.raises(UserError, match="4-race one"):
            get_classifier(f"fairface-{head}", weights=folder / name, device="cpu")
    with pytest.raises(UserError, match="but the 7-race variant was stated"):
        get_classifier("fairface-race4", weights=folder / name, device="cpu", variant="race7")
    clf = get_classifier("fairface-race4", weights=folder / name, device="cpu")
    assert clf.classes == ["White", "Black", "Asian", "Indian"]
    images = _faces(2, size=64)
    p = clf.predict_proba(images)
    assert np.allclose(p, torch.softmax(_fairface_reference(net, images)[:, :4], 1).numpy(), atol=1e-4)


def test_fairface_unknown_name_needs_a_stated_variant(fairface4, monkeypatch):
    from pipelines.attributes.fairface import predict_all_heads

    folder, net = fairface4
    monkeypatch.delenv("SIMS_FAIRFACE_VARIANT", raising=False)
    for head in ("race7", "race4", "gender"):
        with pytest.raises(UserError, match="Cannot tell which FairFace model"):
            get_classifier(f"fairface-{head}", weights=folder / "mine.pt", device="cpu")
    monkeypatch.setenv("SIMS_FAIRFACE_VARIANT", "race4")
    images = _faces(2, size=64)
    heads = predict_all_heads(images, weights=folder / "mine.pt", device="cpu")
    assert set(heads) == {"race4"}  # a 4-race file yields no gender or age
    with pytest.raises(UserError, match="4-race one"):
        get_classifier("fairface-gender", weights=folder / "mine.pt", device="cpu")
    assert np.allclose(heads["race4"], get_classifier("fairface-race4", weights=folder / "mine.pt").predict_proba(images))


def test_fairface_7race_published_names_are_accepted(fairface_weights, tmp_path, monkeypatch):
    monkeypatch.delenv("SIMS_FAIRFACE_VARIANT", raising=False)
    _, net = fairface_weights
    current = tmp_path / "res34_fair_align_multi_7_20190809.pt"
    torch.save(net.state_dict(), current)
    clf = get_classifier("fairface-age", weights=current, device="cpu")
    assert clf.variant == "race7"
    with pytest.raises(UserError, match="needs FairFace's 4-race model"):
        get_classifier("fairface-race4", weights=current, device="cpu")


@pytest.mark.slow
def test_two_deepface_classifiers_do_not_share_a_model(deepface_home, monkeypatch):
    """Each adapter owns its client: converting one leaves the other's parameters as they were,
    and deepface's process-wide cached client is never used."""
    from deepface.modules import modeling

    _write_deepface_weights(deepface_home, "gender")

    def cached(*a, **k):
        raise AssertionError("the adapter used deepface's shared cached client")
    monkeypatch.setattr(modeling, "build_model", cached)
    a = get_classifier("deepface-gender", device="cpu")
    b = get_classifier("deepface-gender", device="cpu")
    assert a.client is not b.client and a.client.model is not b.client.model
    pa = {p.data_ptr() for p in a.client.model.parameters()}
    assert not pa & {p.data_ptr() for p in b.client.model.parameters()}
    images = _faces(2)
    before = b.predict_proba(images)
    a.client.model.double()  # stands in for moving `a` to another device
    assert all(p.dtype == torch.float64 for p in a.client.model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in b.client.model.parameters())
    assert np.array_equal(b.predict_proba(images), before)
