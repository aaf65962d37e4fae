"""Job 'embed': the classifier's features of new pool samples and the pool's 2-D map (cached on disk)."""
from __future__ import annotations

from ...services.curation import compute_map
from ..specs import EmbedSpec
from .common import set_threads


def run(ctx, spec: EmbedSpec) -> dict:
    """Map the pool of spec.model_id with spec.classifier's features."""
    set_threads()
    ctx.progress(0.0, f"loading {spec.classifier} features", force=True)
    out = compute_map(ctx.db, ctx.settings, spec.model_id, spec.classifier, device=ctx.device,
                      progress=lambda k, total: ctx.progress(0.95 * k / max(total, 1), f"{k}/{total} embedded"))
    msg = (f"{out['method']} map of {out['n']} samples ({out['computed']} newly embedded, "
           f"{out['dims']}-d {out['feature'].split(':')[0]} features)")
    ctx.log(msg)
    return {"message": msg, **out}
