"""Export choice for one auxiliary checkpoint and ω: score-space SIMS bundle (two networks per guided
step) or weight-space merge (Neon: θ = (1+ω)·θ_base − ω·θ_aux, one network, the base's cost).

The two are different operations (a network is not linear in its weights), so the merged model's ω
scale differs from score-space SIMS: measurements stored for the bundle at this ω are not the merged
model's. Its card carries the Guide's weight-space measurement at that ω (the same merge, built in
memory) when there is one, and says plainly that it was not measured otherwise.
"""
from __future__ import annotations

from datetime import datetime

import torch
from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..settings import Settings
from .evaluate import interval_from_skip, metric_name, pair_paths
from .guide import OMEGA_MAX, OMEGA_MIN, GuideSettings, fmt_omega


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


def guide_measurement(db: Database, checkpoint_id: int, omega: float, gs: GuideSettings,
                      grouping_id: int | None = None) -> dict | None:
    """The merged model's own measurement at ω from the Guide (weight-space mode, SIMS auxiliary, these
    settings), in the card's format; None when it was not measured there."""
    from pipelines.fairness import SMALL_SAMPLE

    from ..models import Metric
    from .attributes import get_grouping
    from .guide import METRIC_SEED0
    from .guide_model import measurement_key, mode_settings
    from .honesty import small_fd
    gs = mode_settings(gs, "merged")
    key = measurement_key(gs, None, "merged")
    q = select(Metric).where(Metric.checkpoint_id == int(checkpoint_id), Metric.settings_key == key,
                             Metric.omega == round(float(omega), 4))
    if grouping_id is not None:
        q = q.where(Metric.grouping_id == int(grouping_id))
    with db.session(read_only=True) as s:
        rows = s.scalars(q.order_by(Metric.id.desc())).all()
        rows = [(m.kind, m.group_name, m.value, m.ci_lo, m.ci_hi, m.n, m.grouping_id) for m in rows]
    fr = [r for r in rows if r[0] == "fraction"]
    if not fr:
        return None
    gid = fr[0][6]  # the newest measurement's grouping (rows of another grouping are left out)
    fractions, counts, fd = {}, {}, {}
    for kind, g, v, lo, hi, k, rg in rows:  # newest first: the latest row of a point wins
        if rg != gid:
            continue
        if kind == "fraction" and g not in fractions:
            fractions[g], counts[g] = {"value": v, "ci": [lo, hi]}, int(k or 0)
        elif kind == "fd_group" and g not in fd:
            fd[g] = v
    grouping = get_grouping(db, gid)
    order = [g for g in grouping["groups"] if g in fractions]  # the grouping's order, not the rows'
    fractions, counts = {g: fractions[g] for g in order}, {g: counts[g] for g in order}
    metric = metric_name(grouping["classifier"])
    assigned = sum(counts.values())
    out = {"what": "this merged model (base and SIMS auxiliary merged at this ω with the same rule, in memory), "
                   "measured by the Guide's weight-space ω grid / find ω",
           "n": int(gs.n), "assigned": assigned, "seeds": f"{METRIC_SEED0}-{METRIC_SEED0 + int(gs.n) - 1}",
           "steps": int(gs.steps), "sampler": "Heun (EDM)", "classifier": grouping["classifier"],
           "grouping": grouping["name"], "grouping_id": gid, "threshold": grouping["threshold"], "counts": counts,
           "fractions": fractions, "interval": "Wilson 95% over the images assigned to a group",
           "settings_key": key, "warnings": []}
    if fd:
        out["fd"] = {"metric": metric, "per_group": fd, "gen_counts": counts,
                     "overall": next((v for kind, g, v, *_ in rows if kind == "fd"), None)}
        if w := small_fd(metric, min(counts[g] for g in fd)):
            out["warnings"].append(w)
    if assigned < SMALL_SAMPLE:
        out["warnings"].insert(0, f"only {assigned} images assigned to a group: the fractions' intervals are wide")
    return out


def _summary(m: dict | None) -> str:
    """One line for the Export tab: the measured fractions with n and seeds, or why there are none."""
    if m is None:
        return ("not measured at these settings: the merge's ω scale differs from score-space SIMS, so the "
                "bundle's measurements at this ω are not this model's. Measure it in the Guide (weight-space "
                "ω grid or find ω), or pick it in the Models tab and generate + label a pool.")
    fr = ", ".join(f"{g} {100 * f['value']:.1f}% [{100 * f['ci'][0]:.0f}–{100 * f['ci'][1]:.0f}]"
                   for g, f in m["fractions"].items())
    fd = m.get("fd")
    fd_text = (f"; {fd['metric']} per group " + ", ".join(f"{g} {v:.3g}" for g, v in fd["per_group"].items())
               if fd else "")
    return (f"measured on this merged model: {fr} (n = {m['n']}, seeds {m['seeds']}, {m['steps']} steps; "
            f"{m['interval']}){fd_text}" + "".join(f" ⚠ {w}" for w in m["warnings"]))


def export_merged(db: Database, settings: Settings, checkpoint_id: int, omega: float, name: str = "",
                  gs: GuideSettings | None = None, grouping_id: int | None = None) -> dict:
    """Merge base and auxiliary at ω into exports/ (pipelines.merge), register it as a model, write its card
    (.md + .card.json: the Guide's weight-space measurement at ω with these settings, or 'not measured');
    returns paths, the new model id and the card."""
    import json

    from pipelines.guidance import parse_omega
    from pipelines.merge import merge_checkpoints
    from pipelines.merge_card import merged_card, render_card

    from . import registry
    from .export import _name, provenance
    omega = parse_omega(omega)
    if not OMEGA_MIN <= omega <= OMEGA_MAX:
        raise UserError(f"omega must be between {OMEGA_MIN} and {OMEGA_MAX}.")
    base_row, base_path, aux_path = pair_paths(db, settings, checkpoint_id)
    stem = _name(name, f"merged-ckpt{int(checkpoint_id)}-omega{fmt_omega(omega)}")
    out = settings.path("exports", stem + ".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = guide_measurement(db, checkpoint_id, omega, gs or GuideSettings(), grouping_id)
    merge_checkpoints(base_path, aux_path, omega, out)
    model_id = registry.register_checkpoint(db, settings, out, name=f"{base_row.name} merged ω {fmt_omega(omega)} "
                                            f"(ckpt {int(checkpoint_id)})", source="merge", source_ref=str(out))
    from pipelines.checkpoints.native import read_metadata
    merge = read_metadata(out)["provenance"]["merge"]
    chain = provenance(db, int(checkpoint_id))
    if measured is not None:
        from .fairness_view import card_report
        target = (chain["synthetic_set"] or {}).get("target")
        if target and (report := card_report(db, measured, target)) is not None:
            measured["fairness_vs_target"] = report
    card = merged_card(merge, measured, {"registered_model_id": model_id, "provenance_chain": chain,
                                         "exported": datetime.now().isoformat(timespec="seconds")})
    card["measured_note"] = _summary(measured)
    out.with_suffix(".card.json").write_text(json.dumps(card, indent=1, default=str))
    out.with_suffix(".md").write_text(render_card(card))
    return {"file": str(out), "model_id": model_id, "card_data": card, "card": str(out.with_suffix(".md")),
            "command": f"python -m pipelines generate --model {out} --seeds 0-63 --out samples.npz"}
