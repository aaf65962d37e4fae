"""Target distribution: k shares that always sum to 100%, and the suggested auxiliary mix a = p - (q - p)/omega0."""
from __future__ import annotations

from typing import Sequence

from pipelines.errors import UserError

TOLERANCE = 0.05  # percentage points of rounding slack


def normalise(values: Sequence[float], changed: int | None = None, decimals: int = 1) -> list[float]:
    """Rescale percentages to sum to 100, keeping the just-changed one fixed (others scale proportionally)."""
    vals = [min(max(float(v or 0.0), 0.0), 100.0) for v in values]
    if not vals:
        return []
    if len(vals) == 1:
        return [100.0]
    if changed is None:
        total = sum(vals)
        out = [v * 100.0 / total for v in vals] if total > 0 else [100.0 / len(vals)] * len(vals)
    else:
        keep = vals[changed]
        others = [i for i in range(len(vals)) if i != changed]
        rest = sum(vals[i] for i in others)
        out = list(vals)
        for i in others:
            out[i] = (vals[i] * (100.0 - keep) / rest) if rest > 0 else (100.0 - keep) / len(others)
    out = [round(v, decimals) for v in out]
    # Put the rounding residue on the largest share that the user did not just set.
    drift = round(100.0 - sum(out), decimals)
    if drift:
        idx = max((i for i in range(len(out)) if i != changed), key=lambda i: out[i])
        out[idx] = round(out[idx] + drift, decimals)
    return out


def check_shares(groups: Sequence[str], values: Sequence[float], what: str = "Target") -> dict[str, float]:
    """{group: fraction} from percentages, refusing shares that do not sum to 100%."""
    if len(groups) != len(values):
        raise UserError(f"{what}: {len(values)} shares for {len(groups)} groups.")
    vals = [float(v or 0.0) for v in values]
    if any(v < 0 for v in vals):
        raise UserError(f"{what} shares cannot be negative.")
    total = sum(vals)
    if abs(total - 100.0) > TOLERANCE:
        raise UserError(f"{what} shares sum to {total:.1f}%, not 100%. Move a slider or press "
                        "'Normalise to 100%' to rescale them.")
    return {g: v / 100.0 for g, v in zip(groups, vals)}


def suggest_mix(base: dict[str, float], target: dict[str, float], omega0: float) -> dict[str, float]:
    """Auxiliary mix a = p - (q - p)/omega0 on the simplex (engine formula), as fractions."""
    from pipelines.shift import suggest_aux_mix
    empty = [g for g, v in base.items() if v <= 0 and target.get(g, 0) > 0]
    if empty:
        raise UserError(f"Group(s) {', '.join(repr(g) for g in empty)} have no samples in the labelled pool "
                        "(base fraction 0%), so the pool cannot show how to reach them. Generate a larger pool, "
                        "or set their target to 0%.")
    return suggest_aux_mix(base, target, omega0=float(omega0))


def as_percent(d: dict[str, float], groups: Sequence[str]) -> list[float]:
    """Fractions -> percentages in group order, normalised to sum to exactly 100."""
    return normalise([100.0 * d.get(g, 0.0) for g in groups])
