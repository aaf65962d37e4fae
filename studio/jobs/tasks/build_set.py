"""Job 'build_set': assemble S with the planned counts per group, growing the pool when a group runs short."""
from __future__ import annotations

from sqlalchemy import delete, select

from ...models import Assignment, Sample, SetMember, SyntheticSet
from ...services.pool import next_seed
from ...services.attributes import load_classifier
from ..specs import BuildSetSpec
from .common import generate_into_pool, label_all, label_samples, load_registered_model, set_threads


def _pool_groups(ctx, model_id: int, grouping_id: int) -> tuple[list[int], list[str]]:
    # Pool order = sample id order, so S is reproducible; unlabelled samples count as 'uncertain'.
    with ctx.db.session(read_only=True) as s:
        rows = s.execute(select(Sample.id, Assignment.group_name).outerjoin(
            Assignment, (Assignment.sample_id == Sample.id) & (Assignment.grouping_id == grouping_id))
            .where(Sample.model_id == model_id).order_by(Sample.id)).all()
    return [r[0] for r in rows], [r[1] or "uncertain" for r in rows]


def run(ctx, spec: BuildSetSpec) -> dict:
    """Build the set; a failure leaves it marked 'failed' (the job keeps the reason)."""
    try:
        return _build(ctx, spec)
    except BaseException:
        with ctx.db.session() as s:
            s.get(SyntheticSet, spec.set_id).state = "failed"
        raise


def _build(ctx, spec: BuildSetSpec) -> dict:
    from pipelines.synthetic_set import fill_set
    set_threads()
    model_id, grouping_id, classifier = spec.model_id, spec.grouping_id, spec.classifier
    counts = dict(spec.counts)
    ctx.progress(0.0, "labelling any unlabelled pool samples", force=True)
    label_all(ctx, model_id, classifier)
    ids, groups = _pool_groups(ctx, model_id, grouping_id)
    state = {"model": None, "clf": None}

    def grow(n: int) -> list[str]:
        if state["model"] is None:
            state["model"], _ = load_registered_model(ctx, model_id)
            state["clf"] = load_classifier(ctx.db, classifier, device=ctx.device)
        start = next_seed(ctx.db, model_id)
        new = generate_into_pool(ctx, state["model"], model_id, range(start, start + n), spec.steps)
        label_samples(ctx, state["clf"], classifier, new)
        with ctx.db.session(read_only=True) as s:
            got = dict(s.execute(select(Assignment.sample_id, Assignment.group_name).where(
                Assignment.grouping_id == grouping_id, Assignment.sample_id.in_(new))).all())
        ids.extend(new)
        ctx.log(f"grew the pool by {n} samples")
        return [got.get(i) or "uncertain" for i in new]

    def progress(info: dict) -> None:
        done = sum(info["have"].values()) / max(sum(info["counts"].values()), 1)
        ctx.progress(done, f"pool {info['pool']}: " + ", ".join(
            f"{g} {info['have'][g]}/{c}" for g, c in info["counts"].items()))

    members, _ = fill_set(groups, counts, grow if spec.grow else None, max_pool=spec.max_pool, chunk=256,
                          progress=progress)
    rows, k = [], 0
    for g, idx in members.items():
        for i in idx:
            rows.append(SetMember(set_id=spec.set_id, sample_id=ids[i], group_name=g, position=k))
            k += 1
    with ctx.db.session() as s:
        s.execute(delete(SetMember).where(SetMember.set_id == spec.set_id))
        s.add_all(rows)
        row = s.get(SyntheticSet, spec.set_id)
        row.counts = {g: len(idx) for g, idx in members.items()}
        row.state = "ready"
    ctx.log(f"S #{spec.set_id}: {row.counts}")
    return {"message": f"S #{spec.set_id} ready: " + ", ".join(f"{g} {n}" for g, n in row.counts.items()),
            "counts": row.counts, "pool": len(ids)}
