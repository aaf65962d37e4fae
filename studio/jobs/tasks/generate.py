"""Job 'generate': add samples with fresh seeds to a model's pool (resumable: skips seeds already written)."""
from __future__ import annotations

from .common import generate_into_pool, load_registered_model, set_threads


def run(ctx) -> dict:
    """Generate params['n'] samples from seed params['seed_start']."""
    set_threads()
    p = ctx.params
    model, row = load_registered_model(ctx, p["model_id"])
    seeds = list(range(int(p["seed_start"]), int(p["seed_start"]) + int(p["n"])))
    ctx.log(f"generating {len(seeds)} samples of {row.name} on {ctx.device} ({p['steps']} steps)")
    ctx.progress(0.0, f"generating {len(seeds)} samples", force=True)
    ids = generate_into_pool(ctx, model, row.id, seeds, p["steps"], p.get("batch_size", 64),
                             progress=lambda k, n: ctx.progress(k / max(n, 1), f"{k}/{n} samples"))
    ctx.log(f"wrote {len(ids)} new samples")
    return {"message": f"{len(ids)} new samples in the pool", "new_samples": len(ids)}
