"""Measures of the demo world: classifier confidence, class histograms, FD-digits."""
from __future__ import annotations

import numpy as np

from ..metrics.frechet import feature_stats, frechet_distance

CONFIDENT = 0.9  # a sample "has a confident class" when its top class probability is at least this


def class_histogram(labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Fraction of each class 0..k-1."""
    return np.bincount(np.asarray(labels, dtype=int), minlength=k)[:k] / max(len(labels), 1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two histograms (0 = identical, 1 = disjoint)."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def sample_quality(probs: np.ndarray, data_labels: np.ndarray) -> dict:
    """Confident fraction and how far the sample class histogram is from the data's."""
    top = probs.max(axis=1)
    hist = class_histogram(probs.argmax(axis=1))
    data_hist = class_histogram(data_labels)
    return {"confident_fraction": float((top >= CONFIDENT).mean()), "confidence_threshold": CONFIDENT,
            "class_histogram": [round(float(v), 4) for v in hist],
            "data_class_histogram": [round(float(v), 4) for v in data_hist],
            "histogram_tv_distance": total_variation(hist, data_hist)}


def fd_digits(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD-digits: Fréchet distance between two sets of demo-classifier features (not FID)."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))
