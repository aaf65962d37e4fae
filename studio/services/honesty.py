"""When a measured number cannot carry what it seems to say: too few samples, or an ω = 0 reading that
disagrees with the pool it should reproduce. Every place that shows a measurement shows these warnings.
"""
from __future__ import annotations

import math

from sqlalchemy import select

from ..db import Database
from ..models import Metric

# Below this many classified samples a group fraction's 95% interval is wider than ±6 points at 50%.
MIN_MEASURE_N = 256
FEATURE_DIMS = {"FD-digits": 128, "FID": 2048}  # n below these: singular covariance, FD dominated by bias


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (are k1/n1 and k2/n2 the same rate?)."""
    if min(n1, n2) <= 0:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 / n1 == k2 / n2 else 0.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def base_disagreement(zero: dict[str, tuple[float, float, float, int]], pool: dict) -> str | None:
    """A warning when the ω = 0 reading of a group differs from the pool's base fraction (test at 5%).

    zero: {group: (fraction, lo, hi, count)} measured at ω = 0; pool: pool.base_fractions(...) output.
    """
    n1, n2 = sum(v[3] for v in zero.values()), int(pool["assigned"])
    worst = None
    for g, (f, lo, hi, k) in zero.items():
        if g not in pool["groups"]:
            continue
        b = pool["groups"][g]
        p = two_proportion_p(int(k), n1, int(b["count"]), n2)
        if p < 0.05 and (worst is None or p < worst[0]):
            worst = (p, g, f, lo, hi, b)
    if worst is None:
        return None
    p, g, f, lo, hi, b = worst
    return (f"the ω = 0 reading of {g} is {100 * f:.1f}% [{100 * lo:.0f}–{100 * hi:.0f}] (n = {n1}) but the pool "
            f"holds {100 * b['fraction']:.1f}% [{100 * b['lo']:.0f}–{100 * b['hi']:.0f}] (n = {n2}); they differ "
            f"beyond chance (two-proportion test p = {p:.2g}), so every fraction of this measurement carries that "
            "offset: measure with more samples (or the pool's sampler steps) before trusting it")


def small_n(n: int) -> str | None:
    """A warning when a measurement classified fewer samples than MIN_MEASURE_N."""
    if n >= MIN_MEASURE_N:
        return None
    return (f"only {n} samples per ω (minimum {MIN_MEASURE_N}): the fractions' 95% intervals are wider than "
            "±6 points; raise 'Samples per ω'")


def small_fd(metric: str, n: int) -> str | None:
    """The small-sample warning for an FD from n samples (fewer than the feature dimension)."""
    dims = FEATURE_DIMS.get(metric)
    if dims is None or n >= dims:
        return None
    return (f"{metric} from {n} samples < {dims} feature dimensions: dominated by small-sample bias "
            "(compare with the floor drawn for that n)")


def zero_reading(db: Database, checkpoint_id: int, grouping_id: int, settings_key: str) -> dict:
    """{group: (fraction, lo, hi, count)} of the ω = 0 measurement with these settings ({} when none)."""
    with db.session(read_only=True) as s:
        rows = s.scalars(select(Metric).where(
            Metric.kind == "fraction", Metric.checkpoint_id == int(checkpoint_id),
            Metric.grouping_id == int(grouping_id), Metric.settings_key == settings_key,
            Metric.omega == 0.0).order_by(Metric.id)).all()
    return {m.group_name: (m.value, m.ci_lo, m.ci_hi, int(m.n or 0)) for m in rows}


def measurement_warnings(db: Database, model_id: int, checkpoint_id: int, grouping: dict,
                         settings_key: str) -> list[str]:
    """Warnings for the measurement of (checkpoint, grouping, settings): too few samples, ω = 0 vs the pool."""
    from pipelines.errors import UserError
    from .pool import base_fractions
    zero = zero_reading(db, checkpoint_id, grouping["id"], settings_key)
    out = []
    with db.session(read_only=True) as s:
        counts = s.execute(select(Metric.omega, Metric.n).where(
            Metric.kind == "fraction", Metric.checkpoint_id == int(checkpoint_id),
            Metric.grouping_id == int(grouping["id"]), Metric.settings_key == settings_key)).all()
    per_omega: dict = {}
    for w, k in counts:
        per_omega[w] = per_omega.get(w, 0) + int(k or 0)
    n = min(per_omega.values()) if per_omega else 0
    if per_omega and (w := small_n(n)):
        out.append(w)
    if zero:
        try:
            pool = base_fractions(db, model_id, grouping)
        except UserError:
            pool = None
        if pool and (w := base_disagreement(zero, pool)):
            out.append(w)
    elif per_omega:
        out.append("no ω = 0 reading with these settings: nothing checks the measurement against the pool")
    return out
