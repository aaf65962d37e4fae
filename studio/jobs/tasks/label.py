"""Job 'label': classify every not-yet-labelled sample of a pool (resumable by construction)."""
from __future__ import annotations

from ..specs import LabelSpec
from .common import label_all, set_threads


def run(ctx, spec: LabelSpec) -> dict:
    """Label the pool of spec.model_id with spec.classifier."""
    set_threads()
    ctx.progress(0.0, f"loading classifier {spec.classifier}", force=True)
    n = label_all(ctx, spec.model_id, spec.classifier,
                  progress=lambda k, total: ctx.progress(k / max(total, 1), f"{k}/{total} labelled"))
    ctx.log(f"labelled {n} samples with {spec.classifier}")
    return {"message": f"labelled {n} samples", "labelled": n}
