"""Metrics: Fréchet distances on Inception (FID, through clean-fid) or demo-classifier
features (FD-digits), overall and per group; reference statistics in EDM/clean-fid's npz layout."""
from .frechet import feature_stats, frechet_distance, load_stats, save_stats

__all__ = ["feature_stats", "frechet_distance", "load_stats", "save_stats"]
