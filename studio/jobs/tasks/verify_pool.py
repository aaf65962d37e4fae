"""Job 'verify_pool': check every stored sample of a model's pool and regenerate the bad ones from their seeds."""
from __future__ import annotations

from ...services.verify import verify_pool
from ..specs import VerifyPoolSpec
from .common import set_threads


def run(ctx, spec: VerifyPoolSpec) -> dict:
    """Verify spec.model_id's pool on the job's device."""
    set_threads()
    mid = spec.model_id
    ctx.log(f"verifying the pool of model #{mid} (content hashes, decoding); regenerating bad samples on {ctx.device}")
    report = verify_pool(ctx.db, ctx.settings, mid, ctx.device,
                         progress=lambda f, text: ctx.progress(f, text))
    for b in report.bad[:50]:
        ctx.log(f"bad: sample #{b.id} seed {b.seed} ({b.path}): {b.reason}")
    for sid, why in report.failed[:50]:
        ctx.log(f"not regenerated: sample #{sid}: {why}")
    ctx.log(report.message())
    return report.as_result()
