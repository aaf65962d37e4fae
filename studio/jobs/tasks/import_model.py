"""Job 'import_model': import an EDM pickle (path or URL, safely) or copy a native checkpoint, then register it."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from pipelines.errors import UserError

from ...services.registry import register_checkpoint
from ..specs import ImportModelSpec


def run(ctx, spec: ImportModelSpec) -> dict:
    """Import spec.src and register it as a base model."""
    src, name = spec.src, spec.name
    is_url = src.lower().startswith(("http://", "https://"))
    if src.endswith(".safetensors") and not is_url:
        model_id = register_checkpoint(ctx.db, ctx.settings, src, name or None, source="path", source_ref=src)
        return {"message": f"registered model #{model_id}", "model_id": model_id}
    from pipelines.checkpoints.edm_pickle import import_edm
    out = ctx.settings.path("models", "imported", f"job{ctx.job_id}-{Path(src).stem[:60]}.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx.progress(0.05, f"importing {src}", force=True)
    _while_waiting(ctx, src, is_url, lambda: import_edm(src, out, cache_dir=ctx.settings.path("cache", "downloads"),
                                                        allow_private_urls=spec.allow_private_urls))
    ctx.progress(0.9, "registering", force=True)
    model_id = register_checkpoint(ctx.db, ctx.settings, out, name or Path(src).stem,
                                   source="url" if is_url else "path", source_ref=src)
    out.unlink(missing_ok=True)  # register_checkpoint copied it under its content hash
    return {"message": f"imported and registered model #{model_id}", "model_id": model_id}


def _while_waiting(ctx, src: str, is_url: bool, work) -> None:
    """Run the import in a thread and report every second how long it has been running, so a server that
    never answers shows as waiting (with the time it is given) instead of a frozen bar."""
    from pipelines.checkpoints.download import TIMEOUT_S
    box: dict = {}

    def target():
        try:
            work()
        except BaseException as e:  # handed to the job's own thread below
            box["error"] = e

    t0, thread = time.monotonic(), threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        waited = time.monotonic() - t0
        if thread.is_alive():
            what = f"waiting for {src}: {waited:.0f} s (gives up after {TIMEOUT_S} s without an answer)" if is_url \
                else f"importing {src}: {waited:.0f} s"
            ctx.progress(0.05, what, force=True)
    err = box.get("error")
    if isinstance(err, UserError) and is_url and "Timeout" in str(err):
        raise UserError(f"{src} did not answer within {TIMEOUT_S} s (timed out after {waited:.0f} s). Check that the "
                        "server is up, or download the file by hand and import its local path.") from None
    if err is not None:
        raise err
