"""Distribution-shift arithmetic (SIMS Sec. 4.3): the auxiliary mix and reading the omega curve."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .errors import UserError


def _check_distribution(d: Mapping[str, float], what: str) -> dict[str, float]:
    values = {k: float(v) for k, v in d.items()}
    if not values:
        raise UserError(f"{what} is empty; give at least two groups.")
    if any(v < 0 for v in values.values()):
        raise UserError(f"{what} has a negative share: {values}.")
    total = sum(values.values())
    if abs(total - 1) > 1e-3:
        raise UserError(f"{what} must sum to 100% (it sums to {100 * total:.1f}%): {values}.")
    return values


def suggest_aux_mix(base_fractions: Mapping[str, float], target: Mapping[str, float],
                    omega0: float = 1.0) -> dict[str, float]:
    """First guess a = p - (q - p)/omega0, clipped to the simplex and renormalised.

    Guidance at omega moves the group fractions roughly linearly away from the auxiliary mix a,
    q ~ p + omega (p - a); solved for a at the planned omega0. (p = 0.5, q = 0.7, omega0 = 1 gives
    a = 0.3, the SIMS paper's FFHQ choice.) A guess only: the measured omega curve decides."""
    p = _check_distribution(base_fractions, "Base fractions")
    q = _check_distribution(target, "Target distribution")
    if set(p) != set(q):
        raise UserError(f"Base and target name different groups: {sorted(p)} vs {sorted(q)}.")
    if omega0 <= 0:
        raise UserError(f"The planned guidance omega0 must be > 0 (got {omega0}).")
    raw = {g: max(p[g] - (q[g] - p[g]) / omega0, 0.0) for g in p}
    total = sum(raw.values())
    if total == 0:
        raise UserError("The target is so far from the base that no auxiliary mix points there; "
                        "use a larger planned omega.")
    return {g: v / total for g, v in raw.items()}


def mix_counts(mix: Mapping[str, float], n: int) -> dict[str, int]:
    """Integer counts summing to n, closest to n*mix (largest-remainder rounding)."""
    if int(n) <= 0:
        raise UserError(f"The synthetic set size must be > 0 (got {n}).")
    mix = _check_distribution(mix, "Auxiliary mix")
    exact = {g: n * v for g, v in mix.items()}
    counts = {g: int(v) for g, v in exact.items()}
    short = n - sum(counts.values())
    for g in sorted(exact, key=lambda g: exact[g] - counts[g], reverse=True)[:short]:
        counts[g] += 1
    return counts


def closest_omega(omegas: Sequence[float], fractions: Sequence[float], target: float) -> tuple[float, float]:
    """The measured omega whose group fraction is closest to the target: (omega, fraction)."""
    if len(omegas) != len(fractions) or not omegas:
        raise ValueError("omegas and fractions must be non-empty and of equal length.")
    best = min(range(len(omegas)), key=lambda i: (abs(fractions[i] - target), abs(omegas[i])))
    return float(omegas[best]), float(fractions[best])


# ----------------------------------------------------------------------------
# Find omega: the guidance at which a group's measured fraction meets a target

COARSE_OMEGAS = (-1.0, 0.0, 1.0, 2.0, 3.0)

Interval = tuple[float, float] | None


@dataclass
class OmegaSearch:
    """Outcome of `find_omega`: the best measured omega and every point the search measured or reused."""
    target: float
    omega: float
    fraction: float
    interval: Interval
    reached: bool                 # |fraction - target| <= tolerance
    status: str                   # 'reached' | 'closest' | 'above_range' | 'below_range'
    omega_range: tuple[float, float]
    points: dict[float, tuple[float, Interval]] = field(default_factory=dict)
    measured: list[float] = field(default_factory=list)   # omegas measured by this search, in order

    def describe(self, group: str = "the group") -> str:
        """One line for people: the answer, or why there is none inside the omega range."""
        lo, hi = self.omega_range
        ci = f" [{100 * self.interval[0]:.1f}–{100 * self.interval[1]:.1f}]" if self.interval else ""
        head = (f"omega = {self.omega:+.3f} gives {group} {100 * self.fraction:.1f}%{ci} "
                f"(target {100 * self.target:.1f}%)")
        if self.status == "reached":
            return head
        if self.status == "above_range":
            return (f"{head}: the target is out of reach — no omega in [{lo:g}, {hi:g}] gets {group} that high; "
                    "this is the closest. Use a set S with less of this group, or a longer fine-tune.")
        if self.status == "below_range":
            return (f"{head}: the target is out of reach — no omega in [{lo:g}, {hi:g}] gets {group} that low; "
                    "this is the closest. Use a set S with more of this group, or a longer fine-tune.")
        return f"{head} — the closest measured; the curve crosses the target but the search stopped before it"


def find_omega(measure: Callable[[float], tuple[float, Interval]], target: float,
               omega_range: tuple[float, float] = (-1.0, 3.0), coarse: Sequence[float] = COARSE_OMEGAS,
               iterations: int = 4, tolerance: float = 0.02, min_width: float = 0.02,
               known: Mapping[float, tuple[float, Interval]] | None = None,
               progress: Callable[[int, int, float, str], None] | None = None) -> OmegaSearch:
    """Search omega for a group fraction closest to `target`: a coarse grid, then bisection of a crossing.

    `measure(omega) -> (fraction, (lo, hi) or None)` measures one point (fixed seeds: the same noise at
    every omega); points in `known` are reused, never measured again. The fraction need not be
    monotone in omega (measurements are noisy): among the brackets where the curve crosses the target,
    the one whose ends lie closest to it is bisected (ties: the smaller |omega|, i.e. less guidance).
    Bisection stops after `iterations` points, when a bracket is narrower than `min_width`, or when a
    measured point is within `tolerance` of the target and its interval holds the target (a finer omega
    cannot be told apart by this measurement). When no crossing exists, the result says on which side
    of the range the target lies.
    """
    lo_w, hi_w = float(omega_range[0]), float(omega_range[1])
    if not lo_w < hi_w:
        raise UserError(f"The omega range must be increasing (got {omega_range}).")
    target = float(target)
    if not 0 <= target <= 1:
        raise UserError(f"The target fraction must be between 0 and 1 (got {target}).")
    points: dict[float, tuple[float, Interval]] = {round(float(w), 4): (float(f), _interval(ci))
                                                   for w, (f, ci) in (known or {}).items() if lo_w <= w <= hi_w}
    measured: list[float] = []
    grid = [round(float(w), 4) for w in coarse if lo_w <= float(w) <= hi_w]
    todo = [w for w in grid if w not in points]
    total = len(todo) + int(iterations)

    def take(w: float, stage: str) -> None:
        f, ci = measure(w)
        points[w] = (float(f), _interval(ci))
        measured.append(w)
        if progress is not None:
            progress(len(measured), total, w, stage)

    for w in todo:
        take(w, "coarse")
    if not points:
        raise UserError("Nothing to search: no omega of the coarse grid lies inside the omega range.")
    for _ in range(int(iterations)):
        if _settled(points, target, tolerance):
            break
        ws = sorted(points)
        crossings = [(a, b) for a, b in zip(ws, ws[1:])
                     if (points[a][0] - target) * (points[b][0] - target) <= 0]
        if not crossings:
            break
        a, b = min(crossings, key=lambda ab: (abs(points[ab[0]][0] - target) + abs(points[ab[1]][0] - target),
                                              abs(ab[0]) + abs(ab[1])))
        mid = round((a + b) / 2, 4)
        if mid in points or b - a < min_width:
            break
        take(mid, "bisection")
    ws = sorted(points)
    best = min(ws, key=lambda w: (abs(points[w][0] - target), abs(w)))
    frac, ci = points[best]
    reached = abs(frac - target) <= tolerance
    fractions = [points[w][0] for w in ws]
    if reached:
        status = "reached"
    elif all(f < target for f in fractions):
        status = "above_range"
    elif all(f > target for f in fractions):
        status = "below_range"
    else:
        status = "closest"
    return OmegaSearch(target=target, omega=best, fraction=frac, interval=ci, reached=reached, status=status,
                       omega_range=(lo_w, hi_w), points=dict(sorted(points.items())), measured=measured)


def _interval(ci) -> Interval:
    return (float(ci[0]), float(ci[1])) if ci is not None and None not in tuple(ci) else None


def _settled(points: Mapping[float, tuple[float, Interval]], target: float, tolerance: float) -> bool:
    """A point within tolerance whose own interval holds the target: a finer omega cannot do better here."""
    return any(abs(f - target) <= tolerance and ci is not None and ci[0] <= target <= ci[1]
               for f, ci in points.values())
