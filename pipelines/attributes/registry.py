"""The classifier plug-ins, listed in one table: name -> factory, description, distance metric.

Adding a plug-in = one row here. Plug-in modules import their heavy dependencies (deepface,
facenet-pytorch, safetensors) only inside their factories, so importing this table is cheap.
Imports go one way: registry -> plug-ins -> base.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from . import deepface_adapter, digits, facenet, fairface
from .base import INCEPTION, Classifier, FaceGate, FeatureSpace


@dataclass(frozen=True)
class ClassifierSpec:
    """A classifier plug-in: its factory, a one-line description, and the feature space its factory's
    classifiers measure Fréchet distances in (known without loading any weights)."""

    name: str
    factory: Callable[..., Classifier]
    description: str
    feature_space: FeatureSpace = INCEPTION


CLASSIFIERS: dict[str, ClassifierSpec] = {s.name: s for s in [
    ClassifierSpec("digits", digits.factory, "demo CNN on scikit-learn 8x8 digits (bundled in assets/)",
                   digits.FEATURE_SPACE),
    ClassifierSpec("deepface-gender", deepface_adapter.factory("gender"), "deepface (PyTorch) gender: Woman/Man"),
    ClassifierSpec("deepface-race", deepface_adapter.factory("race"), "deepface (PyTorch) race: 6 classes"),
    ClassifierSpec("deepface-age", deepface_adapter.factory("age"), "deepface (PyTorch) apparent age, 9 bins"),
    ClassifierSpec("fairface-race7", fairface.factory("race7"), "FairFace ResNet-34, 7 races (your weights file)"),
    ClassifierSpec("fairface-gender", fairface.factory("gender"),
                   "FairFace ResNet-34, Male/Female (your weights file)"),
    ClassifierSpec("fairface-age", fairface.factory("age"), "FairFace ResNet-34, 9 age bins (your weights file)"),
    ClassifierSpec("fairface-race4", fairface.factory("race4"),
                   "FairFace ResNet-34 4-race model: White/Black/Asian/Indian"),
    ClassifierSpec("facenet-probe", facenet.probe_factory,
                   "linear probe from your manual labels on facenet embeddings (or HOG / digits features)"),
]}


def _spec(name: str) -> ClassifierSpec:
    if name not in CLASSIFIERS:
        raise UserError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name]


def available_classifiers() -> list[str]:
    """Names of every listed classifier."""
    return list(CLASSIFIERS)


def classifier_descriptions() -> dict[str, str]:
    """name -> one-line description of every listed classifier."""
    return {k: v.description for k, v in CLASSIFIERS.items()}


def classifier_feature_space(name: str) -> FeatureSpace:
    """The feature space (metric name, extractor kind, dims) of a listed classifier, without loading it."""
    return _spec(name).feature_space


def get_classifier(name: str, face_gate: bool = False, **kwargs) -> Classifier:
    """Build the classifier listed as `name` (kwargs go to its factory: device, weights, ...).

    face_gate=True wraps it in a FaceGate with an MTCNN detector (adds the 'no_face' class).
    """
    clf = _spec(name).factory(**kwargs)
    if face_gate:
        clf = FaceGate(clf, facenet.MTCNNDetector(device=clf.device))
    if clf.feature_space != _spec(name).feature_space:  # the table and the plug-in must agree
        raise AssertionError(f"{name}: feature space {clf.feature_space} differs from the table's")
    return clf
