"""Attribute classifiers (images -> probabilities over named classes) and groupings of classes.

Plug-ins: the demo digits classifier, deepface (PyTorch backend), FairFace (ResNet-34) and
facenet-pytorch (MTCNN face gate, InceptionResnetV1 embeddings + a linear probe). Each lives in
one module that registers itself; `get_classifier(name, **kwargs)` builds one by name.
"""
from .base import (NO_FACE, Classifier, FaceGate, available_classifiers, classifier_descriptions,
                   get_classifier, register_classifier)
from .groupings import Grouping, builtin_groupings, group_fractions, resolve_grouping

__all__ = ["NO_FACE", "Classifier", "FaceGate", "Grouping", "available_classifiers", "builtin_groupings",
           "classifier_descriptions", "get_classifier", "group_fractions", "register_classifier",
           "resolve_grouping"]
