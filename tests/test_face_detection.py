"""MTCNN (bundled facenet-pytorch weights) as face detector, face gate and cropper, on skimage data."""
import numpy as np
import pytest
import torch
from skimage import data

from pipelines.attributes import NO_FACE, Classifier, FaceGate, builtin_groupings
from pipelines.attributes.facenet import MTCNNDetector

# Measured on this data: 200/200 correct (100 faces found, 0 of 100 non-faces flagged).
LFW_MIN_ACCURACY = 0.98


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector(device="cpu")


@pytest.fixture(scope="module")
def lfw():
    x = data.lfw_subset()  # 100 face crops then 100 non-faces, 25x25 grey in [0, 1]
    return (x * 255).round().astype(np.uint8)[..., None], np.r_[np.ones(100, bool), np.zeros(100, bool)]


def test_finds_the_astronauts_face(detector):
    img = data.astronaut()
    boxes, best = detector.detect(img[None])
    assert len(boxes[0]) == 1 and best[0] > 0.99
    x0, y0, x1, y1 = boxes[0][0]
    # Eileen Collins' face sits around x 180-270, y 60-170 in the 512x512 image
    assert 160 < (x0 + x1) / 2 < 250 and 80 < (y0 + y1) / 2 < 150 and 50 < x1 - x0 < 150


def test_separates_faces_from_non_faces_on_lfw_subset(detector, lfw):
    images, is_face = lfw
    found = detector.has_face(images)
    accuracy = (found == is_face).mean()
    print(f"MTCNN faces vs non-faces on lfw_subset: accuracy {accuracy:.3f} "
          f"(faces found {found[is_face].mean():.2f}, non-faces flagged {found[~is_face].mean():.2f})")
    assert accuracy >= LFW_MIN_ACCURACY


class _Constant(Classifier):
    """A stand-in inner classifier: the gate's behaviour does not depend on what it wraps."""

    name, classes = "const", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]

    def _predict_batch(self, x):
        p = np.zeros((x.shape[0], 10))
        p[:, 3] = 1
        return p


def test_face_gate_marks_non_faces_no_face(detector, lfw):
    images, is_face = lfw
    idx = np.r_[0:5, 100:105]
    gate = FaceGate(_Constant(device="cpu"), detector)
    p = gate.predict_proba(images[idx])
    assert gate.classes[-1] == NO_FACE and np.allclose(p.sum(1), 1)
    assert np.array_equal(p[:, -1] == 1, ~is_face[idx])
    labels, _ = builtin_groupings("digits")["digit=3 vs rest"].assign(p, gate.classes)
    assert list(labels) == ["3"] * 5 + [NO_FACE] * 5
    # float [-1, 1] tensors take the same path
    t = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.array_equal(gate.predict_proba(t), p)


def test_crop_returns_the_face_region(detector):
    img = data.astronaut()[None]
    crops, found = detector.crop(np.concatenate([img, np.zeros_like(img)]), size=64)
    assert crops.shape == (2, 64, 64, 3) and list(found) == [True, False]
    # the face crop is brighter/more varied than a crop of the black image (which falls back to whole image)
    assert crops[0].std() > 20 and crops[1].max() == 0


def test_similarity_from_eyes_maps_the_eyes_onto_the_template():
    from pipelines.attributes.align import similarity_from_eyes, template_eyes
    src = np.array([[40.0, 60.0], [70.0, 45.0]])
    dst = template_eyes(300, 0.25)
    M = similarity_from_eyes(src, dst)
    got = (M @ np.c_[src, np.ones(2)].T).T
    assert np.allclose(got, dst)
    a, b = M[0, 0], M[1, 0]
    assert np.allclose(M[:, :2], [[a, -b], [b, a]])  # a similarity: rotation and uniform scale only
    # dlib's template with padding 0.25: the eyes sit level, symmetric about the chip's centre line
    assert abs(dst[0, 1] - dst[1, 1]) < 0.1 and abs((dst[0, 0] + dst[1, 0]) / 2 - 150) < 2


def test_aligned_chip_levels_a_tilted_face(detector):
    """Tilt the astronaut by 20 degrees: on the aligned chip MTCNN finds the eyes again level and at the
    template's eye centres; the plain box crop leaves them tilted."""
    from scipy.ndimage import rotate

    from pipelines.attributes.align import template_eyes
    img = data.astronaut()
    tilted = np.clip(rotate(img, 20, reshape=False, order=1), 0, 255).astype(np.uint8)
    eyes = detector.eyes(tilted[None])[0]
    assert eyes is not None
    dy, dx = eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]
    assert abs(np.degrees(np.arctan2(dy, dx))) > 12  # the eyes are tilted in the input
    chips, found = detector.aligned(np.stack([tilted, np.zeros_like(tilted)]), size=300, padding=0.25)
    assert chips.shape == (2, 300, 300, 3) and list(found) == [True, False]
    again = detector.eyes(chips[:1])[0]
    assert again is not None
    want = template_eyes(300, 0.25)
    # level, at the template's scale, and where the template puts them (MTCNN's eye points move by
    # ~5% of the chip between framings, so positions are checked to 20 px of 300)
    assert abs(np.degrees(np.arctan2(again[1, 1] - again[0, 1], again[1, 0] - again[0, 0]))) < 3
    assert abs(np.linalg.norm(again[1] - again[0]) / np.linalg.norm(want[1] - want[0]) - 1) < 0.1
    assert np.abs(again - want).max() < 20
    crop, _ = detector.crop(tilted[None], size=300)
    before = detector.eyes(crop)[0]
    assert abs(np.degrees(np.arctan2(before[1, 1] - before[0, 1], before[1, 0] - before[0, 0]))) > 12


def test_fairface_face_crop_uses_the_aligned_chip(tmp_path, detector):
    """FairFace's crop_faces path feeds the aligned chip (resized 300 -> 224), not the box crop."""
    import torch.nn.functional as F

    from pipelines.attributes.fairface import FairFaceModel, build_resnet34_18
    torch.manual_seed(0)
    path = tmp_path / "res34_fair_align_multi_7_20190809.pt"
    torch.save(build_resnet34_18().state_dict(), path)
    model = FairFaceModel(path, torch.device("cpu"), crop_faces=True)
    img = data.astronaut()[None]
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    got = model.preprocess(x)
    chips, _ = detector.aligned(img, size=300, padding=0.25)
    want = F.interpolate(torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255, size=(224, 224),
                         mode="bilinear", align_corners=False, antialias=True)
    want = (want - model.mean) / model.std
    assert torch.allclose(got, want, atol=1e-5)


def test_facenet_embeds_the_mtcnn_crop(tmp_path, monkeypatch, detector):
    """facenet embeddings come from MTCNN's box of the face (facenet-pytorch's own framing), not the whole image."""
    from facenet_pytorch import InceptionResnetV1

    from pipelines.attributes.facenet import VGGFACE2_FILE, FacenetEmbedder
    torch.manual_seed(0)
    (tmp_path / "checkpoints").mkdir()
    torch.save(InceptionResnetV1(pretrained=None, classify=True, num_classes=8631).state_dict(),
               tmp_path / "checkpoints" / VGGFACE2_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    img = data.astronaut()[None]
    emb = FacenetEmbedder(device="cpu")
    e = emb(np.concatenate([img, np.zeros_like(img)]))
    assert emb.last_no_face == 1  # the black image has no face and is embedded whole
    crop, _ = detector.crop(img, size=160, padding=0.0, square=False)
    whole = FacenetEmbedder(device="cpu", crop_faces=False)
    assert np.allclose(e[0], whole(crop)[0], atol=1e-5)
    assert not np.allclose(e[0], whole(img)[0], atol=1e-3)
