"""Export choice for one auxiliary checkpoint and ω: score-space SIMS bundle (two networks per guided
step) or weight-space merge (Neon: θ = (1+ω)·θ_base − ω·θ_aux, one network, the base's cost).

The two are different operations (a network is not linear in its weights), so the merged model's ω
scale differs from score-space SIMS: measurements stored for the bundle at this ω are not the merged
model's, and its card says so instead of copying them.
"""
from __future__ import annotations

from datetime import datetime

import torch

from pipelines.errors import UserError

from ..db import Database
from ..settings import Settings
from .evaluate import interval_from_skip, pair_paths
from .guide import OMEGA_MAX, OMEGA_MIN, fmt_omega


class _Counting:
    """Stand-in network for counting passes: returns its input (the count does not depend on the weights)."""

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        return x

    def encode(self, x, sigma, class_labels=None, augment_labels=None):
        return x

    def decode(self, state):
        return state


def pass_counts(steps: int, skip_steps: int = 0, omega: float = 1.0, shared_encoder: bool = False) -> dict:
    """Network passes per image of both exports, counted by running the real Heun sampler and SIMS
    denoiser on stand-in networks (exact counts, not timings)."""
    from pipelines.guidance import SIMSDenoiser, parse_omega
    from pipelines.sampler import SamplerConfig, heun_sample
    omega = parse_omega(omega)
    cfg = SamplerConfig(num_steps=int(steps))
    interval = interval_from_skip(steps, skip_steps)
    sims = SIMSDenoiser(_Counting(), _Counting(), omega, interval, shared_encoder)
    heun_sample(sims, torch.zeros(1, 1, 1, 1), cfg)
    merged = SIMSDenoiser(_Counting(), None, 0.0)
    heun_sample(merged, torch.zeros(1, 1, 1, 1), cfg)
    c, m = sims.counts, merged.counts
    bundle = {"evaluations": c.calls, "base passes": c.base, "auxiliary passes": c.aux, "guided": c.guided}
    if shared_encoder:
        bundle["shared encoder passes"] = c.encoder
    return {"steps": int(steps), "omega": omega,
            "bundle": bundle | {"network passes": c.base + c.aux,
                                "passes per step": (c.base + c.aux) / int(steps)},
            "merged": {"evaluations": m.calls, "network passes": m.base, "passes per step": m.base / int(steps)},
            "how": f"counted by running the Heun sampler ({int(steps)} steps) with the SIMS denoiser on "
                   "stand-in networks" + ("; in shared-encoder mode a guided evaluation runs one encoder and two "
                                          "decoders" if shared_encoder else "")}


def export_merged(db: Database, settings: Settings, checkpoint_id: int, omega: float, name: str = "") -> dict:
    """Merge base and auxiliary at ω into exports/ (pipelines.merge), register it as a model; returns paths,
    the new model id and its card."""
    from pipelines.guidance import parse_omega
    from pipelines.merge import merge_checkpoints

    from . import registry
    from .export import _name, provenance
    omega = parse_omega(omega)
    if not OMEGA_MIN <= omega <= OMEGA_MAX:
        raise UserError(f"omega must be between {OMEGA_MIN} and {OMEGA_MAX}.")
    base_row, base_path, aux_path = pair_paths(db, settings, checkpoint_id)
    stem = _name(name, f"merged-ckpt{int(checkpoint_id)}-omega{fmt_omega(omega)}")
    out = settings.path("exports", stem + ".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    merge_checkpoints(base_path, aux_path, omega, out)
    model_id = registry.register_checkpoint(db, settings, out, name=f"{base_row.name} merged ω {fmt_omega(omega)} "
                                            f"(ckpt {int(checkpoint_id)})", source="merge", source_ref=str(out))
    from pipelines.checkpoints.native import read_metadata
    merge = read_metadata(out)["provenance"]["merge"]
    card = {"title": "SIMS weight-space merge (one network)", "omega": omega, "rule": merge["rule"],
            "parents": {r: {"path": merge[r]["path"], "sha256": merge[r]["sha256"]} for r in ("base", "aux")},
            "registered_model_id": model_id,
            "measured": None,
            "measured_note": "The merge's ω scale differs from score-space SIMS, so the Guide's measurements at "
                             "this ω are not this model's. Pick it in the Models tab and generate + label a pool "
                             "to measure its group fractions.",
            "provenance_chain": provenance(db, int(checkpoint_id)),
            "exported": datetime.now().isoformat(timespec="seconds")}
    return {"file": str(out), "model_id": model_id, "card_data": card,
            "command": f"python -m pipelines generate --model {out} --seeds 0-63 --out samples.npz"}
