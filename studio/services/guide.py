"""Guide tab service: live previews at omega, the omega grid job, curves, (omega, budget) heat map, find omega."""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..models import Checkpoint, Metric
from ..settings import DEFAULT_STEPS, Settings, default_precision
from ..jobs.specs import FindOmegaSpec, SweepSpec
from . import jobs as jobs_service
from .attributes import get_grouping
from .evaluate import interval_from_skip, render_stream
from .finetune import checkpoints, get_checkpoint

OMEGA_MIN, OMEGA_MAX, OMEGA_STEP = -1.0, 3.0, 0.25
METRIC_SEED0 = 1_000_000  # measurement seeds never overlap the pool's (which start at 0)


@dataclass(frozen=True)
class GuideSettings:
    """Everything besides (checkpoint, omega) that changes what a guided sample looks like or how it is measured."""
    preview_steps: int = DEFAULT_STEPS
    preview_count: int = 64
    steps: int = DEFAULT_STEPS
    n: int = 256
    skip_steps: int = 0
    shared_encoder: bool = False

    def interval(self, steps: int | None = None):
        """Sigma interval of guidance for a run with `steps` steps (None = whole trajectory)."""
        return interval_from_skip(steps or self.steps, self.skip_steps)

    def key(self) -> str:
        """Short hash of the measurement settings (curves of different settings never mix)."""
        precision = default_precision()  # bf16 measurements are kept apart; fp32 keys predate the option
        blob = json.dumps({"steps": self.steps, "n": self.n, "seed0": METRIC_SEED0, "skip": self.skip_steps,
                           "shared": self.shared_encoder, **({"precision": precision} if precision != "fp32" else {})},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check(self) -> "GuideSettings":
        """Refuse nonsense with a message."""
        if not 1 <= self.preview_steps <= 256 or not 1 <= self.steps <= 256:
            raise UserError("Sampler steps must be between 1 and 256.")
        if not 16 <= self.n <= 100_000:
            raise UserError(f"Samples per omega must be between 16 and 100,000 (got {self.n}).")
        if not 1 <= self.preview_count <= 256:
            raise UserError("The preview grid holds 1 to 256 samples.")
        self.interval(self.preview_steps)  # raises if skip >= steps
        self.interval()
        return self


def fmt_omega(omega) -> str:
    """ω as shown: two decimals for slider positions, every digit of a finer (found or typed) value."""
    w = float(omega)
    return f"{w:+.2f}" if abs(round(w, 2) - w) < 1e-9 else f"{w:+.4g}"


def omega_grid(step: float = OMEGA_STEP) -> list[float]:
    """Slider positions from -1 to 3."""
    n = int(round((OMEGA_MAX - OMEGA_MIN) / step))
    return [round(OMEGA_MIN + i * step, 4) for i in range(n + 1)]


def preview(db: Database, settings: Settings, checkpoint_id: int, omega: float, gs: GuideSettings,
            device: str = "cpu") -> dict:
    """Grid of the fixed preview seeds at omega (cached, else rendered now)."""
    *_, (_, result) = preview_stream(db, settings, checkpoint_id, omega, gs, device)
    return result


# A live render gives up after waiting this long for a device a job holds (the nearest cached grid stays
# on screen and the caption names the job): a page must not hang on a fine-tune that takes minutes.
RENDER_WAIT_S = 5.0


def render_slot(db: Database, settings: Settings, device: str, what: str, wait_s: float | None = RENDER_WAIT_S):
    """The device slot a live (web-process) render takes before sampling, like any job on that device."""
    from ..jobs.device_slot import DeviceSlot
    return DeviceSlot(db, settings, device, title=f"Live render: {what}", wait_s=wait_s)


def preview_stream(db: Database, settings: Settings, checkpoint_id: int, omega: float, gs: GuideSettings,
                   device: str = "cpu", slot_wait_s: float | None = RENDER_WAIT_S):
    """Like `preview`, yielding the partially rendered grid first (see evaluate.render_stream); an uncached
    grid waits for a free slot of the device first (yielding ("waiting", holders)), at most `slot_wait_s`."""
    from pipelines.guidance import parse_omega
    omega = parse_omega(omega)
    if not OMEGA_MIN <= omega <= OMEGA_MAX:
        raise UserError(f"omega must be between {OMEGA_MIN} and {OMEGA_MAX} (got {omega}).")
    slot = render_slot(db, settings, device, f"preview at ω = {fmt_omega(omega)}", slot_wait_s)
    return render_stream(db, settings, checkpoint_id, omega, range(gs.preview_count), gs.preview_steps,
                         gs.interval(gs.preview_steps), gs.shared_encoder, device, slot=slot)


def _cached_previews(db: Database, settings: Settings, checkpoint_id: int, gs: GuideSettings,
                     device: str = "cpu") -> dict[float, str]:
    """{omega: grid path} of this checkpoint's previews rendered with exactly these preview settings, at this
    precision on this kind of device."""
    from ..models import Render
    from .evaluate import render_variant
    want = {"interval": _as_list(gs.interval(gs.preview_steps)), "seeds": list(range(gs.preview_count)),
            "steps": gs.preview_steps, "shared_encoder": gs.shared_encoder,
            **render_variant(settings.precision, device)}
    with db.session(read_only=True) as s:
        rows = s.execute(select(Render.omega, Render.path, Render.settings).where(
            Render.checkpoint_id == int(checkpoint_id))).all()
    return {w: str(settings.abs(p)) for w, p, st in rows if st == want and settings.abs(p).exists()}


def nearest_cached(db: Database, settings: Settings, checkpoint_id: int, omega: float,
                   gs: GuideSettings, device: str = "cpu") -> dict | None:
    """The cached preview with the same settings whose omega is closest (shown while an exact one renders)."""
    have = _cached_previews(db, settings, checkpoint_id, gs, device)
    if not have:
        return None
    w = min(have, key=lambda v: (abs(v - float(omega)), v))
    return {"omega": w, "grid": have[w]}


def _preview_params(checkpoint_id: int, gs: GuideSettings) -> dict:
    """Job parameters of the preview grid (the omega-grid and preview jobs share them)."""
    return {"preview_checkpoint": int(checkpoint_id), "preview_omegas": omega_grid(),
            "preview_seeds": list(range(gs.preview_count)), "preview_steps": gs.preview_steps,
            "preview_interval": _as_list(gs.interval(gs.preview_steps)), "shared_encoder": gs.shared_encoder}


def submit_sweep(db: Database, checkpoint_id: int, grouping_id: int, gs: GuideSettings, all_budgets: bool = True,
                 metric_omegas=None, device: str = "cpu") -> int:
    """Queue the omega-grid job: previews for this checkpoint, measurements over (omega, budget)."""
    gs.check()
    ck = get_checkpoint(db, checkpoint_id)
    grouping = get_grouping(db, grouping_id)
    ids = [c["id"] for c in checkpoints(db, ck["job_id"])] if all_budgets else [ck["id"]]
    metric_omegas = list(metric_omegas or omega_grid(0.5))
    spec = SweepSpec(**_preview_params(ck["id"], gs), checkpoint_ids=ids, metric_omegas=metric_omegas,
                     grouping_id=grouping["id"], n=gs.n, steps=gs.steps, metric_seed0=METRIC_SEED0,
                     interval=gs.interval(), settings_key=gs.key(), guide_settings=asdict(gs))
    return jobs_service.submit(db, spec, device=device,
                               title=f"Omega grid: {len(omega_grid())} previews, {len(ids)}x{len(metric_omegas)} "
                                     f"measurements ({gs.n} samples each)")


def submit_previews(db: Database, checkpoint_id: int, gs: GuideSettings = GuideSettings(), device: str = "cpu") -> int:
    """Queue only the preview grid of one checkpoint (queued after every fine-tune, so scrubbing starts cached)."""
    gs.check()
    ck = get_checkpoint(db, checkpoint_id)
    spec = SweepSpec(**_preview_params(ck["id"], gs), interval=gs.interval(), settings_key=gs.key())
    return jobs_service.submit(db, spec, device=device,
                               title=f"Previews for checkpoint {ck['kimg']:g} kimg ({len(omega_grid())} values of ω)")


def ensure_previews(db: Database, settings: Settings, checkpoint_id: int, gs: GuideSettings,
                    device: str = "cpu") -> int | None:
    """Queue the preview grid of a checkpoint unless it is all cached or already on its way; returns the job id."""
    gs.check()
    if set(omega_grid()) <= set(_cached_previews(db, settings, checkpoint_id, gs, device)):
        return None
    wanted = _preview_params(checkpoint_id, gs)
    for job in jobs_service.list_jobs(db, kind="sweep", limit=50):
        if job.active and all(job.params.get(k) == v for k, v in wanted.items()):
            return None
    return submit_previews(db, checkpoint_id, gs, device)


def submit_find_omega(db: Database, checkpoint_id: int, grouping_id: int, group: str, target_fraction: float,
                      gs: GuideSettings, iterations: int = 4, device: str = "cpu") -> int:
    """Queue the search for the omega whose `group` fraction is closest to the target."""
    gs.check()
    ck = get_checkpoint(db, checkpoint_id)
    grouping = get_grouping(db, grouping_id)
    if group not in grouping["groups"]:
        raise UserError(f"'{group}' is not a group of {grouping['name']}.")
    if not 0 <= float(target_fraction) <= 1:
        raise UserError("The target fraction must be between 0% and 100%.")
    spec = FindOmegaSpec(checkpoint_id=ck["id"], grouping_id=grouping["id"], group=group,
                         target=float(target_fraction), iterations=int(iterations), n=gs.n, steps=gs.steps,
                         metric_seed0=METRIC_SEED0, interval=gs.interval(), shared_encoder=gs.shared_encoder,
                         settings_key=gs.key())
    return jobs_service.submit(db, spec, device=device,
                               title=f"Find omega: {group} -> {100 * float(target_fraction):.0f}% "
                                     f"(checkpoint {ck['kimg']:g} kimg)")


def _as_list(interval):
    return list(interval) if interval else None


def curves(db: Database, checkpoint_id: int, grouping_id: int, gs: GuideSettings) -> dict:
    """Measured curves vs omega for one checkpoint: fractions (+CI) and distances per group."""
    with db.session(read_only=True) as s:
        rows = s.scalars(select(Metric).where(
            Metric.checkpoint_id == int(checkpoint_id), Metric.grouping_id == int(grouping_id),
            Metric.settings_key == gs.key()).order_by(Metric.omega, Metric.id)).all()
    out: dict = {"fraction": {}, "fd_group": {}, "fd_floor": {}, "fd": {}, "fd_reweighted": {}, "count": {}}
    for m in rows:  # later rows for the same point replace earlier ones
        if m.kind in ("fraction", "fd_group", "fd_floor"):
            out[m.kind].setdefault(m.group_name, {})[m.omega] = (m.value, m.ci_lo, m.ci_hi)
        if m.kind == "fraction":  # classified samples of the group at this ω: the n of its per-group FD
            out["count"].setdefault(m.group_name, {})[m.omega] = int(m.n or 0)
        elif m.kind in ("fd", "fd_reweighted"):
            out[m.kind][m.omega] = m.value
    return out


def heatmap(db: Database, checkpoint_id: int, grouping_id: int, group: str, gs: GuideSettings) -> dict:
    """(budget x omega) matrices of the group's fraction and of the overall distance, for the whole run."""
    ck = get_checkpoint(db, checkpoint_id)
    budgets = checkpoints(db, ck["job_id"])
    ids = {c["id"]: c["kimg"] for c in budgets}
    with db.session(read_only=True) as s:
        rows = s.execute(select(Metric.kind, Metric.checkpoint_id, Metric.omega, Metric.value).where(
            Metric.checkpoint_id.in_(list(ids)), Metric.grouping_id == int(grouping_id),
            Metric.settings_key == gs.key(),
            ((Metric.kind == "fraction") & (Metric.group_name == group)) | (Metric.kind == "fd"))).all()
    omegas = sorted({r[2] for r in rows})
    kimgs = [c["kimg"] for c in budgets]
    frac = np.full((len(kimgs), len(omegas)), np.nan)
    fd = np.full_like(frac, np.nan)
    for kind, cid, w, v in rows:
        i, j = kimgs.index(ids[cid]), omegas.index(w)
        (frac if kind == "fraction" else fd)[i, j] = v
    # find-omega adds points to one budget only: keep the columns every measured budget has (holes otherwise)
    measured = ~np.isnan(frac).all(axis=1)
    complete = ~np.isnan(frac[measured]).any(axis=0)
    if measured.sum() > 1 and complete.sum() >= 2:
        omegas = [w for w, keep in zip(omegas, complete) if keep]
        frac, fd = frac[:, complete], fd[:, complete]
    return {"omegas": omegas, "kimgs": kimgs, "fraction": frac, "fd": fd}


VIEW_KEYS = ("checkpoint_id", "omega", "preview_steps", "preview_count", "steps", "n", "skip_steps", "shared_encoder",
             "all_budgets", "find_group", "find_target")


_VIEWS_LOCK = threading.Lock()  # one read-modify-write of the views file at a time in this process


def save_view(settings: Settings, model_id: int, view: dict) -> None:
    """Remember the Guide's picks for a model (checkpoint, ω, measurement settings) so a reload restores them.
    Calls are applied in the order they take the lock (the order the browser's requests arrive)."""
    import os
    path = settings.path("ui", "guide.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _VIEWS_LOCK:
        views = load_views(settings)
        views[str(int(model_id))] = {k: view[k] for k in VIEW_KEYS if k in view}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(views, indent=1))
        os.replace(tmp, path)  # atomic: a reload never reads half a file


def load_views(settings: Settings) -> dict:
    """{model id: remembered Guide picks}; {} when nothing was remembered or the file is unreadable."""
    path = settings.path("ui", "guide.json")
    try:
        views = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return views if isinstance(views, dict) else {}


def run_checkpoints(db: Database, model_id: int | None = None) -> list[tuple[str, int]]:
    """(label, checkpoint id) choices for the budget picker, newest run first."""
    with db.session(read_only=True) as s:
        q = select(Checkpoint).order_by(Checkpoint.job_id.desc(), Checkpoint.kimg)
        if model_id is not None:
            q = q.where(Checkpoint.base_model_id == int(model_id))
        return [(f"run #{c.job_id} · {c.kimg:g} kimg", c.id) for c in s.scalars(q)]
