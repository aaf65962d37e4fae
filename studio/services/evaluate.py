"""Guided rendering and measurement shared by the Guide tab and its jobs.

`render_cached` renders fixed seeds at one omega (same initial noise at every omega, so changes
are visible) and caches the result on disk + in the `renders` table keyed by everything that
determines the pixels. `measure` gives group fractions (Wilson CIs) and Fréchet distances per
group against the real reference set (FD-digits for the demo classifier, FID otherwise).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pipelines.errors import UserError

from ..db import Database
from ..models import Checkpoint, Model, Render
from ..settings import Settings
from ..storage import grid, write_png

_MODELS: "OrderedDict[tuple, object]" = OrderedDict()
_MODELS_LOCK = threading.Lock()
_MAX_MODELS = 6


def load_cached(path: Path, device: str = "cpu"):
    """Load a native checkpoint once per process (small LRU keyed by path, mtime and device)."""
    from pipelines.checkpoints.native import load_model
    key = (str(path), path.stat().st_mtime_ns, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    model, _ = load_model(path, device=device)
    with _MODELS_LOCK:
        _MODELS[key] = model
        while len(_MODELS) > _MAX_MODELS:
            _MODELS.popitem(last=False)
    return model


def pair_paths(db: Database, settings: Settings, checkpoint_id: int) -> tuple[Model, Path, Path]:
    """(base model row, base path, aux checkpoint path) of an auxiliary checkpoint."""
    with db.session(read_only=True) as s:
        ck = s.get(Checkpoint, int(checkpoint_id)) if checkpoint_id not in (None, "") else None
        if ck is None:
            raise UserError("Pick an auxiliary checkpoint (run a fine-tune in the Fine-tune tab first).")
        base = s.get(Model, ck.base_model_id)
        s.expunge(base)
        return base, settings.abs(base.path), settings.abs(ck.path)


def interval_from_skip(steps: int, skip: int, sampler_kwargs: dict | None = None):
    """Guidance interval (sigma_lo, sigma_hi) that leaves the first `skip` Heun steps unguided (paper App. A)."""
    from pipelines.sampler import SamplerConfig, sigma_steps
    skip = int(skip or 0)
    if skip <= 0:
        return None
    if skip >= int(steps):
        raise UserError(f"Skipping {skip} of {steps} steps leaves nothing to guide; skip fewer steps.")
    t = sigma_steps(SamplerConfig(num_steps=int(steps), **(sampler_kwargs or {})))
    return (0.0, float(t[skip]))


def device_kind(device) -> str:
    """'cpu', 'cuda', ... of a device string: the kind of hardware, which changes the float rounding
    (two GPUs of one kind are taken to render alike)."""
    return str(device or "cpu").split(":", 1)[0].strip().lower() or "cpu"


def render_variant(precision: str = "fp32", device: str = "cpu") -> dict:
    """The precision and device kind of a render, as stored in its key and settings: only values other than
    fp32 and cpu appear (keys and rows written before either was recorded are fp32 CPU renders)."""
    kind = device_kind(device)
    return {**({"precision": precision} if precision != "fp32" else {}), **({"device": kind} if kind != "cpu" else {})}


def render_key(base_hash: str, checkpoint_id: int, omega: float, interval, seeds, steps: int,
               shared_encoder: bool, precision: str = "fp32", guide_hash: str | None = None,
               device: str = "cpu") -> str:
    """Cache key: everything that determines the rendered pixels, the precision and the device kind
    included (CPU and CUDA round differently); a guide other than the checkpoint itself enters by its
    content hash, so renders of different guides never mix."""
    blob = json.dumps({"base": base_hash, "ckpt": int(checkpoint_id), "omega": round(float(omega), 4),
                       "interval": [round(v, 6) for v in interval] if interval else None,
                       "seeds": [int(s) for s in seeds], "steps": int(steps), "shared": bool(shared_encoder),
                       **render_variant(precision, device), **({"guide": guide_hash} if guide_hash else {})},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


FIRST_CHUNK = 16  # seeds of a fresh preview shown first: two rows of the 8x8 grid, well under a second on 2 cores


def preview_chunks(n: int, first: int = FIRST_CHUNK, batch_size: int = 64) -> list[int]:
    """Chunk sizes of a preview render: a small first chunk (on screen early), then full batches.

    Every preview of the same seeds uses the same chunks, so live and precomputed grids hold the same pixels.
    """
    sizes = [min(n, first)]
    while sum(sizes) < n:
        sizes.append(min(batch_size, n - sum(sizes)))
    return sizes


def grid_image(images: np.ndarray, total: int | None = None) -> np.ndarray:
    """The preview grid (~512 px wide, crisp pixels); with `total`, the cells not rendered yet stay empty."""
    cols = int(np.ceil(np.sqrt(total or len(images))))
    return grid(images, cols=cols, cell=max(32, 512 // cols), total=total)


def render_stream(db: Database, settings: Settings, checkpoint_id: int, omega: float, seeds, steps: int,
                  interval=None, shared_encoder: bool = False, device: str = "cpu", guide: dict | None = None,
                  slot=None):
    """Grid of `seeds` at `omega`, from the cache if there, else rendered now (chunk by chunk) and cached.
    `guide` ({"path", "sha256"}) replaces the checkpoint as the guiding model (autoguidance).
    `slot` (a jobs.device_slot.DeviceSlot) is taken before rendering and given back after: the web
    process's renders share the device with jobs; a job's own renders pass none (the job holds it).

    Yields ("waiting", holders) while the slot is busy, ("partial", grid image, done, total) after each
    chunk but the last of a fresh render, then ("done", result dict); a cached grid yields only ("done", ...).
    """
    t0 = time.perf_counter()
    seeds = [int(x) for x in seeds]
    base_row, base_path, aux_path = pair_paths(db, settings, checkpoint_id)
    if guide:
        aux_path = Path(guide["path"])
    key = render_key(base_row.content_hash, checkpoint_id, omega, interval, seeds, steps, shared_encoder,
                     settings.precision, guide["sha256"] if guide else None, device)
    if (hit := _cached(db, settings, key, t0)) is not None:
        yield "done", hit
        return
    if slot is not None:
        waits = slot.acquire()
        for held in waits:
            if (hit := _cached(db, settings, key, t0)) is not None:  # e.g. the preview job holding the device
                waits.close()
                yield "done", hit
                return
            yield "waiting", held
        use_render_threads()
    try:
        if slot is not None and (hit := _cached(db, settings, key, t0)) is not None:
            yield "done", hit  # rendered by a job or another tab while this one waited
            return
        parts, done = [], 0
        for size in preview_chunks(len(seeds)):
            parts.append(render(base_path, aux_path, omega, seeds[done:done + size], steps, interval,
                                shared_encoder, device, precision=settings.precision))
            done += size
            if done < len(seeds):
                yield "partial", grid_image(np.concatenate(parts), total=len(seeds)), done, len(seeds)
    finally:
        if slot is not None:
            slot.release()
    images = np.concatenate(parts)
    rel = f"cache/renders/{key[:2]}/{key}.png"
    out = settings.abs(rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), images=images, seeds=np.asarray(seeds), omega=float(omega))
    write_png(out, grid_image(images))
    try:
        with db.session() as s:
            s.add(Render(key=key, model_id=base_row.id, checkpoint_id=int(checkpoint_id), omega=float(omega),
                         settings={"interval": list(interval) if interval else None, "seeds": seeds,
                                   "steps": int(steps), "shared_encoder": bool(shared_encoder),
                                   **render_variant(settings.precision, device),
                                   **({"guide": guide["sha256"]} if guide else {})}, path=rel))
    except IntegrityError:
        pass  # a job or another tab rendered the same key a moment ago: same pixels
    yield "done", {"grid": str(out), "npz": str(out.with_suffix(".npz")), "cached": False,
                   "seconds": time.perf_counter() - t0, "key": key}


def render_threads() -> int:
    """Torch threads of a live render in the web process: one core fewer than the process may use (at least
    one), so that the web server's own threads (the queue, image encoding, other tabs) run beside the
    sampler instead of preempting it; SIMS_RENDER_THREADS overrides. With every core sampling, a preempted
    thread stalls its team at each parallel region (measured with bench/scrub.py on a loaded 2-core machine:
    the app 1.8x slower than the same render alone with two threads, 1.07x with one)."""
    import os
    return max(1, int(os.environ.get("SIMS_RENDER_THREADS") or len(os.sched_getaffinity(0)) - 1))


def use_render_threads() -> None:
    """Set the process's torch threads to render_threads() (a live render; jobs set their own)."""
    import torch
    n = render_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _cached(db: Database, settings: Settings, key: str, t0: float) -> dict | None:
    """The result dict of a cached render, or None."""
    with db.session(read_only=True) as s:
        row = s.scalar(select(Render).where(Render.key == key))
        path = row.path if row is not None and settings.abs(row.path).exists() else None
    if path is None:
        return None
    return {"grid": str(settings.abs(path)), "npz": str(settings.abs(path).with_suffix(".npz")),
            "cached": True, "seconds": time.perf_counter() - t0, "key": key}


def render_cached(db: Database, settings: Settings, checkpoint_id: int, omega: float, seeds, steps: int,
                  interval=None, shared_encoder: bool = False, device: str = "cpu") -> dict:
    """Grid of `seeds` at `omega`: from the cache if there, else rendered now and cached (see render_stream)."""
    *_, (_, result) = render_stream(db, settings, checkpoint_id, omega, seeds, steps, interval, shared_encoder,
                                    device)
    return result


def render(base_path: Path, aux_path: Path, omega: float, seeds, steps: int, interval=None,
           shared_encoder: bool = False, device: str = "cpu", batch_size: int = 64,
           precision: str = "fp32") -> np.ndarray:
    """uint8 NHWC samples of the SIMS-guided model for `seeds` (seeded noise: same start at every omega);
    precision 'bf16' autocasts the networks (Settings.precision)."""
    from pipelines.generate import generate_images, generate_sims
    from pipelines.sampler import SamplerConfig
    base = load_cached(base_path, device)
    sampler = SamplerConfig(num_steps=int(steps))
    if float(omega) == 0.0:  # the base model alone: half the work
        return generate_images(base, list(seeds), sampler, batch_size=batch_size, device=device,
                               precision=precision)
    aux = load_cached(aux_path, device)
    images, _ = generate_sims(base, aux, float(omega), list(seeds), sampler, interval=interval,
                              shared_encoder=shared_encoder, batch_size=batch_size, device=device,
                              precision=precision)
    return images


# ----------------------------------------------------------------------------
# Measurement: group fractions and per-group Fréchet distance


def metric_name(classifier: str) -> str:
    """The name a listed classifier's Fréchet distances are reported under (its feature space's metric)."""
    from pipelines.attributes import classifier_feature_space
    return classifier_feature_space(classifier).metric


def reference_images(settings: Settings, base: Model) -> np.ndarray:
    """Real images to compare against: the model's recorded dataset if the package ships it (the demo's digits),
    else uploaded reference images."""
    from pipelines.data import is_bundled, open_dataset
    from pipelines.imageio import read_images
    name = str((base.meta.get("dataset") or {}).get("name") or "")
    if is_bundled(name):
        ds = open_dataset(name)
        return np.stack([ds[i][0].permute(1, 2, 0).numpy() for i in range(len(ds))])
    folder = settings.path("reference", f"m{base.id}")
    if (folder / "dataset.json").exists() or any(folder.glob("*/*.png")):
        return read_images(folder)[0]
    raise UserError(f"No real reference images for model '{base.name}': upload some (Models tab -> Real reference "
                    "images) to measure per-group distances. Group fractions do not need them.")


class Measurer:
    """Classifier + features + per-group reference statistics for one (base model, grouping)."""

    def __init__(self, db: Database, settings: Settings, base: Model, grouping: dict, device: str = "cpu"):
        from .attributes import engine_grouping, load_classifier
        self.grouping = grouping
        self.eg = engine_grouping(grouping)
        self.clf = load_classifier(db, grouping["classifier"], device=device)
        self.classes = list(self.clf.classes)
        self.metric = self.clf.feature_space.metric
        self._settings, self._base, self._device, self._db = settings, base, device, db
        self._extractor = None
        self.ref = None
        self.ref_error: str | None = None

    def fractions(self, images: np.ndarray) -> tuple[dict, np.ndarray]:
        """({group: (fraction, lo, hi, count)}, assigned labels) of generated images."""
        from pipelines.attributes.groupings import group_fractions
        assigned, _ = self.eg.assign(self.clf.predict_proba(images), self.classes, self.grouping["threshold"])
        fr = group_fractions(assigned, self.eg)
        return {g: (f, lo, hi, int((assigned == g).sum())) for g, (f, lo, hi) in fr.items()}, assigned

    def _reference(self):
        from pipelines.metrics.fid import compute_features, extractor_for, stats_from_features, ReferenceStats
        if self.ref is not None or self.ref_error is not None:
            return self.ref
        try:
            self._extractor = extractor_for(self.clf)  # the classifier's feature space (its loaded weights for digits)
            cache = self._settings.path("cache", "refstats",
                                        f"m{self._base.id}-g{self.grouping['id']}-"
                                        f"{hashlib.sha256(self._extractor.feature_id.encode()).hexdigest()[:12]}.npz")
            if cache.exists():
                self.ref = ReferenceStats.load(cache)
            else:
                real = reference_images(self._settings, self._base)
                feats = compute_features(real, self._extractor, self._settings.path("cache", "features"))
                assigned, _ = self.eg.assign(self.clf.predict_proba(real), self.classes, self.grouping["threshold"])
                self.ref = stats_from_features(feats, self.metric, self._extractor.feature_id, assigned,
                                               self.eg.group_names, info={"source": f"model {self._base.id}"})
                cache.parent.mkdir(parents=True, exist_ok=True)
                self.ref.save(cache)
        except UserError as e:
            self.ref_error = str(e)
        return self.ref

    def floors(self, counts: dict[str, int], repeats: int = 10) -> dict:
        """Per group: the FD real samples of that group get at the generated count (the metric's floor).

        {group: {"n", "mean", "interval"}}; {} when no reference is available. Memoised per (group, n).
        """
        from pipelines.metrics.fid import compute_features
        from pipelines.metrics.floor import fd_floor_per_group
        if self._reference() is None:
            return {}
        if getattr(self, "_real", None) is None:
            real = reference_images(self._settings, self._base)
            feats = compute_features(real, self._extractor, self._settings.path("cache", "features"))
            groups, _ = self.eg.assign(self.clf.predict_proba(real), self.classes, self.grouping["threshold"])
            self._real, self._floors = (feats, groups), {}
        todo = {g: int(n) for g, n in counts.items() if (g, int(n)) not in self._floors}
        # Inception features are 2048-d: fewer repeats keep a floor to seconds
        reps = repeats if self._real[0].shape[1] <= 512 else 3
        for g, v in fd_floor_per_group(*self._real, todo, repeats=reps).items():
            self._floors[(g, int(v["n"]))] = v
        return {g: self._floors[(g, int(n))] for g, n in counts.items()}

    def distances(self, images: np.ndarray, assigned) -> dict | None:
        """fd_report (overall, per_group, reweighted) or None when no reference is available."""
        from pipelines.metrics.fid import compute_features, fd_report
        ref = self._reference()
        if ref is None:
            return None
        feats = compute_features(images, self._extractor, None)
        return fd_report(feats, ref, assigned, feature=self._extractor.feature_id)
