"""Shared fixtures: small models built from the engine's own factory."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pipelines.models import ModelConfig, build_model  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores (CI still runs it)")
    config.addinivalue_line("markers", "browser: drives Debian's chromium through Playwright")


def make_mlp(seed: int, precond: str = "edm"):
    """A randomly initialised 2-D MLP denoiser (distinct weights per seed)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="mlp", network={"dim": 2, "hidden": 32, "depth": 2}, precond=precond)
    return build_model(cfg).eval(), cfg


@pytest.fixture
def mlp_pair():
    base, cfg = make_mlp(0)
    aux, _ = make_mlp(1)
    return base, aux, cfg
