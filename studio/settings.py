"""Where the studio keeps its files and database, and the paths inside the data directory."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import UserError
from pipelines.precision import parse_precision

# Heun steps used wherever the user has not chosen (pool, S growth, previews, measurements, exports):
# the demo's sampler; EDM's 18 suits 32x32 and larger models, and every field can be changed in the UI.
DEFAULT_STEPS = 12


@dataclass(frozen=True)
class Settings:
    """Data directory + database URL + job limits for one studio instance."""
    data_dir: Path
    db_url: str = ""
    device: str = "cpu"               # default device for GPU-bound jobs
    jobs_per_device: int = 1          # GPU-bound jobs running at once on one device
    stale_after_s: float = 30.0       # heartbeat age after which a running job counts as interrupted
    max_upload_mb: int = 512
    allow_private_urls: bool = False  # model import by URL may reach loopback/private addresses (SSRF guard off)
    precision: str = field(default_factory=lambda: default_precision())  # network precision of renders/sweeps

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        object.__setattr__(self, "precision", parse_precision(self.precision))
        if not self.db_url:
            object.__setattr__(self, "db_url", f"sqlite:///{self.data_dir / 'studio.db'}")

    def path(self, *parts) -> Path:
        """Absolute path inside the data directory."""
        return self.data_dir.joinpath(*parts)

    def rel(self, path) -> str:
        """Path relative to the data directory, as stored in the database."""
        return Path(path).resolve().relative_to(self.data_dir).as_posix()

    def abs(self, rel: str) -> Path:
        """Stored relative path -> absolute path, refusing anything outside the data directory."""
        p = (self.data_dir / rel).resolve()
        if p != self.data_dir and self.data_dir not in p.parents:
            raise UserError(f"Refusing path outside the data directory: {rel}")
        return p

    def ensure_dirs(self) -> None:
        """Create the data directory layout."""
        for sub in ("models", "samples", "runs", "cache/renders", "exports", "uploads", "logs/jobs", "reference"):
            self.path(sub).mkdir(parents=True, exist_ok=True)


def default_precision() -> str:
    """fp32, or bf16 when SIMS_PRECISION=bf16: an environment variable, so job workers inherit it."""
    return parse_precision(os.environ.get("SIMS_PRECISION") or "fp32")


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    if os.environ.get("SIMS_DEVICE"):
        return os.environ["SIMS_DEVICE"]
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a hard requirement of the engine
        return "cpu"
