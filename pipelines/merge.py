"""Weight-space SIMS (Neon, arXiv 2510.03597): theta = (1 + omega)*theta_base - omega*theta_aux.

Score-space SIMS evaluates two networks per step; merging the weights once gives one network
that samples at the base's cost. The two are different operations (the network is not linear in
its weights), so their omega scales differ and each needs its own sweep.

Rules: both parents are our checkpoints of one architecture (the weights saved are the EMA
weights); every floating-point tensor is merged in float64 and cast back to its own dtype, so
omega = 0 returns the base and omega = -1 the auxiliary bit for bit; non-float tensors (integer
buffers) must be equal in both parents or the merge is refused with the key named.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoints.bundle import read_bundle_metadata
from .checkpoints.download import sha256_file
from .checkpoints.native import load_state_file, read_metadata, save_model
from .errors import UserError
from .guidance import parse_omega
from .models import ModelConfig, build_model

RULE = "(1 + omega) * theta_base - omega * theta_aux, float64, cast back per tensor"


def merge_state_dicts(base: dict[str, torch.Tensor], aux: dict[str, torch.Tensor],
                      omega: float) -> dict[str, torch.Tensor]:
    """Merged tensors (Neon's rule); UserError on differing keys, shapes or non-float buffers."""
    omega = parse_omega(omega)
    if set(base) != set(aux):
        only_b, only_a = sorted(set(base) - set(aux)), sorted(set(aux) - set(base))
        raise UserError(f"The checkpoints hold different tensors (only in base: {only_b[:5]}, only in aux: "
                        f"{only_a[:5]}); the auxiliary must be a fine-tuned copy of the base.")
    out = {}
    for key, b in base.items():
        a = aux[key]
        if b.shape != a.shape or b.dtype != a.dtype:
            raise UserError(f"Tensor {key!r} differs: base {tuple(b.shape)} {b.dtype}, aux {tuple(a.shape)} "
                            f"{a.dtype}; the auxiliary must be a fine-tuned copy of the base.")
        if b.is_floating_point():
            merged = (1 + omega) * b.to(torch.float64) - omega * a.to(torch.float64)
            out[key] = merged.to(b.dtype)
        elif torch.equal(b, a):
            out[key] = b.clone()
        else:  # integer buffers (counters, indices) have no meaningful extrapolation
            raise UserError(f"Non-float tensor {key!r} differs between base and auxiliary; a weight merge "
                            "cannot extrapolate it. Use score-space SIMS (sample-sims) for this pair.")
    return out


def config_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first config key (dotted) whose values differ, or None when equal."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            found = config_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key} (base {va!r}, aux {vb!r})"
    return None


def _parent(path, meta: dict) -> dict:
    return {"path": str(path), "sha256": sha256_file(path), "provenance": meta.get("provenance", {}),
            "training": meta.get("training", {})}


def _save(out, state, model_cfg: dict, dataset: dict, omega: float, parents: dict, source: dict) -> Path:
    cfg = ModelConfig.from_dict(model_cfg)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    merge = {"omega": omega, "rule": RULE, "paper": "Neon, arXiv 2510.03597", **parents, **source}
    return save_model(out, model, cfg, dataset=dataset, training={"merged": True},
                      provenance={"kind": "weight-space SIMS merge", "merge": merge})


def merge_checkpoints(base_path, aux_path, omega: float, out) -> Path:
    """Merge two checkpoints of ours into `out` (an ordinary checkpoint with merge provenance)."""
    omega = parse_omega(omega)
    mb, ma = read_metadata(base_path), read_metadata(aux_path)
    diff = config_difference(mb["model"], ma["model"])
    if diff:
        raise UserError(f"Base and auxiliary architectures differ at {diff}; only a fine-tuned copy of the "
                        "base can be merged with it. Use `sample-sims --guide` for a guide of another architecture.")
    state = merge_state_dicts(load_state_file(base_path), load_state_file(aux_path), omega)
    parents = {"base": _parent(base_path, mb), "aux": _parent(aux_path, ma)}
    return _save(out, state, mb["model"], mb.get("dataset", {}), omega, parents, {})


def merge_bundle(bundle_path, out, omega: float | None = None) -> Path:
    """The merged one-network model of a SIMS bundle (its omega unless overridden)."""
    meta = read_bundle_metadata(bundle_path)
    omega = parse_omega(meta["omega"] if omega is None else omega)
    if meta.get("shared_encoder"):
        raise UserError(f"{bundle_path} was fine-tuned decoder-only (shared encoder); merging is defined for "
                        "whole-network copies only. Export it as a two-model bundle instead.")
    tensors = load_file(str(bundle_path))
    parts = {role: {k[len(role) + 1:]: v for k, v in tensors.items() if k.startswith(role + ".")}
             for role in ("base", "aux")}
    models = meta["models"]
    diff = config_difference(models["base"]["model"], models["aux"]["model"])
    if diff:
        raise UserError(f"The bundle's base and auxiliary architectures differ at {diff}; cannot merge.")
    state = merge_state_dicts(parts["base"], parts["aux"], omega)
    card = meta.get("card", {})
    parents = {role: {"path": card.get(f"{role}_checkpoint"), "sha256": card.get(f"{role}_sha256"),
                      "provenance": models[role].get("provenance", {})} for role in ("base", "aux")}
    source = {"bundle": {"path": str(bundle_path), "sha256": sha256_file(bundle_path),
                         "bundle_omega": meta["omega"], "interval_ignored": meta.get("interval")}}
    return _save(out, state, models["base"]["model"], models["base"].get("dataset", {}), omega, parents, source)


def merge_summary(path) -> str:
    """One line per fact of a merged checkpoint's provenance (for the CLI)."""
    merge = read_metadata(path)["provenance"].get("merge", {})
    return json.dumps({k: merge.get(k) for k in ("omega", "rule")} |
                      {r: {"path": merge.get(r, {}).get("path"), "sha256": merge.get(r, {}).get("sha256")}
                       for r in ("base", "aux")}, indent=1)
