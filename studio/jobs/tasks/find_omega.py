"""Job 'find_omega': the engine's search (pipelines.shift.find_omega) over stored and new measurements."""
from __future__ import annotations

from sqlalchemy import select

from ...models import Metric
from ...services.attributes import get_grouping
from ...services.evaluate import Measurer, pair_paths
from ..specs import FindOmegaSpec
from .common import set_threads
from .sweep import measure_point


def _curve(ctx, spec: FindOmegaSpec) -> dict[float, tuple[float, tuple | None]]:
    """{omega: (fraction, (lo, hi))} of the group as stored for this checkpoint and settings (latest row wins)."""
    with ctx.db.session(read_only=True) as s:
        rows = s.execute(select(Metric.omega, Metric.value, Metric.ci_lo, Metric.ci_hi).where(
            Metric.kind == "fraction", Metric.checkpoint_id == spec.checkpoint_id, Metric.group_name == spec.group,
            Metric.grouping_id == spec.grouping_id, Metric.settings_key == spec.settings_key)
            .order_by(Metric.id)).all()
    return {float(w): (float(v), (lo, hi) if lo is not None and hi is not None else None) for w, v, lo, hi in rows}


def run(ctx, spec: FindOmegaSpec) -> dict:
    """Reuse the measured points, measure the rest of the coarse grid, bisect where the curve crosses the target."""
    from pipelines.shift import find_omega
    set_threads()
    ck = spec.checkpoint_id
    base = pair_paths(ctx.db, ctx.settings, ck)[0]
    measurer = Measurer(ctx.db, ctx.settings, base, get_grouping(ctx.db, spec.grouping_id), ctx.device)

    def measure(w: float):
        measure_point(ctx, measurer, ck, w, spec)
        return _curve(ctx, spec)[round(float(w), 4)]

    def progress(done: int, total: int, w: float, stage: str) -> None:
        ctx.progress(done / max(total, 1), f"{'coarse grid' if stage == 'coarse' else stage} omega={w:+.3f}")

    result = find_omega(measure, spec.target, iterations=spec.iterations, known=_curve(ctx, spec), progress=progress)
    with ctx.db.session(read_only=True) as s:
        fd = s.scalar(select(Metric.value).where(
            Metric.kind == "fd_group", Metric.checkpoint_id == ck, Metric.group_name == spec.group,
            Metric.settings_key == spec.settings_key, Metric.omega == result.omega).order_by(Metric.id.desc()).limit(1))
    msg = result.describe(spec.group) + (f"; {measurer.metric} {fd:.2f} for that group" if fd is not None else "")
    return {"message": msg, "omega": result.omega, "fraction": result.fraction, "fd_group": fd,
            "reached": result.reached, "status": result.status, "interval": result.interval,
            "measured": result.measured, "metric": measurer.metric, "mode": spec.mode, "guide": spec.guide}
