"""Score-space SIMS and the weight-space merge side by side in the Guide, with any guide.

- score: D = (1+ω)·D_base − ω·D_guide, two networks per guided step (the guide is the SIMS
  auxiliary by default, or any model of the base's shape: autoguidance).
- merged: one network with θ = (1+ω)·θ_base − ω·θ_guide (Neon), built in memory once per ω with
  `pipelines.merge.merge_state_dicts` — the same function `export merged` writes files with.

The network is not linear in its weights, so the two ω scales differ: each mode has its own
curves and its own find-ω. Measurements are stored under a settings key naming mode and guide;
score space with the auxiliary keeps the plain key the Guide always used (`GuideSettings.key()`),
so existing caches keep working, and every other key holds a ':' (`is_default_key`).
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pipelines.errors import UserError

from ..db import Database
from ..models import Render
from ..settings import Settings
from ..storage import write_png
from .evaluate import grid_image, load_cached, pair_paths, render, render_key, render_variant
from .guide import OMEGA_MAX, OMEGA_MIN, GuideSettings
from .guide_model import AUX, MODES, check_mode, mode_settings, resolve_guide

MODE_LABELS = {"score": "score-space SIMS (two networks)", "merged": "weight-space merge (one network)"}
_MERGED: "OrderedDict[tuple, object]" = OrderedDict()
_MERGED_LOCK = threading.Lock()
_MAX_MERGED = 4


def check_merged(gs: GuideSettings) -> None:
    """A merge is defined for whole-network copies and guides every step: refuse what it cannot honour."""
    if gs.shared_encoder:
        raise UserError("A weight-space merge needs a whole-network fine-tune; the shared-encoder (decoder-only) "
                        "auxiliary can only guide in score space.")
    if gs.skip_steps:
        raise UserError("A merged model is one network: it has no guidance interval. Set 'leave the first k steps "
                        "unguided' to 0 to compare it with score space on equal terms.")


def merged_network(base_path: Path, guide_path: Path, omega: float, device: str = "cpu"):
    """The merged network at ω, in memory (small LRU per base, guide, ω and device)."""
    from pipelines.checkpoints.native import read_metadata
    from pipelines.merge import config_difference, merge_state_dicts
    key = (str(base_path), base_path.stat().st_mtime_ns, str(guide_path), guide_path.stat().st_mtime_ns,
           round(float(omega), 6), device)
    with _MERGED_LOCK:
        if key in _MERGED:
            _MERGED.move_to_end(key)
            return _MERGED[key]
    diff = config_difference(read_metadata(base_path)["model"], read_metadata(guide_path)["model"])
    if diff:
        raise UserError(f"Base and guide architectures differ at {diff}; only a model of the base's architecture "
                        "can be merged with it. Guide with it in score space instead.")
    base, guide = load_cached(base_path, device), load_cached(guide_path, device)
    merged = copy.deepcopy(base)
    merged.load_state_dict(merge_state_dicts(base.state_dict(), guide.state_dict(), float(omega)))
    with _MERGED_LOCK:
        _MERGED[key] = merged
        while len(_MERGED) > _MAX_MERGED:
            _MERGED.popitem(last=False)
    return merged


def render_mode(db: Database, settings: Settings, checkpoint_id: int, omega: float, seeds, steps: int, interval,
                shared_encoder: bool, device: str, mode: str = "score", guide: dict | None = None) -> np.ndarray:
    """uint8 NHWC samples of `seeds` at ω in the mode with the guide (None = the checkpoint itself)."""
    from pipelines.generate import generate_images
    from pipelines.sampler import SamplerConfig
    mode = check_mode(mode)
    _, base_path, aux_path = pair_paths(db, settings, checkpoint_id)
    guide_path = Path(guide["path"]) if guide else aux_path
    if mode == "score" or float(omega) == 0.0:  # ω = 0 is the base alone in both modes
        return render(base_path, guide_path, omega, seeds, steps, interval, shared_encoder, device,
                      precision=settings.precision)
    model = merged_network(base_path, guide_path, omega, device)
    return generate_images(model, [int(s) for s in seeds], SamplerConfig(num_steps=int(steps)), device=device,
                           precision=settings.precision)


def _check_omega(omega) -> float:
    from pipelines.guidance import parse_omega
    omega = parse_omega(omega)
    if not OMEGA_MIN <= omega <= OMEGA_MAX:
        raise UserError(f"omega must be between {OMEGA_MIN} and {OMEGA_MAX} (got {omega}).")
    return omega


def preview(db: Database, settings: Settings, checkpoint_id: int, omega: float, gs: GuideSettings, mode: str,
            choice: str | None = AUX, device: str = "cpu", slot_wait_s: float | None = 30.0) -> dict:
    """The Guide's fixed preview seeds at ω in one mode with the chosen guide: cached grid, else rendered and
    cached under a key naming mode and guide (score space with the auxiliary shares the Guide's own cache)."""
    from .guide_model import preview_stream
    mode, omega = check_mode(mode), _check_omega(omega)
    if mode == "score" or omega == 0:
        *_, (_, out) = preview_stream(db, settings, checkpoint_id, omega, gs, choice, device, slot_wait_s)
        return out | {"mode": mode}
    check_merged(gs)
    guide = resolve_guide(db, settings, checkpoint_id, choice, device)
    base_row, _, _ = pair_paths(db, settings, checkpoint_id)
    seeds = list(range(gs.preview_count))
    tag = f"merged:{'aux' if guide is None else guide['sha256']}"
    key = render_key(base_row.content_hash, checkpoint_id, omega, None, seeds, gs.preview_steps, False,
                     settings.precision, tag, device=device)
    with db.session(read_only=True) as s:
        row = s.scalar(select(Render).where(Render.key == key))
        path = row.path if row is not None and settings.abs(row.path).exists() else None
    if path:
        return {"grid": str(settings.abs(path)), "cached": True, "key": key, "mode": mode}
    from ..jobs.device_slot import device_slot
    from .guide import fmt_omega
    # a live render takes one of the device's job slots, like the Guide's own previews
    with device_slot(db, settings, device, f"merged preview at ω = {fmt_omega(omega)}", slot_wait_s):
        images = render_mode(db, settings, checkpoint_id, omega, seeds, gs.preview_steps, None, False, device,
                             mode, guide)
    rel = f"cache/renders/{key[:2]}/{key}.png"
    out = settings.abs(rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), images=images, seeds=np.asarray(seeds), omega=float(omega))
    write_png(out, grid_image(images))
    try:  # the settings hold the mode, so the score-space preview lookups never take this grid
        with db.session() as s:
            s.add(Render(key=key, model_id=base_row.id, checkpoint_id=int(checkpoint_id), omega=float(omega),
                         settings={"mode": mode, "guide": tag, "seeds": seeds, "steps": int(gs.preview_steps),
                                   **render_variant(settings.precision, device)},
                         path=rel))
    except IntegrityError:
        pass  # rendered a moment ago elsewhere: same pixels
    return {"grid": str(out), "cached": False, "key": key, "mode": mode}


def curves(db: Database, checkpoint_id: int, grouping_id: int, settings_key: str) -> dict:
    """Stored curves of one mode and guide: {"fraction": {group: {ω: (v, lo, hi)}}, "fd_group": {group: {ω: v}},
    "count": {group: {ω: n}}}; a later row of the same point replaces an earlier one."""
    from ..models import Metric
    with db.session(read_only=True) as s:
        rows = s.execute(select(Metric.kind, Metric.group_name, Metric.omega, Metric.value, Metric.ci_lo,
                                Metric.ci_hi, Metric.n).where(
            Metric.checkpoint_id == int(checkpoint_id), Metric.grouping_id == int(grouping_id),
            Metric.settings_key == settings_key, Metric.kind.in_(("fraction", "fd_group")))
            .order_by(Metric.omega, Metric.id)).all()
    out: dict = {"fraction": {}, "fd_group": {}, "count": {}}
    for kind, g, w, v, lo, hi, n in rows:
        if kind == "fraction":
            out["fraction"].setdefault(g, {})[w] = (v, lo, hi)
            out["count"].setdefault(g, {})[w] = int(n or 0)
        else:
            out["fd_group"].setdefault(g, {})[w] = v
    return out


def latest_find(db: Database, checkpoint_id: int, settings_key: str, group: str | None = None):
    """The newest finished find-ω job of this checkpoint and settings key (mode + guide), or None."""
    from . import jobs as jobs_service
    for j in jobs_service.list_jobs(db, kind="find_omega", limit=100):
        p = j.params or {}
        if (p.get("checkpoint_id") == int(checkpoint_id) and p.get("settings_key") == settings_key
                and (group is None or p.get("group") == group) and j.state in ("succeeded", "failed")):
            return j
    return None


def _job_guide(db: Database, settings: Settings, checkpoint_id: int, gs: GuideSettings, mode: str,
               choice: str | None, device: str) -> tuple[dict | None, str]:
    """Check mode and guide before queueing; returns (resolved guide, its stored choice)."""
    mode = check_mode(mode)
    if mode == "merged":
        check_merged(gs)
    guide = resolve_guide(db, settings, checkpoint_id, choice, device)
    if guide is not None and gs.shared_encoder:
        raise UserError("The shared encoder applies to a decoder-only SIMS auxiliary; untick it to guide with "
                        f"{guide['label']}.")
    return guide, (choice or AUX).strip()


def submit_sweep(db: Database, settings: Settings, checkpoint_id: int, grouping_id: int, gs: GuideSettings,
                 mode: str, choice: str | None = AUX, metric_omegas=None, device: str = "cpu") -> int:
    """Queue the ω grid of one mode and guide for one checkpoint (measurements only: no preview grid)."""
    from ..jobs.specs import SweepSpec
    from . import jobs as jobs_service
    from .guide import METRIC_SEED0, omega_grid
    from .guide_model import measurement_key
    gs.check()
    guide, choice = _job_guide(db, settings, checkpoint_id, gs, mode, choice, device)
    ms = mode_settings(gs, mode)
    omegas = [float(w) for w in (metric_omegas or omega_grid(0.5))]
    spec = SweepSpec(preview_checkpoint=int(checkpoint_id), preview_seeds=(), preview_steps=ms.preview_steps,
                     settings_key=measurement_key(gs, guide, mode), checkpoint_ids=[int(checkpoint_id)],
                     metric_omegas=omegas, grouping_id=int(grouping_id), n=ms.n, steps=ms.steps,
                     metric_seed0=METRIC_SEED0, interval=ms.interval(), shared_encoder=ms.shared_encoder,
                     mode=mode, guide=choice)
    who = "the SIMS auxiliary" if guide is None else guide["label"]
    return jobs_service.submit(db, spec, device=device, title=f"Omega grid, {MODE_LABELS[mode]}, guide {who}: "
                                                              f"{len(omegas)} values ({ms.n} samples each)")


def submit_compare_sweeps(db: Database, settings: Settings, checkpoint_id: int, grouping_id: int,
                          gs: GuideSettings, choice: str | None = AUX, metric_omegas=None,
                          device: str = "cpu") -> dict[str, int]:
    """The same ω grid on the same seeds in both modes: {"score": job id, "merged": job id}."""
    check_merged(gs)  # refuse before queueing either, so the two curves stay comparable
    return {m: submit_sweep(db, settings, checkpoint_id, grouping_id, gs, m, choice, metric_omegas, device)
            for m in MODES}


def submit_find(db: Database, settings: Settings, checkpoint_id: int, grouping_id: int, group: str,
                target_fraction: float, gs: GuideSettings, mode: str, choice: str | None = AUX,
                iterations: int = 4, device: str = "cpu") -> int:
    """Queue find-ω in one mode with the guide (each mode searches its own ω scale)."""
    from ..jobs.specs import FindOmegaSpec
    from . import jobs as jobs_service
    from .attributes import get_grouping
    from .guide import METRIC_SEED0
    from .guide_model import measurement_key
    gs.check()
    grouping = get_grouping(db, grouping_id)
    if group not in grouping["groups"]:
        raise UserError(f"'{group}' is not a group of {grouping['name']}.")
    if not 0 <= float(target_fraction) <= 1:
        raise UserError("The target fraction must be between 0% and 100%.")
    guide, choice = _job_guide(db, settings, checkpoint_id, gs, mode, choice, device)
    ms = mode_settings(gs, mode)
    spec = FindOmegaSpec(checkpoint_id=int(checkpoint_id), grouping_id=grouping["id"], group=group,
                         target=float(target_fraction), iterations=int(iterations), n=ms.n, steps=ms.steps,
                         metric_seed0=METRIC_SEED0, settings_key=measurement_key(gs, guide, mode),
                         interval=ms.interval(), shared_encoder=ms.shared_encoder, mode=mode, guide=choice)
    return jobs_service.submit(db, spec, device=device, title=f"Find omega, {MODE_LABELS[mode]}: {group} -> "
                                                              f"{100 * float(target_fraction):.0f}%")
