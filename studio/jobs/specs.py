"""Typed job specs: one frozen dataclass per job kind, stored as the job's JSON parameters.

A service builds a spec by keyword and submits it (`services.jobs.submit`); the worker reloads it
from the job row with `spec_from_json` and hands it to the task's `run(ctx, spec)`. Loading refuses
unknown keys, missing keys and values of the wrong type, each with the key named.

Compatibility with job rows already stored: a field is only ever added with a default, so rows
written before it existed still load; a renamed key is carried over in the class's `upgrade`.
To add a field: give it a default (the value that matches the old behaviour), then read it in the task.
To add a job kind: a class here with `kind = "<kind>"`, an entry in SPECS and the task in registry.TASKS.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.config import check_types, strict_from_dict
from pipelines.errors import UserError
from pipelines.training.config import TrainConfig

_UnionType = type(int | None)


class JobSpec:
    """Base of every spec: lists become tuples (frozen all the way), nested configs are loaded, types are checked."""
    kind: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _normalise(getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        check_types(self, f"{self.kind} job parameters")
        self.check()

    def check(self) -> None:
        """Rules between fields (types are already checked); raises UserError."""

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """Stored parameters as written by an older version -> today's keys (default: unchanged)."""
        return data


def _normalise(value, tp):
    """JSON shapes -> the annotated type: a list for a tuple field -> tuple, a dict for a config field -> the config."""
    for arm in typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, _UnionType) else (tp,):
        origin = typing.get_origin(arm)
        if origin is tuple and isinstance(value, list):
            return tuple(value)
        if dataclasses.is_dataclass(arm) and isinstance(value, dict):
            load = getattr(arm, "from_dict", None)
            return load(value) if load else strict_from_dict(arm, value)
    return value


# ---------------------------------------------------------------------------------------------- pool

@dataclass(frozen=True)
class GenerateSpec(JobSpec):
    """Add samples with seeds seed_start .. seed_start+n-1 to a model's pool."""
    kind: ClassVar[str] = "generate"
    model_id: int
    seed_start: int
    n: int
    steps: int
    batch_size: int = 64


@dataclass(frozen=True)
class LabelSpec(JobSpec):
    """Classify every not-yet-labelled sample of a model's pool."""
    kind: ClassVar[str] = "label"
    model_id: int
    classifier: str


@dataclass(frozen=True)
class EmbedSpec(JobSpec):
    """Features of new pool samples and the pool's 2-D map."""
    kind: ClassVar[str] = "embed"
    model_id: int
    classifier: str


@dataclass(frozen=True)
class BuildSetSpec(JobSpec):
    """Assemble synthetic set S with these counts per group, growing the pool up to max_pool if `grow`."""
    kind: ClassVar[str] = "build_set"
    set_id: int
    model_id: int
    grouping_id: int
    classifier: str
    counts: dict[str, int]
    grow: bool
    max_pool: int
    steps: int


# ----------------------------------------------------------------------------------------- models

@dataclass(frozen=True)
class FinetuneSpec(JobSpec):
    """Fine-tune the base model on S (the auxiliary model); `config` is the whole training recipe."""
    kind: ClassVar[str] = "finetune"
    set_id: int
    model_id: int
    config: TrainConfig
    gpus: int = 1             # > 1: torchrun with this many processes
    previews: bool = True     # queue the Guide's preview grid of the final budget when done

    def check(self) -> None:
        check_types(self.config, "finetune job parameters: config")


@dataclass(frozen=True)
class ImportModelSpec(JobSpec):
    """Import an EDM pickle (path or URL) or copy a native checkpoint, and register it."""
    kind: ClassVar[str] = "import_model"
    src: str
    name: str = ""
    allow_private_urls: bool = False  # the studio's --allow-private-urls, checked by the worker


@dataclass(frozen=True)
class VerifyPoolSpec(JobSpec):
    """Check every stored sample of a model's pool and regenerate the bad ones from their seeds."""
    kind: ClassVar[str] = "verify_pool"
    model_id: int


# ------------------------------------------------------------------------------------------ guide

@dataclass(frozen=True, kw_only=True)
class GuidedSpec(JobSpec):
    """Base of the jobs that measure the guided model over omegas (sweep, find_omega): how it guides."""
    interval: tuple[float, float] | None = None
    shared_encoder: bool = False
    mode: str = "score"                 # score: two networks | merged: one network, weights merged at each omega
    guide: str = "aux"                  # aux (the checkpoint) | demo-early | model:<id> (services.guide_model)

    def check(self) -> None:
        """The guidance mode is score or merged; a merged model is one network: no interval, no shared encoder."""
        if self.mode not in ("score", "merged"):
            raise UserError(f"{self.kind} job parameters: mode must be 'score' or 'merged' (got {self.mode!r}).")
        if self.mode == "merged" and (self.interval or self.shared_encoder):
            raise UserError(f"{self.kind} job parameters: a merged model has no guidance interval or shared encoder.")


@dataclass(frozen=True, kw_only=True)
class SweepSpec(GuidedSpec):
    """The omega grid of previews for one checkpoint, then measurements over every (checkpoint, omega).

    A previews-only job has no checkpoint_ids; measuring needs grouping_id, n, steps and metric_seed0."""
    kind: ClassVar[str] = "sweep"
    preview_checkpoint: int
    preview_seeds: tuple[int, ...]
    preview_steps: int
    settings_key: str                   # hash of the measurement settings (GuideSettings.key)
    preview_omegas: tuple[float, ...] = ()
    preview_interval: tuple[float, float] | None = None
    checkpoint_ids: tuple[int, ...] = ()
    metric_omegas: tuple[float, ...] = ()
    grouping_id: int | None = None
    n: int | None = None
    steps: int | None = None
    metric_seed0: int | None = None
    guide_settings: dict[str, Any] | None = None  # the GuideSettings it was queued with (a record)

    def check(self) -> None:
        if self.checkpoint_ids and self.metric_omegas:
            missing = [k for k in ("grouping_id", "n", "steps", "metric_seed0") if getattr(self, k) is None]
            if missing:
                raise UserError(f"sweep job parameters: measuring needs {', '.join(missing)}.")
        super().check()

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        data = dict(data)
        # Jobs queued before previews had their own step count rendered them with the measurement's interval.
        if "preview_interval" not in data and "interval" in data:
            data["preview_interval"] = data["interval"]
        # The GuideSettings record was stored as "guide" before that name was freed for the guide model.
        old = data.get("guide")
        if isinstance(old, dict) and "preview_steps" in old and "guide_settings" not in data:
            data["guide_settings"] = data.pop("guide")
        return data


@dataclass(frozen=True, kw_only=True)
class FindOmegaSpec(GuidedSpec):
    """Search the omega at which `group`'s fraction is closest to `target` (measurements reused by settings_key)."""
    kind: ClassVar[str] = "find_omega"
    checkpoint_id: int
    grouping_id: int
    group: str
    target: float
    iterations: int
    n: int
    steps: int
    metric_seed0: int
    settings_key: str


@dataclass(frozen=True)
class ExportDatasetSpec(JobSpec):
    """Render n shifted images from seed0, label them (if a classifier is given), write an EDM-layout zip."""
    kind: ClassVar[str] = "export_dataset"
    checkpoint_id: int
    omega: float
    n: int
    steps: int
    seed0: int
    file: str                           # relative to the data folder
    classifier: str | None = None
    interval: tuple[float, float] | None = None
    shared_encoder: bool = False
    grouping_id: int | None = None      # report the realised mix by this grouping
    planned: dict[str, Any] | None = None  # the Guide's measurement at this omega: {"fractions", "n"}


SPECS: dict[str, type[JobSpec]] = {cls.kind: cls for cls in (
    GenerateSpec, LabelSpec, BuildSetSpec, FinetuneSpec, SweepSpec, FindOmegaSpec, ImportModelSpec,
    ExportDatasetSpec, EmbedSpec, VerifyPoolSpec)}


def spec_class(kind: str) -> type[JobSpec]:
    """The spec class of a job kind."""
    if kind not in SPECS:
        raise UserError(f"Unknown job kind {kind!r}; known: {', '.join(sorted(SPECS))}.")
    return SPECS[kind]


def spec_to_json(spec: JobSpec) -> dict:
    """The spec as the plain JSON object stored in the job row (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def spec_from_json(kind: str, data: dict | None) -> JobSpec:
    """Load stored parameters into the kind's spec; unknown, missing or mistyped keys raise UserError naming them."""
    cls = spec_class(kind)
    where = f"{kind} job parameters"
    if not isinstance(data, (dict, type(None))):
        raise UserError(f"{where} must be a JSON object, got {type(data).__name__}.")
    data = cls.upgrade(dict(data or {}))
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}.")
    return strict_from_dict(cls, data, where)
