"""Distribution-shift arithmetic (SIMS Sec. 4.3): the auxiliary mix and reading the omega curve."""
from __future__ import annotations

from typing import Mapping, Sequence

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
    """First guess a = p - (q - p)/omega0, clipped to the simplex and renormalised (DESIGN §1)."""
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
