"""Labelling an image set with a classifier and a grouping; cached probabilities; CSV/JSON output.

Probabilities are cached under `cache_dir` keyed by (classifier.cache_id, content hash of the
images), so labelling the same real set again for per-group statistics costs nothing.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import Classifier, as_uint8_nhwc
from .groupings import Grouping, group_fractions, label_counts
from ..image_source import ImageSource, array_hash, cached_array


@dataclass
class LabelResult:
    """Per-image probabilities, top class, and group assignment of one labelled set."""

    names: list[str]
    classes: list[str]
    probs: np.ndarray
    grouping: Grouping
    threshold: float
    assigned: np.ndarray
    group_probs: np.ndarray
    classifier: str

    def fractions(self) -> dict[str, tuple[float, float, float]]:
        """group -> (fraction, Wilson 95% low, high) over assigned images."""
        return group_fractions(self.assigned, self.grouping)

    def counts(self) -> dict[str, int]:
        """Counts per group, plus 'uncertain' and 'no_face'."""
        return label_counts(self.assigned, self.grouping)


def predict_source(classifier: Classifier, src, batch_size: int = 64, cache_dir=None) -> tuple[list[str], np.ndarray]:
    """(names, (N, K) probabilities) of a folder / npz path / ImageSource / image array, cached."""
    if isinstance(src, (str, Path, ImageSource)):
        source = src if isinstance(src, ImageSource) else ImageSource(src)
        key = f"probs|{classifier.cache_id}|{source.content_hash()}"

        def compute():
            parts = [classifier.predict_proba(b, batch_size) for b in source.batches(batch_size)]
            return np.concatenate([np.zeros((0, len(classifier.classes)))] + parts)
        return list(source.names), cached_array(cache_dir, key, compute)
    images = src if hasattr(src, "is_floating_point") else as_uint8_nhwc(src)
    key = f"probs|{classifier.cache_id}|{array_hash(as_uint8_nhwc(images))}"
    probs = cached_array(cache_dir, key, lambda: classifier.predict_proba(images, batch_size))
    return [f"{i:08d}" for i in range(len(probs))], probs


def label_source(classifier: Classifier, src, grouping: Grouping, threshold: float = 0.5,
                 batch_size: int = 64, cache_dir=None) -> LabelResult:
    """Classify every image of src and assign groups ('uncertain' below threshold)."""
    names, probs = predict_source(classifier, src, batch_size, cache_dir)
    assigned, gp = grouping.assign(probs, classifier.classes, threshold)
    return LabelResult(names, list(classifier.classes), probs, grouping, threshold, assigned, gp, classifier.name)


def source_seeds(src) -> list[int] | None:
    """Per-image seeds of a set written by `generate`/`sample-sims` (.npz 'seeds' or the folder's
    generation.json), in the source's image order; None when the set does not record them."""
    path = Path(src) if isinstance(src, (str, Path)) else None
    seeds = None
    if path is not None and path.is_file() and path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            seeds = [int(s) for s in z["seeds"]] if "seeds" in z else None
    elif path is not None and (path / "generation.json").is_file():
        seeds = json.loads((path / "generation.json").read_text()).get("seeds")
    if seeds is not None and len(seeds) != len(ImageSource(path)):
        return None  # images added or removed since generation: the seeds no longer line up
    return seeds


def write_labels(result: LabelResult, out, seeds: list[int] | None = None) -> None:
    """Write labels as .csv (one row per image) or .json (rows + fractions + settings); with `seeds`
    (one per image), each row keeps the seed that regenerates its image."""
    out = Path(out)
    if seeds is not None and len(seeds) != len(result.names):
        raise UserError(f"{len(seeds)} seeds for {len(result.names)} labelled images")
    out.parent.mkdir(parents=True, exist_ok=True)
    top = result.probs.argmax(axis=1) if len(result.probs) else np.zeros(0, int)
    if out.suffix.lower() == ".csv":
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name"] + (["seed"] if seeds is not None else []) + ["label", "confidence", "group",
                                                                              "group_confidence"]
                       + [f"p_{c}" for c in result.classes] + [f"group_p_{g}" for g in result.grouping.group_names])
            for i, name in enumerate(result.names):
                w.writerow([name] + ([seeds[i]] if seeds is not None else [])
                           + [result.classes[top[i]], f"{result.probs[i, top[i]]:.6f}", result.assigned[i],
                              f"{result.group_probs[i].max(initial=0):.6f}"]
                           + [f"{p:.6f}" for p in result.probs[i]] + [f"{p:.6f}" for p in result.group_probs[i]])
    elif out.suffix.lower() == ".json":
        doc = {
            "classifier": result.classifier, "classes": result.classes, "grouping": result.grouping.to_dict(),
            "threshold": result.threshold, "counts": result.counts(),
            "fractions": {g: {"fraction": f, "ci95": [lo, hi]} for g, (f, lo, hi) in result.fractions().items()},
            "fractions_note": "among assigned images; 'uncertain' and 'no_face' excluded; Wilson 95% interval",
            "items": [{"name": n, **({"seed": int(seeds[i])} if seeds is not None else {}),
                       "label": result.classes[top[i]], "group": str(result.assigned[i]),
                       "probs": dict(zip(result.classes, map(float, result.probs[i])))}
                      for i, n in enumerate(result.names)],
        }
        out.write_text(json.dumps(doc, indent=1))
    else:
        raise UserError(f"--out must end in .csv or .json, got {out.name}")


def read_manual_labels(path) -> dict[str, str]:
    """name -> label from a CSV with columns name,label (e.g. an edited `label` output) or a JSON {name: label}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "items" in data:
            return {it["name"]: str(it["label"]) for it in data["items"]}
        return {str(k): str(v) for k, v in data.items()}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "name" not in rows[0] or "label" not in rows[0]:
        raise UserError(f"{path} needs a header with columns 'name' and 'label'")
    return {r["name"]: r["label"] for r in rows if r["label"].strip()}
