"""Job 'label': classify every not-yet-labelled sample of a pool (resumable by construction)."""
from __future__ import annotations

from .common import label_all, set_threads


def run(ctx) -> dict:
    """Label the pool of params['model_id'] with params['classifier']."""
    set_threads()
    p = ctx.params
    ctx.progress(0.0, f"loading classifier {p['classifier']}", force=True)
    n = label_all(ctx, p["model_id"], p["classifier"],
                  progress=lambda k, total: ctx.progress(k / max(total, 1), f"{k}/{total} labelled"))
    ctx.log(f"labelled {n} samples with {p['classifier']}")
    return {"message": f"labelled {n} samples", "labelled": n}
