"""Assemble a synthetic set S with a chosen group mix from a labelled pool (SIMS Sec. 4.3).

The pool is a list of group names (one per sample, 'uncertain' allowed). When a group runs
short, more samples are generated and labelled through a callback; a group too rare to fill
within `max_pool` samples is refused up front with a message that says what to change.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from .errors import UserError

UNCERTAIN = "uncertain"


def group_indices(pool_groups: Sequence[str]) -> dict[str, list[int]]:
    """Indices of the pool per group, in pool order."""
    out: dict[str, list[int]] = {}
    for i, g in enumerate(pool_groups):
        out.setdefault(g, []).append(i)
    return out


def pool_needed(pool_groups: Sequence[str], counts: Mapping[str, int]) -> dict[str, float]:
    """Per short group: estimated pool size at which it reaches its count (inf when never seen).

    The estimate assumes new samples fall into groups at the pool's current rates.
    """
    n = len(pool_groups)
    have = {g: len(v) for g, v in group_indices(pool_groups).items()}
    out: dict[str, float] = {}
    for g, c in counts.items():
        short = c - have.get(g, 0)
        if short <= 0:
            continue
        rate = have.get(g, 0) / n if n else 0.0
        out[g] = math.inf if rate == 0 else n + math.ceil(short / rate)
    return out


def extra_samples_needed(pool_groups: Sequence[str], counts: Mapping[str, int]) -> int:
    """Estimated number of extra samples to generate so every group reaches its count."""
    need = pool_needed(pool_groups, counts)
    if not need:
        return 0
    worst = max(need.values())
    return math.inf if worst == math.inf else int(worst) - len(pool_groups)


def check_feasible(pool_groups: Sequence[str], counts: Mapping[str, int], max_pool: int) -> int:
    """Extra samples needed; UserError if a group is absent or would need more than `max_pool` in all.

    The message names the group that drives the estimate (the one needing the largest pool), since
    lowering that group's share is what makes the set feasible.
    """
    need = pool_needed(pool_groups, counts)
    if not need:
        return 0
    rare = max(need, key=lambda g: (need[g], g))
    total = need[rare]
    if total == math.inf or total > max_pool:
        have = {g: len(v) for g, v in group_indices(pool_groups).items()}
        n = len(pool_groups)
        share = have.get(rare, 0) / max(n, 1)
        raise UserError(
            f"Group '{rare}' is too rare to fill: {have.get(rare, 0)} of {n} pool samples "
            f"({100 * share:.1f}%) and the set needs {counts[rare]}. Filling it would take "
            f"{'an unbounded number of' if total == math.inf else f'about {int(total)}'} pool samples "
            f"(limit {max_pool}). Lower n_s or the share of '{rare}', or raise the pool limit.")
    return int(total) - len(pool_groups)


def check_counts(pool_groups: Sequence[str], counts: Mapping[str, int], can_grow: bool,
                 grow_hint: str = "generate more when a group runs short") -> None:
    """Refuse a plan up front with the studio's messages: an empty group, or a short one that cannot grow."""
    have = {g: len(v) for g, v in group_indices(pool_groups).items()}
    for g, c in counts.items():
        if c > 0 and have.get(g, 0) == 0:
            raise UserError(f"Group '{g}' is empty: none of the {len(pool_groups)} pool samples is labelled '{g}', "
                            f"yet the mix asks for {c}. Generate and label more samples, or set its share to 0%.")
    short = {g: (c, have.get(g, 0)) for g, c in counts.items() if c > have.get(g, 0)}
    if short and not can_grow:
        detail = "; ".join(f"'{g}' needs {c}, the pool has {h}" for g, (c, h) in short.items())
        raise UserError(f"n_s = {sum(counts.values())} is more than the labelled pool can supply ({detail}). "
                        f"Lower n_s, or {grow_hint}.")


def choose_members(pool_groups: Sequence[str], counts: Mapping[str, int]) -> dict[str, list[int]]:
    """The first `counts[g]` pool indices of each group; UserError if any group is short."""
    by_group = group_indices(pool_groups)
    short = {g: (c, len(by_group.get(g, []))) for g, c in counts.items() if len(by_group.get(g, [])) < c}
    if short:
        detail = ", ".join(f"'{g}' needs {c}, pool has {h}" for g, (c, h) in short.items())
        raise UserError(f"The pool cannot supply this set ({detail}). Generate a larger pool or lower n_s.")
    return {g: by_group[g][:c] for g, c in counts.items()}


def fill_set(pool_groups: list[str], counts: Mapping[str, int], grow: Callable[[int], list[str]] | None,
             max_pool: int, chunk: int = 256, progress: Callable[[dict], None] | None = None
             ) -> tuple[dict[str, list[int]], list[str]]:
    """Grow the pool with `grow(n) -> new groups` until `counts` can be met; returns (members, pool)."""
    if UNCERTAIN in counts:
        raise UserError("'uncertain' samples cannot make up a group of S; label or relabel them first.")
    pool = list(pool_groups)
    while extra_samples_needed(pool, counts) > 0:
        if grow is None:
            return choose_members(pool, counts), pool  # raises with the shortfall
        extra = check_feasible(pool, counts, max_pool) if pool else chunk
        n = int(min(max(extra, 1), chunk, max_pool - len(pool)))
        if n <= 0:
            check_feasible(pool, counts, len(pool))  # raises: limit reached
        pool.extend(grow(n))
        if progress is not None:
            have = {g: len(v) for g, v in group_indices(pool).items()}
            progress({"pool": len(pool), "have": {g: min(have.get(g, 0), c) for g, c in counts.items()},
                      "counts": dict(counts)})
    return choose_members(pool, counts), pool
