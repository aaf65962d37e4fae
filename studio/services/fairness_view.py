"""Fairness numbers of the Target and Guide tabs: fairness discrepancy (L2), KL and TV of a group mix
against the target, each with a bootstrap interval (pipelines.fairness), from stored group counts.

Named so that nobody takes them for the Fréchet distances (FD-digits, FID) shown beside them.
Beside the raw fractions: classifier-error-aware fractions (after CLEAM) when the grouping's classifier
has a measured confusion on labelled real data — the digits classifier from its held-out split; other
classifiers have none in the studio, and the table says so.
"""
from __future__ import annotations

from sqlalchemy import select

import json
import threading

from pipelines.fairness import fairness_report

from ..db import Database
from ..models import Metric
from . import pool

L2 = "fairness discrepancy (L2)"
_CONFUSION: dict = {}
_REPORTS: dict = {}
_LOCK = threading.Lock()
_MAX_REPORTS = 512


def classifier_confusion(db: Database, grouping: dict, device: str = "cpu"):
    """(Confusion or None, how it was measured or why there is none) of the grouping's classifier at group level."""
    name = grouping["classifier"]
    if name != "digits":
        return None, (f"{name} has no measured confusion on labelled real data in the studio, so its fractions are "
                      "not corrected for its errors (the command line's `label --target … --confusion-set SRC "
                      "--confusion-labels CSV` measures one from a labelled set)")
    from pipelines.fairness import digits_heldout_confusion

    from .attributes import engine_grouping, load_classifier
    clf = load_classifier(db, name, device)
    key = (id(clf), json.dumps(grouping["groups"], sort_keys=True), float(grouping["threshold"]))
    with _LOCK:
        hit = _CONFUSION.get(key)
    if hit is None:  # about a second: 360 held-out real digits through the classifier
        hit = digits_heldout_confusion(clf, engine_grouping(grouping), grouping["threshold"])
        with _LOCK:
            _CONFUSION[key] = hit
    return hit, hit.source


def report(counts: dict, target: dict, confusion=None, note: str | None = None) -> dict:
    """fairness_report, memoised on (counts, target, confusion): the Guide redraws it at every ω move."""
    key = (tuple(sorted(counts.items())), tuple(target.items()),
           None if confusion is None else (tuple(confusion.groups), confusion.counts.tobytes(), confusion.source))
    with _LOCK:
        hit = _REPORTS.get(key)
    if hit is None:
        hit = fairness_report(counts, target, confusion=confusion)
        hit["counts"] = {g: int(counts.get(g, 0)) for g in target}
        if confusion is None and note:
            hit["corrected_note"] = note
        with _LOCK:
            if len(_REPORTS) >= _MAX_REPORTS:
                _REPORTS.pop(next(iter(_REPORTS)))
            _REPORTS[key] = hit
    return dict(hit)  # callers add keys to their copy, never to the memo


def _corrector(db: Database, grouping: dict):
    """(confusion, note) for a grouping; a classifier that cannot be loaded gives no correction, and says why."""
    from pipelines.errors import UserError
    try:
        return classifier_confusion(db, grouping)
    except UserError as e:
        return None, f"no correction: the classifier's confusion could not be measured ({e})"


def card_report(db: Database, measured: dict, target: dict) -> dict | None:
    """Fairness vs the target (with the corrected fractions when measurable) of one measurement in a model
    card ({"counts", "grouping_id"}); None when its groups are not the target's."""
    from .attributes import get_grouping
    t = {str(g): float(v) for g, v in target.items()}
    if sum(t.values()) > 1.5:  # stored as percentages
        t = {g: v / 100 for g, v in t.items()}
    counts = {g: int(k) for g, k in (measured.get("counts") or {}).items() if g in t}
    if set(counts) != set(t) or measured.get("grouping_id") is None:
        return None
    return report(counts, t, *_corrector(db, get_grouping(db, measured["grouping_id"])))


def base_vs_target(db: Database, model_id: int, grouping: dict, target: dict[str, float]) -> dict:
    """The labelled pool's mix (the base model) against the target (shares summing to 1)."""
    bf = pool.base_fractions(db, model_id, grouping)
    counts = {g: v["count"] for g, v in bf["groups"].items()}
    return report(counts, {g: float(target[g]) for g in grouping["groups"]}, *_corrector(db, grouping)) | {
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
    confusion, note = _corrector(db, grouping)
    return {w: report({g: counts.get(g, 0) for g in t}, t, confusion, note)
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
            "| metric | value [interval] | note |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
            + fractions_md(r) + warn)


def fractions_md(r: dict) -> str:
    """Raw fractions (Wilson 95%) beside the classifier-error-aware ones (bootstrap 95%), or why not corrected."""
    from pipelines.attributes.groupings import wilson_interval
    counts, n, c = r.get("counts") or {}, r["n"], r.get("corrected") or {}
    corr = c.get("fractions") or {}
    head = "| group | fraction (raw; Wilson 95%) | corrected for classifier errors (95% bootstrap) |\n|---|---|---|\n"
    rows = []
    for g in r["target"]:
        raw = r["fractions"][g]
        lo, hi = wilson_interval(int(counts.get(g, round(raw * n))), n)
        fixed = (f"{100 * corr[g]['value']:.1f}% [{100 * corr[g]['ci'][0]:.1f}–{100 * corr[g]['ci'][1]:.1f}]"
                 if g in corr else "—")
        rows.append(f"| {g} | {100 * raw:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}] | {fixed} |")
    if corr:
        acc = ", ".join(f"{g} {100 * a:.1f}%" for g, a in c["confusion"]["per_group_accuracy"].items())
        how = (f"Corrected as p = solve(Cᵀ, p̂) with the classifier's confusion C measured on {c['confusion']['source']} "
               f"(per-group accuracy {acc}); {c['interval']}.")
    elif "undefined" in c:
        how = f"Not corrected: {c['undefined']}."
    else:
        how = f"Not corrected: {r.get('corrected_note') or 'no measured confusion for this classifier'}."
    return head + "\n".join(rows) + "\n\n" + how
