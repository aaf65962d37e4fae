"""Export: the shifted model as a SIMS bundle (with a model card), and a shifted dataset zip in EDM's layout."""
from __future__ import annotations

import errno
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..models import Job, Metric, Model, SyntheticSet
from ..settings import DEFAULT_STEPS, Settings
from ..jobs.specs import ExportDatasetSpec
from . import jobs as jobs_service
from .evaluate import interval_from_skip, metric_name
from .finetune import get_checkpoint
from .guide import OMEGA_MAX, OMEGA_MIN, GuideSettings, fmt_omega


def check_writable(folder: Path) -> Path:
    """Make sure files can be written into `folder` (created if missing), before any work is spent on them.

    A real probe file, not only os.access: a read-only mount, a full disk or a path under a regular file
    all fail here; os.access adds the permission check for the case the probe cannot see (it is advisory
    for root). The message names the folder and the operating system's reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "no write permission for this user")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, (FileExistsError, NotADirectoryError)):
            why = f"{why} (a file is in the way of this folder)"
        raise UserError(f"Cannot write the export into {folder}: {why}. Make that folder writable for the "
                        f"user running the studio, or start the studio with a --data-dir it can write.") from None
    return folder


def _name(name: str, default: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", (name or "").strip()).strip("-.")
    return name or default


def _measured(db: Database, checkpoint_id: int, omega: float) -> dict:
    # Every measurement at this (checkpoint, omega), for the card; newest settings first.
    with db.session(read_only=True) as s:
        rows = s.scalars(select(Metric).where(Metric.checkpoint_id == checkpoint_id,
                                              Metric.omega == round(float(omega), 4))
                         .order_by(Metric.id.desc())).all()
    out: dict = {}
    for m in rows:
        if ":" in (m.settings_key or ""):  # another guide or the weight-space merge (guide_model.measurement_key)
            continue
        entry = out.setdefault(m.settings_key, {"n": m.n, "fractions": {}, "fd_per_group": {},
                                                "grouping_id": m.grouping_id})
        if m.kind == "fraction":
            entry["fractions"].setdefault(m.group_name, [round(m.value, 4), round(m.ci_lo, 4), round(m.ci_hi, 4),
                                                         int(m.n or 0)])
            entry.setdefault("group_counts", {}).setdefault(m.group_name, int(m.n or 0))
            entry.setdefault("counts", {}).setdefault(m.group_name, m.n)  # a fraction row's n is its group's count
        elif m.kind == "fd_group":
            entry["fd_per_group"].setdefault(m.group_name, round(m.value, 4))
        elif m.kind in ("fd", "fd_reweighted"):
            entry.setdefault(m.kind, round(m.value, 4))
    for key, entry in out.items():
        if entry["fractions"]:  # fraction rows count one group each: the measurement's n is their sum
            entry["n"] = int(sum(v[3] for v in entry["fractions"].values()))
            entry["fractions"] = {g: v[:3] for g, v in entry["fractions"].items()}
    return out


def warnings_for(db: Database, checkpoint_id: int, measured: dict) -> list[str]:
    """Every measurement warning (too few samples, ω = 0 off the pool, small-sample FD) of these measurements."""
    from .attributes import get_grouping
    from .honesty import measurement_warnings, small_fd
    ck = get_checkpoint(db, checkpoint_id)
    out = []
    for key, m in measured.items():
        if m.get("grouping_id") is None:
            continue
        g = get_grouping(db, m["grouping_id"])
        out += measurement_warnings(db, ck["base_model_id"], ck["id"], g, key)
        if m["fd_per_group"] and (w := small_fd(metric_name(g["classifier"]), min(m["group_counts"].values()))):
            out.append(w)
    return list(dict.fromkeys(out))


def provenance(db: Database, checkpoint_id: int) -> dict:
    """The chain base model -> synthetic set -> fine-tune -> checkpoint, from the database."""
    ck = get_checkpoint(db, checkpoint_id)
    with db.session(read_only=True) as s:
        base = s.get(Model, ck["base_model_id"])
        sset = s.get(SyntheticSet, ck["set_id"]) if ck["set_id"] else None
        job = s.get(Job, ck["job_id"])
        return {
            "base_model": {"name": base.name, "source": base.source, "source_ref": base.source_ref,
                           "sha256": base.content_hash, "dataset": base.meta.get("dataset"),
                           "provenance": base.meta.get("provenance")},
            "synthetic_set": None if sset is None else {
                "id": sset.id, "kind": sset.kind, "n_s": sset.n_s, "counts": sset.counts, "target": sset.target,
                "aux_mix": sset.mix, "base_fractions": sset.base_fractions},
            "finetune": {"job": job.id, "config": job.params.get("config"), "budget_kimg": ck["kimg"]},
        }


def plan(db: Database, checkpoint_id: int, omega: float, gs: GuideSettings, classifier: str = "") -> dict:
    """What both exports will use, stated before exporting: checkpoint, exact ω, guidance interval, sampler."""
    from pipelines.guidance import parse_omega
    omega = parse_omega(omega)
    ck = get_checkpoint(db, checkpoint_id)
    interval = interval_from_skip(gs.steps, gs.skip_steps)
    return {"checkpoint_id": ck["id"], "run": ck["job_id"], "budget_kimg": ck["kimg"], "omega": omega,
            "steps": int(gs.steps), "skip_steps": int(gs.skip_steps or 0),
            "interval": list(interval) if interval else None, "shared_encoder": bool(gs.shared_encoder),
            "measured": (measured := _measured(db, ck["id"], omega)), "warnings": warnings_for(db, ck["id"], measured)}


def interval_text(skip_steps: int, steps: int, interval) -> str:
    """The guidance interval in words."""
    if not interval:
        return "whole trajectory (every step guided)"
    return f"first {skip_steps} of {steps} steps unguided (guided while σ ≤ {interval[1]:.3g})"


def export_bundle(db: Database, settings: Settings, checkpoint_id: int, omega: float, steps: int = DEFAULT_STEPS,
                  skip_steps: int = 0, shared_encoder: bool = False, name: str = "", classifier: str = "") -> dict:
    """Write the SIMS bundle (+ its Markdown card) under exports/; returns paths and the card."""
    from pipelines.checkpoints.bundle import save_bundle
    from pipelines.guidance import parse_omega
    from pipelines.sampler import SamplerConfig
    omega = parse_omega(omega)
    if not OMEGA_MIN <= omega <= OMEGA_MAX:
        raise UserError(f"omega must be between {OMEGA_MIN} and {OMEGA_MAX}.")
    ck = get_checkpoint(db, checkpoint_id)
    check_writable(settings.path("exports"))
    with db.session(read_only=True) as s:
        base_path = settings.abs(s.get(Model, ck["base_model_id"]).path)
    interval = interval_from_skip(steps, skip_steps)
    card = {"title": "SIMS-shifted model", "omega": omega, "budget_kimg": ck["kimg"],
            "guidance_interval_skip_first_steps": int(skip_steps or 0),
            "measured": (measured := _measured(db, ck["id"], omega)),
            "measurement_warnings": warnings_for(db, ck["id"], measured),
            "distance_metric": metric_name(classifier) if classifier else None,
            "provenance_chain": provenance(db, ck["id"]), "exported": datetime.now().isoformat(timespec="seconds")}
    # Fairness discrepancy (L2), KL and TV vs the set's target, with bootstrap intervals (pipelines/fairness.py).
    # With the classifier-error-aware fractions where its confusion is measured (fairness_view.card_report).
    from .fairness_view import card_report
    target = (card["provenance_chain"]["synthetic_set"] or {}).get("target")
    card["fairness_vs_target"] = {k: r for k, m in card["measured"].items()
                                  if target and (r := card_report(db, m, target)) is not None} or None
    out = settings.path("exports", _name(name, f"sims-ckpt{ck['id']}-omega{fmt_omega(omega)}") + ".safetensors")
    save_bundle(out, base_path, settings.abs(ck["path"]), omega, interval, SamplerConfig(num_steps=int(steps)),
                shared_encoder, card)
    return {"bundle": str(out), "card": str(out.with_suffix(".md")), "card_data": card,
            "command": f"python -m pipelines sample-sims --bundle {out} --seeds 0-63 --out samples.npz"}


def submit_dataset_export(db: Database, checkpoint_id: int, omega: float, n: int, classifier: str,
                          gs: GuideSettings, name: str = "", device: str = "cpu", grouping_id: int | None = None,
                          settings: Settings | None = None) -> int:
    """Queue a job that renders n shifted images, labels them and writes an EDM-layout zip.

    With `settings`, an unwritable exports folder is refused here, before queueing (the job checks again
    before it renders: the folder can change while the job waits)."""
    from pipelines.guidance import parse_omega
    omega = parse_omega(omega)
    n = int(n or 0)
    if not 1 <= n <= 5_000_000:
        raise UserError(f"Number of images must be between 1 and 5,000,000 (got {n}).")
    ck = get_checkpoint(db, checkpoint_id)
    if settings is not None:
        check_writable(settings.path("exports"))
    fname = _name(name, f"shifted-ckpt{ck['id']}-omega{fmt_omega(omega)}-{n}") + ".zip"
    # the plan the realised mix is reported against: the Guide's measurement at this ω with these settings
    planned = _measured(db, ck["id"], omega).get(gs.key()) if grouping_id is not None else None
    spec = ExportDatasetSpec(
        checkpoint_id=ck["id"], omega=omega, n=n, classifier=classifier or None, steps=gs.steps,
        interval=gs.interval(), shared_encoder=gs.shared_encoder, seed0=2_000_000, file=f"exports/{fname}",
        grouping_id=grouping_id, planned={"fractions": planned["fractions"], "n": planned["n"]} if planned else None)
    return jobs_service.submit(db, spec, title=f"Export {n} images at omega {fmt_omega(omega)}",
        device=device)
