"""Job 'find_omega': search omega for the group fraction closest to the target (bisection on the measured curve)."""
from __future__ import annotations

from sqlalchemy import select

from ...models import Metric
from ...services.attributes import get_grouping
from ...services.evaluate import Measurer, pair_paths
from .common import set_threads
from .sweep import has_point, measure_point

COARSE = (-1.0, 0.0, 1.0, 2.0, 3.0)


def _curve(ctx, p) -> dict[float, float]:
    with ctx.db.session(read_only=True) as s:
        rows = s.execute(select(Metric.omega, Metric.value).where(
            Metric.kind == "fraction", Metric.checkpoint_id == p["checkpoint_id"], Metric.group_name == p["group"],
            Metric.grouping_id == p["grouping_id"], Metric.settings_key == p["settings_key"])).all()
    return {float(w): float(v) for w, v in rows}


def run(ctx) -> dict:
    """Coarse grid where missing, then bisect where the fraction crosses the target."""
    from pipelines.shift import closest_omega
    set_threads()
    p = ctx.params
    target, ck = float(p["target"]), int(p["checkpoint_id"])
    base = pair_paths(ctx.db, ctx.settings, ck)[0]
    measurer = Measurer(ctx.db, ctx.settings, base, get_grouping(ctx.db, p["grouping_id"]), ctx.device)
    steps = [w for w in COARSE if not has_point(ctx, ck, w, p["grouping_id"], p["settings_key"])]
    total = len(steps) + int(p["iterations"])
    for i, w in enumerate(steps):
        measure_point(ctx, measurer, ck, w, p)
        ctx.progress((i + 1) / total, f"coarse grid omega={w:+.2f}")
    for i in range(int(p["iterations"])):
        curve = _curve(ctx, p)
        ws = sorted(curve)
        brackets = [(a, b) for a, b in zip(ws, ws[1:]) if (curve[a] - target) * (curve[b] - target) <= 0]
        if not brackets:
            break  # the target is outside what the measured range reaches
        a, b = min(brackets, key=lambda ab: abs(curve[ab[0]] - target) + abs(curve[ab[1]] - target))
        mid = round((a + b) / 2, 4)
        if mid in curve or b - a < 0.02:
            break
        measure_point(ctx, measurer, ck, mid, p)
        ctx.progress((len(steps) + i + 1) / total, f"bisection omega={mid:+.3f}")
    curve = _curve(ctx, p)
    ws = sorted(curve)
    best, frac = closest_omega(ws, [curve[w] for w in ws], target)
    with ctx.db.session(read_only=True) as s:
        fd = s.scalar(select(Metric.value).where(
            Metric.kind == "fd_group", Metric.checkpoint_id == ck, Metric.group_name == p["group"],
            Metric.settings_key == p["settings_key"], Metric.omega == best).order_by(Metric.id.desc()).limit(1))
    reached = abs(frac - target) <= 0.02
    msg = (f"omega = {best:+.3f} gives {p['group']} {100 * frac:.1f}% (target {100 * target:.0f}%)"
           + (f", {measurer.metric} {fd:.2f} for that group" if fd is not None else "")
           + ("" if reached else " — the closest the measured range [-1, 3] reaches"))
    return {"message": msg, "omega": best, "fraction": frac, "fd_group": fd, "reached": reached,
            "metric": measurer.metric}
