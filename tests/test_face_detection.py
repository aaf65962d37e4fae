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
