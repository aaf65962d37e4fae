"""Fairness numbers of the Target and Guide tabs: fairness discrepancy (L2), KL and TV of a group mix
against the target, each with a bootstrap interval (pipelines.fairness), from stored group counts.

Named so that nobody takes them for the Fréchet distances (FD-digits, FID) shown beside them.
"""
from __future__ import annotations

from sqlalchemy import select

from pipelines.fairness import fairness_report

from ..db import Database
from ..models import Metric
from . import pool

L2 = "fairness discrepancy (L2)"


def base_vs_target(db: Database, model_id: int, grouping: dict, target: dict[str, float]) -> dict:
    """The labelled pool's mix (the base model) against the target (shares summing to 1)."""
    bf = pool.base_fractions(db, model_id, grouping)
    counts = {g: v["count"] for g, v in bf["groups"].items()}
    return fairness_report(counts, {g: float(target[g]) for g in grouping["groups"]}) | {
        "what": f"labelled pool of the base model ({bf['assigned']} confidently labelled samples)"}


def stored_counts(db: Database, checkpoint_id: int, grouping_id: int, settings_key: str) -> dict[float, dict]:
    """{ω: {group: count}} from the stored fraction measurements (a fraction row's n is its group's count;
    a later measurement of the same point replaces an earlier one, as in the curves)."""
    with db.session(read_only=True) as s:
        rows = s.execute(select(Metric.omega, Metric.group_name, Metric.n).where(
            Metric.checkpoint_id == int(checkpoint_id), Metric.grouping_id == int(grouping_id),
            Metric.settings_key == settings_key, Metric.kind == "fraction").order_by(Metric.omega, Metric.id)).all()
    out: dict[float, dict] = {}
    for w, g, n in rows:
        out.setdefault(float(w), {})[g] = int(n)
    return out


def discrepancy_curve(db: Database, checkpoint_id: int, grouping: dict, settings_key: str,
                      target: dict[str, float]) -> dict[float, dict]:
    """{ω: fairness report vs the target} for every measured ω of this checkpoint and settings."""
    t = {g: float(target[g]) for g in grouping["groups"]}
    return {w: fairness_report({g: counts.get(g, 0) for g in t}, t)
            for w, counts in stored_counts(db, checkpoint_id, grouping["id"], settings_key).items()}


def report_md(r: dict, title: str) -> str:
    """A fairness report as a Markdown table with how it was measured and its warnings."""
    if "metrics" not in r:
        return f"**{title}:** " + "; ".join(r.get("warnings", ["nothing measured"]))

    def iv(d):
        if d["value"] is None:
            return "undefined"
        lo, hi = d["ci"]
        return f"{d['value']:.4f} [{lo:.4f}–{hi:.4f}]" if lo is not None else f"{d['value']:.4f}"
    rows = []
    for name, d in r["metrics"].items():
        note = d.get("undefined") or d.get("note") or ""
        rows.append(f"| {name} | {iv(d)} | {note} |")
    tgt = ", ".join(f"{g} {100 * v:.1f}%" for g, v in r["target"].items())
    warn = "".join(f"\n\n⚠ {w}" for w in r["warnings"])
    return (f"**{title}** vs target ({tgt}); n = {r['n']}; {100 * r['level']:.0f}% interval: {r['interval']}\n\n"
            "| metric | value [interval] | note |\n|---|---|---|\n" + "\n".join(rows) + warn)
