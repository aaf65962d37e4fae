"""SIMS engine: EDM-style diffusion models, SIMS guidance, training, checkpoints, metrics.

The engine never imports the studio, gradio or a database; everything here runs on a
GPU box that has only torch/numpy/scipy (plus the optional metric/classifier packages).
"""
__version__ = "0.1.0"
