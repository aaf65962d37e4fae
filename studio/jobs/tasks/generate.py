"""Job 'generate': add samples with fresh seeds to a model's pool (resumable: skips seeds already written)."""
from __future__ import annotations

from ..specs import GenerateSpec
from .common import generate_into_pool, load_registered_model, set_threads


def run(ctx, spec: GenerateSpec) -> dict:
    """Generate spec.n samples from seed spec.seed_start."""
    set_threads()
    model, row = load_registered_model(ctx, spec.model_id)
    seeds = list(range(spec.seed_start, spec.seed_start + spec.n))
    ctx.log(f"generating {len(seeds)} samples of {row.name} on {ctx.device} ({spec.steps} steps)")
    ctx.progress(0.0, f"generating {len(seeds)} samples", force=True)
    ids = generate_into_pool(ctx, model, row.id, seeds, spec.steps, spec.batch_size,
                             progress=lambda k, n: ctx.progress(k / max(n, 1), f"{k}/{n} samples"))
    ctx.log(f"wrote {len(ids)} new samples")
    return {"message": f"{len(ids)} new samples in the pool", "new_samples": len(ids)}
