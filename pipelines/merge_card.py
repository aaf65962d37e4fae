"""Model card of a weight-space merge, carrying the numbers of what was exported.

The merged network θ = (1+ω)·θ_base − ω·θ_aux is not score-space SIMS at the same ω (a network is
not linear in its weights), so nothing measured on the two-network bundle describes it. A card
either holds the merged model's own measurement (group fractions with Wilson intervals, n, seeds,
sampler; per-group Fréchet distance and fairness vs a target when asked) or says plainly that the
model was not measured.
"""
from __future__ import annotations

import json

import numpy as np

from .fairness import SMALL_SAMPLE, fairness_report, format_report

NOT_MEASURED = ("not measured: the merge's ω scale differs from score-space SIMS, so no measurement of the "
                "two-network bundle describes this model; measure it as a model (e.g. `export merged "
                "--measure-seeds 0-255 --classifier NAME`, or the studio Guide's weight-space curves)")


def seeds_text(seeds) -> str:
    """'0-255' for a contiguous range, else the first and last seed and the count."""
    s = [int(x) for x in seeds]
    if s == list(range(s[0], s[0] + len(s))):
        return f"{s[0]}-{s[-1]}"
    return f"{len(s)} seeds from {min(s)} to {max(s)}"


def measure_images(images: np.ndarray, clf, grouping, threshold: float, how: dict, ref=None, target=None,
                   confusion=None, n_boot: int = 1000, boot_seed: int = 0) -> dict:
    """Fractions (Wilson 95%) of the images' groups, per-group FD against `ref` (ReferenceStats in the
    classifier's feature space) and fairness vs `target`; `how` (seeds, steps, model) is recorded as given."""
    from .attributes.groupings import group_fractions, label_counts
    assigned, _ = grouping.assign(clf.predict_proba(images), clf.classes, threshold)
    counts = label_counts(assigned, grouping)
    n_assigned = sum(counts[g] for g in grouping.group_names)
    out = {**how, "n": int(len(images)), "assigned": int(n_assigned), "classifier": clf.name,
           "grouping": grouping.name, "threshold": float(threshold), "counts": counts,
           "fractions": {g: {"value": f, "ci": [lo, hi]} for g, (f, lo, hi) in group_fractions(assigned, grouping).items()},
           "interval": "Wilson 95% over the images assigned to a group", "warnings": []}
    if n_assigned < SMALL_SAMPLE:
        out["warnings"].append(f"only {n_assigned} images assigned to a group: the fractions' intervals are wide")
    if ref is not None:
        from .metrics.fid import compute_features, extractor_for, fd_report
        extractor = extractor_for(clf)
        rep = fd_report(compute_features(images, extractor, None), ref, assigned, feature=extractor.feature_id)
        out["fd"] = {k: rep.get(k) for k in ("metric", "overall", "per_group", "gen_counts", "reweighted")}
        out["warnings"] += rep["warnings"]
    if target:
        out["fairness_vs_target"] = fairness_report({g: counts[g] for g in target}, target, n_boot=n_boot,
                                                    seed=boot_seed, confusion=confusion)
        if confusion is None:
            out["fairness_vs_target"]["corrected_note"] = (
                f"no classifier-error correction: {clf.name} has no measured confusion on labelled real data here")
    return out


def merged_card(merge: dict, measured: dict | None, extra: dict | None = None) -> dict:
    """The card's fields: the merge (ω, rule, both parents' path and sha256) and the measurement or why none."""
    card = {"title": "SIMS weight-space merge (one network, the base's sampling cost)", "omega": merge["omega"],
            "rule": merge["rule"],
            "parents": {r: {"path": merge[r].get("path"), "sha256": merge[r].get("sha256")} for r in ("base", "aux")},
            "measured": measured, **(extra or {})}
    if not measured:
        card["measured_note"] = NOT_MEASURED
    return card


def _fraction_lines(m: dict) -> list[str]:
    lines = [f"- measured on this merged model: n = {m['n']} samples (seeds {m.get('seeds')}, "
             f"{m.get('steps')} Heun steps), {m['assigned']} assigned to a group by {m['classifier']} / "
             f"{m['grouping']}; {m['interval']}"]
    for g, f in m["fractions"].items():
        lo, hi = f["ci"]
        lines.append(f"  - {g}: {100 * f['value']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%, "
                     f"{m['counts'].get(g, '?')} images)")
    fd = m.get("fd")
    if fd and fd.get("per_group"):
        lines.append(f"  - {fd['metric']} per group: " + ", ".join(
            f"{g} {v:.3g} (n = {fd['gen_counts'].get(g)})" for g, v in fd["per_group"].items())
            + (f"; overall {fd['overall']:.3g}" if fd.get("overall") is not None else ""))
    return lines


def render_card(card: dict) -> str:
    """Markdown of a merged model's card."""
    p = card["parents"]
    lines = [f"# {card['title']}", "", f"- ω: {card['omega']}", f"- rule: θ = {card['rule']}",
             f"- base: {p['base']['path']} (sha256 {p['base']['sha256']})",
             f"- auxiliary / guide: {p['aux']['path']} (sha256 {p['aux']['sha256']})", ""]
    measured = card.get("measured")
    entries = ([measured] if measured and "fractions" in measured else list((measured or {}).values()))
    if not entries:
        lines.append(f"- {card['measured_note']}")
    for m in entries:
        lines += _fraction_lines(m)
        if m.get("fairness_vs_target"):
            lines += ["", "```", format_report(m["fairness_vs_target"]), "```"]
            if m["fairness_vs_target"].get("corrected_note"):
                lines.append(f"- {m['fairness_vs_target']['corrected_note']}")
        lines += [f"- warning: {w}" for w in m.get("warnings", [])]
        lines.append("")
    rest = {k: v for k, v in card.items() if k not in ("title", "omega", "rule", "parents", "measured", "measured_note")}
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in rest.items()]
    return "\n".join(lines).rstrip() + "\n"
