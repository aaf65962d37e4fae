"""Attribute classifiers (images -> probabilities over named classes) and groupings of classes.

Plug-ins: the demo digits classifier, deepface (PyTorch backend), FairFace (ResNet-34) and
facenet-pytorch (MTCNN face gate, InceptionResnetV1 embeddings + a linear probe), each in one
module and all listed in `registry.CLASSIFIERS`; `get_classifier(name, **kwargs)` builds one by name.
"""
from .base import NO_FACE, Classifier, FaceGate, FeatureSpace
from .groupings import Grouping, builtin_groupings, group_fractions, resolve_grouping
from .registry import (CLASSIFIERS, available_classifiers, classifier_descriptions, classifier_feature_space,
                       get_classifier)

__all__ = ["CLASSIFIERS", "NO_FACE", "Classifier", "FaceGate", "FeatureSpace", "Grouping", "available_classifiers",
           "builtin_groupings", "classifier_descriptions", "classifier_feature_space", "get_classifier",
           "group_fractions", "resolve_grouping"]
