"""Job 'export_dataset': N images of the shifted model + classifier labels, as a zip in EDM's layout."""
from __future__ import annotations

import json

import numpy as np

from ...services.attributes import load_classifier
from ...services.evaluate import pair_paths, render
from .common import set_threads


def run(ctx) -> dict:
    """Render in batches, label, write the zip (and a .json beside it naming the label classes)."""
    from pipelines.imageio import write_image_zip
    set_threads()
    p = ctx.params
    _, base_path, aux_path = pair_paths(ctx.db, ctx.settings, p["checkpoint_id"])
    clf = load_classifier(ctx.db, p["classifier"], device=ctx.device) if p.get("classifier") else None
    interval = tuple(p["interval"]) if p.get("interval") else None
    images, labels, batch = [], [], 256
    for start in range(0, p["n"], batch):
        seeds = range(p["seed0"] + start, p["seed0"] + min(start + batch, p["n"]))
        x = render(base_path, aux_path, p["omega"], seeds, p["steps"], interval, p["shared_encoder"], ctx.device,
                   precision=ctx.settings.precision)
        images.append(x)
        if clf is not None:
            labels.append(clf.predict_proba(x).argmax(axis=1))
        ctx.progress(min(start + batch, p["n"]) / p["n"] * 0.95, f"{min(start + batch, p['n'])}/{p['n']} images")
    out = ctx.settings.abs(p["file"])
    lab = np.concatenate(labels) if labels else None
    write_image_zip(out, np.concatenate(images), lab)
    classes = list(clf.classes) if clf is not None else None
    out.with_suffix(".json").write_text(json.dumps({"label_classes": classes, "omega": p["omega"],
                                                    "checkpoint_id": p["checkpoint_id"], "seed0": p["seed0"]}))
    counts = {classes[k]: int((lab == k).sum()) for k in range(len(classes))} if classes else {}
    return {"message": f"wrote {p['n']} images to {p['file']}", "file": p["file"], "label_counts": counts}
