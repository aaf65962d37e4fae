"""Job 'sweep': precompute the omega grid of previews (live scrubbing) and measure fractions/FD over (omega, budget).

Nothing cached is recomputed: previews are looked up by render key, measurements by
(checkpoint, omega, grouping, settings key).
"""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from ...models import Metric, Model
from ...services.evaluate import Measurer, pair_paths, render, render_cached
from ...services.attributes import get_grouping
from ..specs import FindOmegaSpec, SweepSpec
from .common import set_threads


def has_point(ctx, checkpoint_id: int, omega: float, grouping_id: int, key: str) -> bool:
    """True when this (checkpoint, omega) was already measured with these settings."""
    with ctx.db.session(read_only=True) as s:
        return s.scalar(select(Metric.id).where(
            Metric.kind == "fraction", Metric.checkpoint_id == checkpoint_id, Metric.grouping_id == grouping_id,
            Metric.settings_key == key, Metric.omega == round(float(omega), 4)).limit(1)) is not None


def measure_point(ctx, measurer: Measurer, checkpoint_id: int, omega: float, spec: SweepSpec | FindOmegaSpec) -> dict:
    """Render n samples at omega, store fraction (+CI) and FD rows; returns {group: fraction, 'fd': ...}."""
    base_row, base_path, aux_path = pair_paths(ctx.db, ctx.settings, checkpoint_id)
    seeds = range(spec.metric_seed0, spec.metric_seed0 + spec.n)
    if spec.mode == "score" and spec.guide == "aux":
        images = render(base_path, aux_path, omega, seeds, spec.steps, spec.interval, spec.shared_encoder,
                        ctx.device, precision=ctx.settings.precision)
    else:  # another guide, or the weight-space merge built in memory at this omega (services.merge_guide)
        from ...services.guide_model import resolve_guide
        from ...services.merge_guide import render_mode
        guide = resolve_guide(ctx.db, ctx.settings, checkpoint_id, spec.guide, ctx.device)
        images = render_mode(ctx.db, ctx.settings, checkpoint_id, omega, seeds, spec.steps, spec.interval,
                             spec.shared_encoder, ctx.device, spec.mode, guide)
    fr, assigned = measurer.fractions(images)
    fd = measurer.distances(images, assigned)
    common = dict(model_id=base_row.id, checkpoint_id=checkpoint_id, grouping_id=spec.grouping_id,
                  omega=round(float(omega), 4), settings_key=spec.settings_key, n=spec.n)
    rows = [dict(kind="fraction", group_name=g, value=float(f), ci_lo=lo, ci_hi=hi, **{**common, "n": k})
            for g, (f, lo, hi, k) in fr.items()]
    if fd is not None:
        rows.append(dict(kind="fd", value=float(fd["overall"]), **common))
        if fd.get("reweighted") is not None:
            rows.append(dict(kind="fd_reweighted", value=float(fd["reweighted"]), **common))
        rows += [dict(kind="fd_group", group_name=g, value=float(v), **common)
                 for g, v in fd["per_group"].items() if np.isfinite(v)]
        # the metric's own floor at each group's count: real vs real, so a curve shows what FD cannot resolve
        floors = measurer.floors({g: k for g, (_, _, _, k) in fr.items() if k >= 2})
        rows += [dict(kind="fd_floor", group_name=g, value=float(v["mean"]), ci_lo=v["interval"][0],
                      ci_hi=v["interval"][1], **{**common, "n": v["n"]})
                 for g, v in floors.items() if v["mean"] is not None]
    ctx.metrics(rows)
    return {"fractions": {g: v[0] for g, v in fr.items()}, "fd": fd}


def run(ctx, spec: SweepSpec) -> dict:
    """Previews for the picked checkpoint, then measurements over every (checkpoint, omega)."""
    set_threads()
    previews = list(spec.preview_omegas)
    points = [(c, w) for c in spec.checkpoint_ids for w in spec.metric_omegas]
    todo = [(c, w) for c, w in points if not has_point(ctx, c, w, spec.grouping_id, spec.settings_key)]
    total = max(len(previews) + len(todo), 1)
    done = 0
    for w in previews:
        render_cached(ctx.db, ctx.settings, spec.preview_checkpoint, w, list(spec.preview_seeds), spec.preview_steps,
                      spec.preview_interval, spec.shared_encoder, ctx.device)
        done += 1
        ctx.progress(done / total, f"preview omega={w:+.2f} ({done}/{len(previews)})")
    ctx.log(f"{len(previews)} previews cached; measuring {len(todo)} of {len(points)} points (rest cached)")
    if todo:
        with ctx.db.session(read_only=True) as s:
            base = s.get(Model, pair_paths(ctx.db, ctx.settings, todo[0][0])[0].id)
            s.expunge(base)
        measurer = Measurer(ctx.db, ctx.settings, base, get_grouping(ctx.db, spec.grouping_id), ctx.device)
        for c, w in todo:
            out = measure_point(ctx, measurer, c, w, spec)
            done += 1
            desc = ", ".join(f"{g} {100 * f:.0f}%" for g, f in out["fractions"].items())
            ctx.progress(done / total, f"checkpoint #{c} omega={w:+.2f}: {desc}")
            ctx.log(f"ckpt {c} omega {w:+.2f}: {desc}" + (f", {measurer.metric} {out['fd']['overall']:.2f}"
                                                           if out["fd"] else ""))
        if measurer.ref_error:
            ctx.log(f"distances skipped: {measurer.ref_error}")
            return {"message": f"measured {len(todo)} points (no distances: {measurer.ref_error})"}
    return {"message": f"{len(previews)} previews and {len(todo)} measurements ({len(points) - len(todo)} cached)"}
