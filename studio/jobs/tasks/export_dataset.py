"""Job 'export_dataset': N images of the shifted model + classifier labels, as a zip in EDM's layout."""
from __future__ import annotations

import json

import numpy as np

from ...services.attributes import load_classifier
from ...services.evaluate import pair_paths, render
from ...services.export import check_writable
from ..specs import ExportDatasetSpec
from .common import set_threads


def run(ctx, spec: ExportDatasetSpec) -> dict:
    """Render in batches, label, write the zip (and a .json beside it naming the label classes)."""
    from pipelines.imageio import write_image_zip
    set_threads()
    n = spec.n
    out = ctx.settings.abs(spec.file)
    check_writable(out.parent)  # before rendering: an unwritable folder must not cost the whole render first
    _, base_path, aux_path = pair_paths(ctx.db, ctx.settings, spec.checkpoint_id)
    clf = load_classifier(ctx.db, spec.classifier, device=ctx.device) if spec.classifier else None
    images, labels, batch = [], [], 256
    for start in range(0, n, batch):
        seeds = range(spec.seed0 + start, spec.seed0 + min(start + batch, n))
        x = render(base_path, aux_path, spec.omega, seeds, spec.steps, spec.interval, spec.shared_encoder, ctx.device,
                   precision=ctx.settings.precision)
        images.append(x)
        if clf is not None:
            labels.append(clf.predict_proba(x).argmax(axis=1))
        ctx.progress(min(start + batch, n) / n * 0.95, f"{min(start + batch, n)}/{n} images")
    lab = np.concatenate(labels) if labels else None
    write_image_zip(out, np.concatenate(images), lab)
    classes = list(clf.classes) if clf is not None else None
    out.with_suffix(".json").write_text(json.dumps({"label_classes": classes, "omega": spec.omega,
                                                    "checkpoint_id": spec.checkpoint_id, "seed0": spec.seed0}))
    counts = {classes[k]: int((lab == k).sum()) for k in range(len(classes))} if classes else {}
    realised = _realised(ctx, clf, np.concatenate(images), spec.grouping_id) \
        if clf is not None and spec.grouping_id is not None else None
    if realised:
        meta = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".json").write_text(json.dumps({**meta, "realised_mix": realised, "planned": spec.planned}))
    mix = f"; {mix_text(realised, spec.planned)}" if realised else ""
    return {"message": f"wrote {n} images to {spec.file}{mix}",
            "file": spec.file, "label_counts": counts, "realised_mix": realised, "planned": spec.planned}


def _realised(ctx, clf, images, grouping_id: int) -> dict:
    """{group: [fraction, lo, hi, count]} of the exported images by their own labels (Wilson 95%)."""
    from pipelines.attributes.groupings import group_fractions
    from ...services.attributes import engine_grouping, get_grouping
    g = get_grouping(ctx.db, grouping_id)
    eg = engine_grouping(g)
    assigned, _ = eg.assign(clf.predict_proba(images), list(clf.classes), g["threshold"])
    return {k: [round(f, 4), round(lo, 4), round(hi, 4), int((assigned == k).sum())]
            for k, (f, lo, hi) in group_fractions(assigned, eg).items()}


def mix_text(realised: dict, planned: dict | None) -> str:
    """'realised 5-9 55.4% [52–58] vs planned 70.3% [58–80] (n = 64)' for every group."""
    parts = []
    for g, (f, lo, hi, _) in realised.items():
        text = f"{g} {100 * f:.1f}% [{100 * lo:.0f}–{100 * hi:.0f}]"
        if planned and g in planned["fractions"]:
            pf, plo, phi = planned["fractions"][g][:3]
            text += f" vs planned {100 * pf:.1f}% [{100 * plo:.0f}–{100 * phi:.0f}]"
            if hi < plo or lo > phi:
                text += " (outside the plan's interval)"
        parts.append(text)
    return "realised mix by its own labels: " + ", ".join(parts) + \
        (f" (plan measured on {planned['n']} samples)" if planned else " (no measurement at this ω to compare)")
