"""Groupings: named groups of a classifier's classes, group assignment and group fractions.

A grouping maps class names to groups (FairFace race7 -> any partition; digits 0-4 vs 5-9).
Group probability = sum of its classes' probabilities. An image is assigned to its most
probable group when that probability reaches `threshold` (default 0.5), else 'uncertain';
an image whose 'no_face' column (see FaceGate) is >= 0.5 is labelled 'no_face'.
Group fractions count assigned images only: 'uncertain' and 'no_face' are excluded from
numerator and denominator (their counts are reported beside the fractions).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .base import NO_FACE

UNCERTAIN = "uncertain"
EXCLUDED_LABELS = (UNCERTAIN, NO_FACE)


@dataclass
class Grouping:
    """Named groups of class names; classes left out of every group count for no group."""

    name: str
    groups: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        if not self.groups:
            raise UserError(f"grouping {self.name!r} has no groups")
        seen: dict[str, str] = {}
        for g, members in self.groups.items():
            if g in EXCLUDED_LABELS:
                raise UserError(f"{g!r} is reserved and cannot name a group")
            if not members:
                raise UserError(f"group {g!r} of grouping {self.name!r} has no classes")
            for c in members:
                if c in seen:
                    raise UserError(f"class {c!r} is in groups {seen[c]!r} and {g!r} of {self.name!r}; "
                                    "a class may belong to one group only")
                seen[c] = g

    @property
    def group_names(self) -> list[str]:
        """Group names in definition order."""
        return list(self.groups)

    def check_classes(self, classes) -> None:
        """Raise UserError when the grouping names a class the classifier lacks."""
        missing = [c for m in self.groups.values() for c in m if c not in classes]
        if missing:
            raise UserError(f"grouping {self.name!r} names classes {missing} that the classifier "
                            f"does not have (its classes: {list(classes)})")

    def group_probs(self, probs, classes) -> np.ndarray:
        """(N, K) class probabilities -> (N, G) group probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        classes = list(classes)
        self.check_classes(classes)
        if probs.ndim != 2 or probs.shape[1] != len(classes):
            raise UserError(f"probabilities of shape {probs.shape} do not match {len(classes)} classes")
        cols = [[classes.index(c) for c in m] for m in self.groups.values()]
        # Column by column, not .sum(axis=1): numpy sums a single row in another order than a batch,
        # so one sample's group probability would depend on how many were grouped with it.
        return np.stack([sum((probs[:, i] for i in c), np.zeros(len(probs))) for c in cols], axis=1)

    def assign(self, probs, classes, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(group name per image, 'uncertain' below threshold / 'no_face'; (N, G) group probs)."""
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {threshold}")
        gp = self.group_probs(probs, classes)
        names = np.asarray(self.group_names, dtype=object)
        labels = names[gp.argmax(axis=1)] if len(gp) else np.zeros(0, dtype=object)
        labels = np.where(gp.max(axis=1, initial=0.0) >= threshold, labels, UNCERTAIN).astype(object)
        if NO_FACE in classes:
            no_face = np.asarray(probs)[:, list(classes).index(NO_FACE)] >= 0.5
            labels[no_face] = NO_FACE
        return labels, gp

    @classmethod
    def identity(cls, classes, name: str = "classes") -> "Grouping":
        """One group per class (the 'all classes' grouping)."""
        return cls(name, {c: [c] for c in classes if c != NO_FACE})

    @classmethod
    def parse(cls, spec: str, name: str | None = None) -> "Grouping":
        """'A=c1+c2;B=c3' -> Grouping with groups A = [c1, c2], B = [c3]."""
        groups: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            if "=" not in part:
                raise UserError(f"grouping spec part {part!r} needs the form GROUP=class1+class2")
            g, members = part.split("=", 1)
            groups[g.strip()] = [m.strip() for m in members.split("+") if m.strip()]
        return cls(name or spec, groups)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"name": self.name, "groups": {k: list(v) for k, v in self.groups.items()}}


# ----------------------------------------------------------------------------
# Fractions


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def group_fractions(assigned, grouping: Grouping, z: float = 1.96) -> dict[str, tuple[float, float, float]]:
    """group -> (fraction, wilson_low, wilson_high) among assigned images ('uncertain'/'no_face' excluded)."""
    assigned = np.asarray(assigned, dtype=object)
    counts = {g: int((assigned == g).sum()) for g in grouping.group_names}
    n = sum(counts.values())
    return {g: (k / n if n else float("nan"), *wilson_interval(k, n, z)) for g, k in counts.items()}


def label_counts(assigned, grouping: Grouping) -> dict[str, int]:
    """Counts per group plus 'uncertain' and 'no_face'."""
    assigned = np.asarray(assigned, dtype=object)
    return {g: int((assigned == g).sum()) for g in [*grouping.group_names, *EXCLUDED_LABELS]}


# ----------------------------------------------------------------------------
# Built-in groupings, by classifier name

DIGITS = [str(d) for d in range(10)]
FAIRFACE_RACE7 = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
FAIRFACE_GENDER = ["Male", "Female"]
AGE_BINS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
DEEPFACE_GENDER = ["Woman", "Man"]
DEEPFACE_RACE = ["asian", "indian", "black", "white", "middle eastern", "latino hispanic"]


def _digits() -> list[Grouping]:
    out = [Grouping("digits 0-4 vs 5-9", {"0-4": DIGITS[:5], "5-9": DIGITS[5:]})]
    out += [Grouping(f"digit={k} vs rest", {str(k): [str(k)], "rest": [d for d in DIGITS if d != str(k)]})
            for k in range(10)]
    out.append(Grouping.identity(DIGITS, "all ten digits"))
    return out


def _race7() -> list[Grouping]:
    asian = ["East Asian", "Southeast Asian"]
    return [
        Grouping.identity(FAIRFACE_RACE7, "race7"),
        Grouping("race6 (Asian merged)", {"White": ["White"], "Black": ["Black"], "Latino_Hispanic": ["Latino_Hispanic"],
                                          "Asian": asian, "Indian": ["Indian"], "Middle Eastern": ["Middle Eastern"]}),
        Grouping("White vs non-White", {"White": ["White"], "non-White": [c for c in FAIRFACE_RACE7 if c != "White"]}),
        Grouping("Black vs rest", {"Black": ["Black"], "rest": [c for c in FAIRFACE_RACE7 if c != "Black"]}),
        Grouping("Asian vs rest", {"Asian": asian, "rest": [c for c in FAIRFACE_RACE7 if c not in asian]}),
    ]


def _age(bins: list[str]) -> list[Grouping]:
    return [
        Grouping.identity(bins, "age bins"),
        Grouping("under 20 / 20-39 / 40-59 / 60+", {"<20": bins[:3], "20-39": bins[3:5],
                                                    "40-59": bins[5:7], "60+": bins[7:]}),
        Grouping("under 40 vs 40+", {"<40": bins[:5], "40+": bins[5:]}),
    ]


def _gender(female: str, male: str) -> list[Grouping]:
    # Same group names whatever the classifier's class names, so results compare across plug-ins.
    return [Grouping("gender", {"female": [female], "male": [male]})]


_BUILTIN = {
    "digits": _digits,
    "fairface-race7": _race7,
    "fairface-gender": lambda: _gender("Female", "Male"),
    "fairface-age": lambda: _age(AGE_BINS),
    "deepface-gender": lambda: _gender("Woman", "Man"),
    "deepface-race": lambda: [Grouping.identity(DEEPFACE_RACE, "race6"),
                              Grouping("white vs non-white", {"white": ["white"],
                                                              "non-white": [c for c in DEEPFACE_RACE if c != "white"]})],
    "deepface-age": lambda: _age(AGE_BINS),
}


def builtin_groupings(classifier: str) -> dict[str, Grouping]:
    """Built-in groupings for a classifier name ({} for classifiers with user-defined classes)."""
    return {g.name: g for g in _BUILTIN.get(classifier, lambda: [])()}


def resolve_grouping(spec: str | None, classifier: str, classes) -> Grouping:
    """A built-in name, 'A=c1+c2;B=c3', or None (one group per class) -> Grouping checked against classes."""
    if spec is None or spec in ("classes", "all classes"):
        g = Grouping.identity(classes)
    elif spec in builtin_groupings(classifier):
        g = builtin_groupings(classifier)[spec]
    elif "=" in spec:
        g = Grouping.parse(spec)
    else:
        known = list(builtin_groupings(classifier)) + ["classes"]
        raise UserError(f"unknown grouping {spec!r} for classifier {classifier!r}; built-ins: {known}, "
                        "or define one as 'GROUP=class1+class2;OTHER=class3'")
    g.check_classes(classes)
    return g
