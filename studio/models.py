"""SQLAlchemy 2.x ORM: everything the studio remembers (images themselves live as files).

Schema changes go through Alembic (studio/migrations); keep this file and the latest
migration in step.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

from sqlalchemy import (JSON, Boolean, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now (stored as UTC)."""
    return datetime.now(timezone.utc)


# The two columns most tables share, declared once (SQLAlchemy's Annotated column types; the
# column stays where each class names it, so the tables are the same as written out in full).
IntId = Annotated[int, mapped_column(primary_key=True)]
CreatedAt = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class JobState(str, enum.Enum):
    """Life cycle of a job; every transition is recorded in job_events with its time."""
    queued = "queued"
    starting = "starting"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"

    @property
    def active(self) -> bool:
        return self in (JobState.queued, JobState.starting, JobState.running)


class LabelSource(str, enum.Enum):
    """Who set a label: a classifier's prediction or a person (manual wins)."""
    classifier = "classifier"
    manual = "manual"


class Model(Base):
    """A registered base model (demo, imported EDM checkpoint, upload, path)."""
    __tablename__ = "models"
    id: Mapped[IntId]
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(String(1000))          # relative to the data dir
    content_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(20))           # demo | path | url | upload
    source_ref: Mapped[Optional[str]] = mapped_column(String(2000))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)      # ModelConfig as dict
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)        # dataset / training / provenance
    resolution: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[CreatedAt]


class Classifier(Base):
    """An attribute classifier plug-in known to the studio."""
    __tablename__ = "classifiers"
    id: Mapped[IntId]
    name: Mapped[str] = mapped_column(String(100), unique=True)
    classes: Mapped[list[Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # factory kwargs, e.g. weights
    created_at: Mapped[CreatedAt]


class Grouping(Base):
    """Named partition of a classifier's classes into groups ({group: [class, ...]})."""
    __tablename__ = "groupings"
    __table_args__ = (UniqueConstraint("classifier", "name"),)
    id: Mapped[IntId]
    classifier: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    groups: Mapped[dict[str, Any]] = mapped_column(JSON)
    threshold: Mapped[float] = mapped_column(Float, default=0.5)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[CreatedAt]


class Sample(Base):
    """One generated image of a base model's pool: seed + file + content hash."""
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("model_id", "seed"),)
    id: Mapped[IntId]
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))
    content_hash: Mapped[str] = mapped_column(String(64))
    not_preferred: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[CreatedAt]


class Label(Base):
    """A label of a sample. Classifier labels hold probabilities; manual ones a class and win.

    Manual labels are append-only (history kept); the newest one per (sample, classifier) counts.
    """
    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_sample_clf_src", "sample_id", "classifier", "source"),)
    id: Mapped[IntId]
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    classifier: Mapped[str] = mapped_column(String(100))
    source: Mapped[LabelSource] = mapped_column(Enum(LabelSource, native_enum=False, length=20))
    probs: Mapped[Optional[list[Any]]] = mapped_column(JSON)        # classifier: one prob per class
    class_name: Mapped[Optional[str]] = mapped_column(String(100))  # argmax (classifier) or chosen (manual)
    confidence: Mapped[float] = mapped_column(Float)
    author: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[CreatedAt]


class Assignment(Base):
    """Effective group of a sample under a grouping (derived from its labels; manual wins)."""
    __tablename__ = "assignments"
    __table_args__ = (Index("ix_assign_grouping_group", "grouping_id", "group_name", "confidence"),)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    grouping_id: Mapped[int] = mapped_column(ForeignKey("groupings.id", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[Optional[str]] = mapped_column(String(200))  # None: below the threshold
    confidence: Mapped[float] = mapped_column(Float)
    source: Mapped[LabelSource] = mapped_column(Enum(LabelSource, native_enum=False, length=20))


class SyntheticSet(Base):
    """The auxiliary training set S: a mix of groups, or the user's not-preferred samples."""
    __tablename__ = "synthetic_sets"
    id: Mapped[IntId]
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    grouping_id: Mapped[Optional[int]] = mapped_column(ForeignKey("groupings.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20))               # mix | not_preferred
    target: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    mix: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    base_fractions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    n_s: Mapped[int] = mapped_column(Integer)
    counts: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # achieved composition
    state: Mapped[str] = mapped_column(String(20), default="building")  # building | ready | failed
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[CreatedAt]
    members: Mapped[list["SetMember"]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class SetMember(Base):
    """One sample of a synthetic set, with the group it was drawn for."""
    __tablename__ = "set_members"
    set_id: Mapped[int] = mapped_column(ForeignKey("synthetic_sets.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[Optional[str]] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)  # fixed order: training sees the same data on resume


class Job(Base):
    """Background work run by a worker process; progress and state live here."""
    __tablename__ = "jobs"
    id: Mapped[IntId]
    kind: Mapped[str] = mapped_column(String(50), index=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=20), index=True,
                                            default=JobState.queued)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[Optional[str]] = mapped_column(String(50))   # None: not GPU-bound
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    log_tail: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    host: Mapped[Optional[str]] = mapped_column(String(200))
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    traceback: Mapped[Optional[str]] = mapped_column(Text)
    result: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    events: Mapped[list["JobEvent"]] = relationship(order_by="JobEvent.id", cascade="all, delete-orphan",
                                                    passive_deletes=True)


class JobEvent(Base):
    """One state transition of a job, with its time."""
    __tablename__ = "job_events"
    id: Mapped[IntId]
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[CreatedAt]


class Checkpoint(Base):
    """A saved auxiliary-model checkpoint of a fine-tune run, at a budget (kimg)."""
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "kimg"),)
    id: Mapped[IntId]
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    set_id: Mapped[Optional[int]] = mapped_column(ForeignKey("synthetic_sets.id", ondelete="SET NULL"))
    kimg: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[CreatedAt]


class Metric(Base):
    """A measured number: loss, group fraction, FD, per group/omega/checkpoint."""
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_lookup", "kind", "job_id", "checkpoint_id"),)
    id: Mapped[IntId]
    kind: Mapped[str] = mapped_column(String(50))   # loss | fraction | fd | fd_group | images_per_s
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[Optional[int]] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    grouping_id: Mapped[Optional[int]] = mapped_column(ForeignKey("groupings.id", ondelete="SET NULL"))
    group_name: Mapped[Optional[str]] = mapped_column(String(200))
    omega: Mapped[Optional[float]] = mapped_column(Float)
    settings_key: Mapped[Optional[str]] = mapped_column(String(64))  # interval/steps/seeds hash
    step: Mapped[Optional[float]] = mapped_column(Float)               # kimg for training curves
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[Optional[int]] = mapped_column(Integer)
    ci_lo: Mapped[Optional[float]] = mapped_column(Float)
    ci_hi: Mapped[Optional[float]] = mapped_column(Float)
    created_at: Mapped[CreatedAt]


class Render(Base):
    """Cached guided render of fixed seeds, keyed by everything that determines the pixels."""
    __tablename__ = "renders"
    id: Mapped[IntId]
    key: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[Optional[int]] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    omega: Mapped[float] = mapped_column(Float)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)   # interval, seeds, steps
    path: Mapped[str] = mapped_column(String(1000))          # .npz with images (+ grid png beside)
    created_at: Mapped[CreatedAt]
