"""Fairness metrics of a generated set's group mix against a target distribution p*.

- fairness discrepancy (L2): ||p_hat - p*||_2 (Choi et al. 2020, "Fair generative modeling via
  weak supervision"; used by CLEAM, FairQueue and later work). Not to be confused with the
  Fréchet distances (FID, FD-digits) we print elsewhere.
- KL(p_hat || p*) in nats. A group with no samples (p_hat_g = 0) contributes 0 (the limit
  0·log 0 = 0): finite, and the output says so. A group the target gives probability 0 while
  the samples contain it makes KL infinite: we report it as undefined (None) with that reason.
- total variation: (1/2)·sum |p_hat - p*|.
Each comes with a seeded percentile bootstrap interval over the images (resampling the group
counts is the same as resampling images, since the metric sees only counts).

Classifier-error-aware fractions (after CLEAM, Teo et al. 2023): with C[i, j] = P(classifier
says group j | true group i) measured on labelled real data, the expected observed mix is
C^T p, so p = solve(C^T, p_hat), clipped to the simplex. Its interval bootstraps both the
generated images and each true group's labelled images (so a small labelled set widens it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError

N_BOOT = 1000
SEED = 0
LEVEL = 0.95
SMALL_SAMPLE = 100  # below this many assigned images the output warns that intervals are rough
KL_EMPTY_NOTE = "groups with no samples contribute 0 to KL (0 log 0 = 0)"


def parse_share(text, what: str) -> float:
    """'0.7' or '70%' -> 0.7; not a number, or outside 0..1, is a UserError that names `what`."""
    text = str(text).strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"{what} must be a number such as 0.7 or 70% (got {text!r})") from None
    if not 0 <= share <= 1:
        raise UserError(f"{what} must be between 0 and 1, or 0% and 100% (got {text!r})")
    return share


def parse_target(spec: str, groups: list[str]) -> dict[str, float]:
    """'5-9=0.7' or 'female=70%;male=30%' -> {group: share}; unnamed groups share the remainder equally."""
    named: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in str(spec).replace(";", ",").split(","))):
        if "=" not in part:
            raise UserError(f"target part {part!r} needs the form GROUP=SHARE, e.g. 5-9=0.7 or 5-9=70%")
        g, v = (s.strip() for s in part.rsplit("=", 1))
        if g not in groups:
            raise UserError(f"target names group {g!r}, which the grouping lacks (its groups: {groups})")
        named[g] = parse_share(v, f"target share of group {g!r}")
    if not named:
        raise UserError(f"empty target {spec!r}; give shares like 5-9=0.7")
    rest = [g for g in groups if g not in named]
    left = 1 - sum(named.values())
    if left < -1e-9 or (not rest and abs(left) > 1e-6):
        raise UserError(f"target shares sum to {sum(named.values()):.4f}; they must sum to 1 "
                        f"(groups left unnamed share the remainder)")
    return {g: named.get(g, max(left, 0.0) / len(rest) if rest else 0.0) for g in groups}


# ----------------------------------------------------------------------------
# Point metrics (pure functions on probability vectors)


def fairness_discrepancy(p_hat, p_star) -> float:
    """||p_hat - p*||_2 (Choi et al. 2020)."""
    return float(np.linalg.norm(np.asarray(p_hat, float) - np.asarray(p_star, float)))


def total_variation(p_hat, p_star) -> float:
    """(1/2) sum |p_hat - p*|."""
    return float(0.5 * np.abs(np.asarray(p_hat, float) - np.asarray(p_star, float)).sum())


def kl_divergence(p_hat, p_star) -> float | None:
    """KL(p_hat || p*) in nats; empty groups contribute 0; None when p*_g = 0 < p_hat_g (infinite)."""
    p, q = np.asarray(p_hat, float), np.asarray(p_star, float)
    if np.any((q <= 0) & (p > 0)):
        return None
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL of (B, G) against q with the same conventions (NaN where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    out = terms.sum(axis=1)
    out[np.any((q <= 0) & (p > 0), axis=1)] = np.nan
    return out


# ----------------------------------------------------------------------------
# With intervals


@dataclass
class Interval:
    value: float | None
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi]}


def _percentiles(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return None, None
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return float(lo), float(hi)


def fairness_report(counts: dict[str, int], target: dict[str, float], n_boot: int = N_BOOT, seed: int = SEED,
                    level: float = LEVEL, confusion: "Confusion | None" = None) -> dict:
    """Discrepancy (L2), KL and TV of the observed mix vs `target`, each with a bootstrap interval;
    plus classifier-error-aware fractions when a measured `confusion` is given. JSON-ready."""
    groups = list(target)
    k = np.array([counts.get(g, 0) for g in groups], dtype=np.int64)
    q = np.array([target[g] for g in groups], dtype=float)
    n = int(k.sum())
    out = {"target": dict(target), "groups": groups, "n": n, "n_boot": n_boot, "seed": seed, "level": level,
           "interval": f"percentile bootstrap over the {n} assigned images ({n_boot} resamples, seed {seed})",
           "warnings": []}
    if n == 0:
        out["warnings"].append("no assigned images: no fairness metrics")
        return out
    p = k / n
    rng = np.random.default_rng(seed)
    boot = rng.multinomial(n, p, size=n_boot) / n
    kl = kl_divergence(p, q)
    metrics = {
        "fairness discrepancy (L2)": (fairness_discrepancy(p, q), np.linalg.norm(boot - q, axis=1)),
        "KL divergence (nats)": (kl, _kl_rows(boot, q)),
        "total variation": (total_variation(p, q), 0.5 * np.abs(boot - q).sum(axis=1)),
    }
    out["fractions"] = dict(zip(groups, map(float, p)))
    out["metrics"] = {name: Interval(v, *_percentiles(s, level)).to_dict() for name, (v, s) in metrics.items()}
    kl_entry = out["metrics"]["KL divergence (nats)"]
    empty = [g for g, c in zip(groups, k) if c == 0]
    kl_entry["note"] = KL_EMPTY_NOTE + (f" (empty here: {empty})" if empty else "")
    if kl is None:
        zero = [g for g, qi, pi in zip(groups, q, p) if qi == 0 and pi > 0]
        kl_entry["ci"] = [None, None]
        kl_entry["undefined"] = (f"the target gives {zero} probability 0 but the samples contain them: "
                                 "KL(p_hat || p*) is infinite; read the L2 discrepancy and TV instead")
    if n < SMALL_SAMPLE:
        out["warnings"].append(f"only {n} assigned images: the intervals are rough and the discrepancies "
                               "are biased upward at this size")
    if confusion is not None:
        out["corrected"] = corrected_fractions(k, confusion, q, n_boot, seed, level)
        out["warnings"] += out["corrected"].pop("warnings")
    return out


# ----------------------------------------------------------------------------
# Classifier-error-aware fractions (after CLEAM, Teo et al. 2023)


@dataclass
class Confusion:
    """Counts of (true group, classifier's group) on labelled real data; excluded predictions dropped."""
    groups: list[str]
    counts: np.ndarray      # (G, G): row = true group, column = assigned group
    source: str

    def rates(self) -> np.ndarray:
        rows = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, rows, out=np.zeros_like(self.counts, dtype=float), where=rows > 0)

    def to_dict(self) -> dict:
        return {"groups": self.groups, "counts": self.counts.tolist(), "source": self.source,
                "per_group_accuracy": dict(zip(self.groups, map(float, np.diag(self.rates()))))}


def confusion_from_labels(true_groups, assigned, groups: list[str], source: str) -> Confusion:
    """Confusion of a classifier from labelled data: true group and assigned group per image;
    images assigned to no group ('uncertain', 'no_face') are left out, as in the fractions."""
    idx = {g: i for i, g in enumerate(groups)}
    c = np.zeros((len(groups), len(groups)), dtype=np.int64)
    for t, a in zip(true_groups, assigned):
        if t in idx and a in idx:
            c[idx[t], idx[a]] += 1
    return Confusion(list(groups), c, source)


def _solve(rates: np.ndarray, p_obs: np.ndarray) -> np.ndarray:
    """p with rates^T p = p_obs, clipped to the simplex (least squares when singular)."""
    p, *_ = np.linalg.lstsq(rates.T, p_obs, rcond=None)
    p = np.clip(p, 0, None)
    s = p.sum()
    return p / s if s > 0 else np.full_like(p, 1 / len(p))


def corrected_fractions(k: np.ndarray, confusion: Confusion, q: np.ndarray, n_boot: int = N_BOOT,
                        seed: int = SEED, level: float = LEVEL) -> dict:
    """Fractions corrected for the classifier's measured confusion, with a bootstrap interval."""
    groups = confusion.groups
    k = np.asarray(k)
    n, rows = int(k.sum()), confusion.counts.sum(axis=1)
    warnings = []
    if np.any(rows == 0):
        missing = [g for g, r in zip(groups, rows) if r == 0]
        return {"warnings": [f"no labelled real images of {missing}: cannot correct the fractions"],
                "undefined": f"the labelled set has no images of {missing}"}
    rates = confusion.rates()
    cond = float(np.linalg.cond(rates))
    if cond > 20:
        warnings.append(f"the classifier confuses the groups heavily (condition number {cond:.0f}): "
                        "the corrected fractions are unstable")
    if rows.min() < 50:
        warnings.append(f"only {int(rows.min())} labelled real images in the smallest group: the "
                        "correction's interval is rough")
    point = _solve(rates, k / n)
    rng = np.random.default_rng(seed + 1)
    gen = rng.multinomial(n, k / n, size=n_boot) / n
    conf = np.stack([rng.multinomial(int(r), rates[i], size=n_boot) / r for i, r in enumerate(rows)], axis=1)
    boot = np.stack([_solve(conf[b], gen[b]) for b in range(n_boot)])
    fd = np.linalg.norm(boot - q, axis=1)
    return {"method": "p = solve(C^T, p_hat) clipped to the simplex, C[i, j] = P(assigned j | true i) "
                      "(after CLEAM, Teo et al. 2023)",
            "interval": f"percentile bootstrap over generated and labelled images ({n_boot} resamples, seed {seed})",
            "fractions": {g: Interval(float(point[i]), *_percentiles(boot[:, i], level)).to_dict()
                          for i, g in enumerate(groups)},
            "fairness discrepancy (L2)": Interval(fairness_discrepancy(point, q), *_percentiles(fd, level)).to_dict(),
            "confusion": confusion.to_dict(), "condition_number": cond, "warnings": warnings}


def format_report(r: dict) -> str:
    """Plain-text lines of a fairness report (for the CLI)."""
    def iv(d):
        if d["value"] is None:
            return "undefined"
        lo, hi = d["ci"]
        return f"{d['value']:.4f}" + (f"  ({100 * r['level']:.0f}% CI {lo:.4f} - {hi:.4f})" if lo is not None else "")
    tgt = ", ".join(f"{g} {v:.1%}" for g, v in r["target"].items())
    lines = [f"fairness vs target ({tgt}); n = {r['n']}; {r['interval']}"]
    for name, d in r.get("metrics", {}).items():
        lines.append(f"  {name:>27}: {iv(d)}")
        if "undefined" in d:
            lines.append(f"  {'':>27}  {d['undefined']}")
        elif "note" in d:
            lines.append(f"  {'':>27}  ({d['note']})")
    c = r.get("corrected")
    if c and "fractions" in c:
        acc = ", ".join(f"{g} {a:.1%}" for g, a in c["confusion"]["per_group_accuracy"].items())
        lines.append(f"  classifier-error-aware fractions (per-group accuracy {acc}; "
                     f"{c['confusion']['source']}):")
        for g, d in c["fractions"].items():
            lines.append(f"  {g:>27}: {iv(d)}")
        lines.append(f"  {'corrected discrepancy (L2)':>27}: {iv(c['fairness discrepancy (L2)'])}")
    elif c:
        lines.append(f"  corrected fractions: undefined ({c['undefined']})")
    lines += [f"  warning: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)


def digits_heldout_confusion(classifier, grouping, threshold: float = 0.5) -> Confusion:
    """Confusion of the digits classifier on its fixed held-out split (360 real digits, never trained
    on), at group level; computed deterministically in about a second."""
    from .attributes.digits import digits_split
    _, _, x_te, y_te = digits_split()
    images = np.round(x_te[:, 0] * 255).astype(np.uint8)[..., None]
    assigned, _ = grouping.assign(classifier.predict_proba(images), classifier.classes, threshold)
    class_to_group = {c: g for g, members in grouping.groups.items() for c in members}
    true = [class_to_group.get(str(y)) for y in y_te]
    return confusion_from_labels(true, assigned, grouping.group_names,
                                 f"held-out split of sklearn digits, {len(y_te)} real images")


def confusion_from_labelled_set(result, true_labels: dict[str, str], source: str) -> Confusion:
    """Confusion from a labelled real set: `result` is its LabelResult, `true_labels` name -> true
    class or group (e.g. a CSV name,label you filled in)."""
    grouping = result.grouping
    class_to_group = {c: g for g, members in grouping.groups.items() for c in members}
    true, assigned = [], []
    for name, a in zip(result.names, result.assigned):
        label = true_labels.get(name)
        if label is None:
            continue
        g = label if label in grouping.groups else class_to_group.get(label)
        if g is None:
            raise UserError(f"label {label!r} of {name} is neither a group {grouping.group_names} nor a class "
                            f"of grouping {grouping.name!r}")
        true.append(g)
        assigned.append(a)
    if not true:
        raise UserError(f"none of the labelled names are images of {source}; the CSV's names must be the "
                        "image names that `label` writes")
    return confusion_from_labels(true, assigned, grouping.group_names, f"{source}, {len(true)} labelled images")


def card_fairness(measured: dict, target: dict | None, n_boot: int = N_BOOT, seed: int = SEED) -> dict | None:
    """Fairness vs the target for a model card: one report per measurement setting that stored group
    counts ({settings: {"counts": {group: k}}}); None without a target. Targets given in percent are
    rescaled; a target naming other groups than the measurement is skipped with the reason."""
    if not target:
        return None
    t = {str(g): float(v) for g, v in target.items()}
    if sum(t.values()) > 1.5:  # stored as percentages
        t = {g: v / 100 for g, v in t.items()}
    out = {}
    for key, entry in measured.items():
        counts = entry.get("counts")
        if not counts:
            continue
        if set(counts) != set(t):
            out[key] = {"skipped": f"measured groups {sorted(counts)} differ from the target's {sorted(t)}"}
            continue
        out[key] = fairness_report({g: int(k) for g, k in counts.items()}, t, n_boot=n_boot, seed=seed)
    return out or None
