"""Our model format: one .safetensors file whose metadata holds the JSON config.

Metadata key "sims" = {"format", "model" (ModelConfig), "dataset", "training", "provenance"}.
Loading never unpickles anything.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open

from ..errors import UserError
from ..models import ModelConfig, build_model
from ..precond import Precond

FORMAT = "sims-model/1"


def git_commit() -> str | None:
    """Current git commit of the code, for provenance (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_model(path, model: Precond, config: ModelConfig, dataset: dict | None = None,
               training: dict | None = None, provenance: dict | None = None) -> Path:
    """Write weights + config; returns the path. `provenance` gets the git commit added."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = {"git_commit": git_commit(), **(provenance or {})}
    meta = {"format": FORMAT, "model": config.to_dict(), "dataset": dataset or {},
            "training": training or {}, "provenance": prov}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"sims": json.dumps(meta)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint behind
    return path


def read_metadata(path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading the weights."""
    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sims")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .safetensors checkpoint ({e}). "
                        "Re-export it, or import an EDM pickle with `python -m pipelines import-edm`.") from None
    if raw is None:
        raise UserError(f"{path} has no SIMS metadata: it is a safetensors file but not one of ours. "
                        "Save models with `pipelines.checkpoints.native.save_model`.")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT}).")
    return meta


def load_model(path, device="cpu") -> tuple[Precond, dict[str, Any]]:
    """Rebuild the model from its config and load the weights; returns (model in eval mode, metadata)."""
    meta = read_metadata(path)
    model = build_model(ModelConfig.from_dict(meta["model"]))
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: weights are corrupt or truncated ({e}). Re-download or re-export it.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the config (missing {list(missing)[:5]}, "
                        f"unexpected {list(unexpected)[:5]}).")
    return model.eval().requires_grad_(False).to(device), meta


def _check_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"Checkpoint not found: {path}. Check the path, or train/import a model first.")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass the .safetensors checkpoint file inside it.")
    if path.suffix == ".pkl":
        raise UserError(f"{path} is a pickle. Import EDM pickles safely with "
                        f"`python -m pipelines import-edm {path} OUT.safetensors`.")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise UserError(f"{path} is empty or truncated; it is not a checkpoint.")
    return path


def load_state_file(path) -> dict[str, torch.Tensor]:
    """Bare tensor dict from a safetensors file (used by bundles)."""
    return load_file(str(_check_path(path)))
