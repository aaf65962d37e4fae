"""Job 'import_model': import an EDM pickle (path or URL, safely) or copy a native checkpoint, then register it."""
from __future__ import annotations

from pathlib import Path

from ...services.registry import register_checkpoint


def run(ctx) -> dict:
    """Import params['src'] and register it as a base model."""
    src, name = ctx.params["src"], ctx.params.get("name") or ""
    is_url = src.lower().startswith(("http://", "https://"))
    if src.endswith(".safetensors") and not is_url:
        model_id = register_checkpoint(ctx.db, ctx.settings, src, name or None, source="path", source_ref=src)
        return {"message": f"registered model #{model_id}", "model_id": model_id}
    from pipelines.checkpoints.edm_pickle import import_edm
    out = ctx.settings.path("models", "imported", f"job{ctx.job_id}-{Path(src).stem[:60]}.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx.progress(0.05, f"importing {src}", force=True)
    import_edm(src, out, cache_dir=ctx.settings.path("cache", "downloads"),
               allow_private_urls=bool(ctx.params.get("allow_private_urls")))
    ctx.progress(0.9, "registering", force=True)
    model_id = register_checkpoint(ctx.db, ctx.settings, out, name or Path(src).stem,
                                   source="url" if is_url else "path", source_ref=src)
    out.unlink(missing_ok=True)  # register_checkpoint copied it under its content hash
    return {"message": f"imported and registered model #{model_id}", "model_id": model_id}
