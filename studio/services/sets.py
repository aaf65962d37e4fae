"""Synthetic sets S: a group mix drawn from the labelled pool (grown when short), or the not-preferred samples."""
from __future__ import annotations

from sqlalchemy import func, select

from pipelines.errors import UserError

from ..db import Database
from ..settings import DEFAULT_STEPS
from ..models import SetMember, Sample, SyntheticSet
from ..jobs.specs import BuildSetSpec
from . import jobs as jobs_service
from .attributes import get_grouping
from .pool import group_counts, not_preferred_ids

DEFAULT_MAX_POOL = 200_000


def plan(db: Database, model_id: int, grouping: dict, mix: dict[str, float], n_s: int, grow: bool,
         max_pool: int = DEFAULT_MAX_POOL) -> dict:
    """Counts per group and the growth needed; UserError for an impossible plan (said up front)."""
    from pipelines.shift import mix_counts
    from pipelines.synthetic_set import check_counts, check_feasible
    n_s = int(n_s or 0)
    if n_s <= 0:
        raise UserError(f"n_s (size of S) must be a positive number of samples (got {n_s}).")
    counts = mix_counts(mix, n_s)
    have = group_counts(db, model_id, grouping["id"])
    pool_groups = [g for g, k in have.items() for _ in range(k)]  # the labelled pool, as the engine sees it
    check_counts(pool_groups, counts, can_grow=grow, grow_hint="tick 'generate more when a group runs short'")
    short = any(c > have.get(g, 0) for g, c in counts.items())
    extra = check_feasible(pool_groups, counts, max_pool) if short else 0
    return {"counts": counts, "have": {g: have.get(g, 0) for g in counts}, "extra_estimate": int(extra)}


def submit_build(db: Database, model_id: int, grouping_id: int, mix: dict[str, float], n_s: int,
                 target: dict | None = None, base_fractions: dict | None = None, grow: bool = True,
                 max_pool: int = DEFAULT_MAX_POOL, steps: int = DEFAULT_STEPS, device: str = "cpu", name: str = "") -> tuple[int, int]:
    """Validate the plan, create S (state 'building') and queue its job; returns (set id, job id)."""
    grouping = get_grouping(db, grouping_id)
    info = plan(db, model_id, grouping, mix, n_s, grow, max_pool)
    with db.session() as s:
        row = SyntheticSet(name=name or f"S {n_s} {grouping['name']}", model_id=int(model_id),
                           grouping_id=grouping["id"], kind="mix", target=target, mix=dict(mix),
                           base_fractions=base_fractions, n_s=int(n_s), counts=None, state="building")
        s.add(row)
        s.flush()
        set_id = row.id
    spec = BuildSetSpec(set_id=set_id, model_id=int(model_id), grouping_id=grouping["id"],
                        classifier=grouping["classifier"], counts={g: int(c) for g, c in info["counts"].items()},
                        grow=bool(grow), max_pool=int(max_pool), steps=int(steps))
    job = jobs_service.submit(db, spec, title=f"Build S #{set_id} ({n_s} samples)", device=device)
    with db.session() as s:
        s.get(SyntheticSet, set_id).job_id = job
    return set_id, job


def build_not_preferred(db: Database, model_id: int, name: str = "") -> int:
    """S = the samples marked not preferred (SIMS Sec. 5); returns the set id."""
    ids = not_preferred_ids(db, model_id)
    if not ids:
        raise UserError("No samples are marked 'not preferred' yet. Mark some in the Generate & label gallery "
                        "(select them, then 'Mark not preferred').")
    with db.session() as s:
        row = SyntheticSet(name=name or f"not preferred ({len(ids)})", model_id=int(model_id), kind="not_preferred",
                           n_s=len(ids), counts={"not preferred": len(ids)}, state="ready")
        s.add(row)
        s.flush()
        s.add_all([SetMember(set_id=row.id, sample_id=i, group_name="not preferred", position=k)
                   for k, i in enumerate(ids)])
        return row.id


def list_sets(db: Database, model_id: int | None = None) -> list[dict]:
    """Synthetic sets, newest first."""
    with db.session(read_only=True) as s:
        q = select(SyntheticSet).order_by(SyntheticSet.id.desc())
        if model_id is not None:
            q = q.where(SyntheticSet.model_id == int(model_id))
        return [_as_dict(r) for r in s.scalars(q)]


def latest_plan(db: Database, model_id: int, grouping_id: int, groups) -> tuple[dict, dict] | None:
    """(target, mix) fractions of the newest mix set built for this model and grouping, if its groups still match."""
    for r in list_sets(db, model_id):
        if r["kind"] == "mix" and r["grouping_id"] == int(grouping_id) and r["target"] and r["mix"]:
            if set(r["target"]) == set(groups) and set(r["mix"]) == set(groups):
                return r["target"], r["mix"]
            return None
    return None


def _as_dict(r: SyntheticSet) -> dict:
    return {"id": r.id, "name": r.name, "model_id": r.model_id, "grouping_id": r.grouping_id, "kind": r.kind,
            "target": r.target, "mix": r.mix, "base_fractions": r.base_fractions, "n_s": r.n_s,
            "counts": r.counts, "state": r.state, "job_id": r.job_id, "created": f"{r.created_at:%Y-%m-%d %H:%M}"}


def get_set(db: Database, set_id: int) -> dict:
    """One set with its composition."""
    with db.session(read_only=True) as s:
        r = s.get(SyntheticSet, int(set_id)) if set_id not in (None, "") else None
        if r is None:
            raise UserError("Pick a synthetic set (build one in the Build set tab).")
        return _as_dict(r)


def member_ids(db: Database, set_id: int) -> list[tuple[int, str]]:
    """(sample id, sample path) of the members in their fixed training order."""
    with db.session(read_only=True) as s:
        return list(s.execute(select(Sample.id, Sample.path).join(SetMember, SetMember.sample_id == Sample.id)
                              .where(SetMember.set_id == int(set_id)).order_by(SetMember.position)).all())


def preview(db: Database, set_id: int, per_group: int = 8) -> list[tuple[str, str]]:
    """(path, caption) of a few members per group."""
    with db.session(read_only=True) as s:
        groups = [g for (g,) in s.execute(select(SetMember.group_name).where(SetMember.set_id == int(set_id))
                                          .group_by(SetMember.group_name))]
        out = []
        for g in groups:
            rows = s.execute(select(Sample.path, Sample.seed).join(SetMember, SetMember.sample_id == Sample.id)
                             .where(SetMember.set_id == int(set_id), SetMember.group_name == g)
                             .order_by(SetMember.position).limit(per_group)).all()
            out += [(p, f"{g} · seed {seed}") for p, seed in rows]
        return out


def member_count(db: Database, set_id: int) -> int:
    """Number of members."""
    with db.session(read_only=True) as s:
        return int(s.scalar(select(func.count()).select_from(SetMember).where(SetMember.set_id == int(set_id))))
