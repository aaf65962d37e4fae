"""The linear probe learns an attribute from a handful of manual labels, retrains as labels come,
and serves as the 'facenet-probe' classifier; facenet embeddings need their weights file.

Features used here are ones we can compute offline and that carry meaning: HOG on the LFW
subset (faces vs non-faces) and the demo digits classifier's features (even vs odd digits).
Random-init InceptionResnetV1 embeddings would not be meaningful, so facenet is only checked
for its loading path and output contract.
"""
import numpy as np
import pytest
import torch
from skimage import data

from pipelines.attributes import get_classifier
from pipelines.attributes.digits import digits_split
from pipelines.attributes.facenet import VGGFACE2_FILE, FacenetEmbedder, HogFeatures, LinearProbe, make_features
from pipelines.errors import UserError


@pytest.fixture(scope="module")
def lfw():
    x = (data.lfw_subset() * 255).round().astype(np.uint8)[..., None]
    y = np.array(["face"] * 100 + ["non-face"] * 100)
    return x, y


def _split(y, per_class, seed):
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])
    return train, np.setdiff1d(np.arange(len(y)), train)


def _accuracy(probe, feats, y):
    return (np.asarray(probe.classes)[probe.predict_proba(feats).argmax(1)] == y).mean()


def test_probe_learns_faces_vs_non_faces_from_ten_labels_and_improves_with_more(lfw):
    images, y = lfw
    feats = HogFeatures()(images)
    train, test = _split(y, 5, seed=0)   # 5 faces + 5 non-faces labelled by hand
    probe = LinearProbe(feature_name="hog").fit(feats[train], y[train])
    acc10 = _accuracy(probe, feats[test], y[test])
    rng = np.random.default_rng(1)
    more = np.concatenate([rng.choice(test[y[test] == c], 15, replace=False) for c in ("face", "non-face")])
    probe.add_labels(feats[more], y[more])   # retrain as the user labels 30 more
    held = np.setdiff1d(test, more)
    acc40 = _accuracy(probe, feats[held], y[held])
    print(f"probe on HOG, LFW faces vs non-faces: {acc10:.3f} with 10 labels, {acc40:.3f} with 40 labels")
    assert probe.n_labels == 40
    assert acc10 >= 0.80 and acc40 >= 0.90


def test_probe_learns_even_vs_odd_digits_from_twenty_labels():
    _, _, x_te, y_te = digits_split()
    images = np.round(x_te[:, 0] * 255).astype(np.uint8)[..., None]
    feats = make_features("digits", device="cpu")(images)
    y = np.where(y_te % 2 == 0, "even", "odd")
    train, test = _split(y, 10, seed=0)
    probe = LinearProbe(feature_name="digits").fit(feats[train], y[train])
    acc = _accuracy(probe, feats[test], y[test])
    print(f"probe on digits features, even vs odd: {acc:.3f} with 20 labels")
    assert acc >= 0.80


def test_probe_probabilities_and_minimum_labels():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 4])
    y = ["a"] * 5 + ["b"] * 5
    p = LinearProbe().fit(x, y).predict_proba(x)
    assert p.shape == (10, 2) and np.allclose(p.sum(1), 1) and (p.argmax(1) == [0] * 5 + [1] * 5).all()
    with pytest.raises(UserError, match="at least 2 labelled examples"):
        LinearProbe().fit(x[:6], ["a"] * 5 + ["b"])
    with pytest.raises(UserError, match=">= 2"):
        LinearProbe().fit(x[:5], ["a"] * 5)
    with pytest.raises(UserError, match="not trained"):
        LinearProbe().predict_proba(x)
    three = LinearProbe(min_per_class=1).fit(x[[0, 1, 5]], ["a", "b", "c"])
    assert three.predict_proba(x).shape == (10, 3)


def test_probe_file_roundtrip_and_registry_classifier(tmp_path, lfw):
    images, y = lfw
    train, test = _split(y, 10, seed=2)
    probe = LinearProbe(feature_name="hog").fit(HogFeatures()(images[train]), y[train])
    probe.save(tmp_path / "probe.npz")
    clf = get_classifier("facenet-probe", weights=tmp_path / "probe.npz", device="cpu")
    assert clf.classes == ["face", "non-face"]
    p = clf.predict_proba(images[test])
    assert np.allclose(p, probe.predict_proba(HogFeatures()(images[test])))
    back = LinearProbe.load(tmp_path / "probe.npz")
    assert back.n_labels == 20 and back.add_labels(HogFeatures()(images[test[:4]]), y[test[:4]]).n_labels == 24
    with pytest.raises(UserError, match="--weights probe.npz"):
        get_classifier("facenet-probe")


def test_facenet_embedder_needs_its_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        FacenetEmbedder(device="cpu")
    assert VGGFACE2_FILE in str(e.value) and str(tmp_path / "checkpoints") in str(e.value)


def test_facenet_embedder_loads_a_vggface2_layout_file(tmp_path, monkeypatch):
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)  # vggface2 file layout
    (tmp_path / "checkpoints").mkdir()
    torch.save(net.state_dict(), tmp_path / "checkpoints" / VGGFACE2_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    emb = FacenetEmbedder(device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    e = emb(x, batch_size=2)
    assert e.shape == (3, 512) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(e, emb(x), atol=1e-5)  # deterministic, batch-size independent
