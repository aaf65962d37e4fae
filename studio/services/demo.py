"""First run: register the bundled digits model, the demo classifier, the digits groupings and the bundled
example (an auxiliary model for "70% of 5–9" with its precomputed preview grid). All idempotent.

The example arrives as the demo base's float16 weight difference plus 17 preview grids (see
pipelines/demo/aux.py); registration rebuilds the checkpoint in the data directory, records it as a
finished fine-tune run (so the Guide, Export and Jobs tabs treat it like any other run) and writes the
previews into the render cache under the keys the Guide looks up, so scrubbing starts cached.
"""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..models import Checkpoint, Job, JobState, Model, Render
from ..settings import Settings
from . import attributes, registry

BUNDLED_TAG = "demo-aux-70pct-5-9"
BUNDLED_TITLE = "Bundled example: auxiliary for 70% of 5–9 (built by build-demo-aux)"


def bootstrap_demo(db: Database, settings: Settings) -> list[str]:
    """Register what ships in assets/; returns notes about anything missing (shown in the UI)."""
    notes = []
    attributes.register_classifier(db, "digits")
    attributes.register_builtin_groupings(db, "digits")
    try:
        base_id = registry.register_demo(db, settings)
    except UserError as e:
        notes.append(str(e))
        base_id = None
    if base_id is not None:
        try:
            register_demo_aux(db, settings, base_id)
        except UserError as e:
            notes.append(str(e))
    status = attributes.classifier_status(db, "digits")
    if status != "ready":
        notes.append(status)
    return notes


def bundled_run(db: Database) -> tuple[int, int] | None:
    """(job id, checkpoint id) of the registered bundled example, or None."""
    with db.session(read_only=True) as s:
        for job in s.scalars(select(Job).where(Job.kind == "finetune", Job.title == BUNDLED_TITLE)):
            if (job.params or {}).get("bundled") == BUNDLED_TAG:
                ck = s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job.id))
                if ck is not None:
                    return job.id, ck
    return None


def register_demo_aux(db: Database, settings: Settings, base_id: int) -> int:
    """Register the bundled auxiliary checkpoint and its preview grid; returns the checkpoint id.

    A second call finds both and writes nothing (a deleted cache file is written again).
    """
    from pipelines.demo.aux import DEMO_AUX, DEMO_PREVIEWS, read_diff_header, restore_aux
    if not (DEMO_AUX.is_file() and DEMO_PREVIEWS.is_file()):
        raise UserError(f"The bundled example is missing ({DEMO_AUX.name}, {DEMO_PREVIEWS.name} in "
                        f"{DEMO_AUX.parent}); rebuild it with `python -m pipelines build-demo-aux`.")
    found = bundled_run(db)
    if found is None:
        header = read_diff_header(DEMO_AUX)
        with db.session() as s:
            base = s.get(Model, int(base_id))
            prov = header["aux"].get("provenance", {})
            ft = prov.get("finetune", {})
            job = Job(kind="finetune", title=BUNDLED_TITLE, state=JobState.succeeded, progress=1.0,
                      params={"bundled": BUNDLED_TAG, "set_id": None, "model_id": base.id, "gpus": 1,
                              "previews": False,
                              "config": {"total_kimg": ft.get("budget_kimg"), "checkpoint_kimg": ft.get("budget_kimg"),
                                         "lr": ft.get("lr"), "batch_size": ft.get("batch_size"),
                                         "seed": ft.get("seed")},
                              "provenance": prov},
                      message="Bundled example, registered on first start (not trained here): "
                              "`python -m pipelines build-demo-aux` rebuilds it.",
                      result={"message": "bundled example", "kimg": ft.get("kimg"), "loss": ft.get("final_loss")})
            s.add(job)
            s.flush()
            job_id = job.id
        dest = settings.path("runs", f"finetune-{job_id}", "checkpoint-final.safetensors")
        restore_aux(DEMO_AUX, registry.DEMO_MODEL, dest)
        with db.session() as s:
            ck = Checkpoint(job_id=job_id, base_model_id=int(base_id), set_id=None,
                            kimg=float(ft.get("budget_kimg") or 0), path=settings.rel(dest))
            s.add(ck)
            s.flush()
            found = (job_id, ck.id)
    else:
        with db.session(read_only=True) as s:
            path = settings.abs(s.get(Checkpoint, found[1]).path)
        if not path.exists():
            restore_aux(DEMO_AUX, registry.DEMO_MODEL, path)
    cache_previews(db, settings, found[1])
    return found[1]


def cache_previews(db: Database, settings: Settings, checkpoint_id: int) -> int:
    """Write the shipped preview grids into the render cache (same files and rows as a live render); returns
    how many were written. The grids were rendered at fp32: a studio sampling at another precision renders
    its own."""
    from pipelines.demo.aux import DEMO_PREVIEWS, load_previews
    from ..storage import write_png
    from .evaluate import grid_image, pair_paths, render_key
    if settings.precision != "fp32":
        return 0
    shipped = load_previews(DEMO_PREVIEWS)
    base_row, _, _ = pair_paths(db, settings, checkpoint_id)
    seeds, steps = shipped["seeds"], shipped["steps"]
    keys = {w: render_key(base_row.content_hash, checkpoint_id, w, None, seeds, steps, False, settings.precision)
            for w in shipped["omegas"]}
    with db.session(read_only=True) as s:
        have = {k: p for k, p in s.execute(select(Render.key, Render.path).where(Render.key.in_(list(keys.values()))))}
    written = 0
    rows = []
    for i, w in enumerate(shipped["omegas"]):
        key = keys[w]
        rel = have.get(key, f"cache/renders/{key[:2]}/{key}.png")
        out = settings.abs(rel)
        if key in have and out.exists():
            continue
        images = shipped["images"][i]
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out.with_suffix(".npz"), images=images, seeds=np.asarray(seeds), omega=float(w))
        write_png(out, grid_image(images))
        written += 1
        if key not in have:
            rows.append(Render(key=key, model_id=base_row.id, checkpoint_id=int(checkpoint_id), omega=float(w),
                               settings={"interval": None, "seeds": seeds, "steps": int(steps),
                                         "shared_encoder": False}, path=rel))
    if rows:
        with db.session() as s:
            s.add_all(rows)
    return written


def guide_banner(db: Database) -> str:
    """What the bundled example is and how to make one's own (the Guide shows it while the example exists)."""
    found = bundled_run(db)
    if found is None:
        return ""
    with db.session(read_only=True) as s:
        job = s.get(Job, found[0])
        prov = (job.params or {}).get("provenance", {})
    sset, ft = prov.get("synthetic_set", {}), prov.get("finetune", {})
    counts, target = sset.get("counts", {}), (sset.get("target") or {}).get("5-9")
    what = (f"an auxiliary model fine-tuned from the demo base for {ft.get('budget_kimg')} kimg (lr {ft.get('lr')}) "
            f"on a set S of {sum(counts.values())} of the base's own samples "
            f"({', '.join(f'{g}: {n}' for g, n in counts.items())}), the mix suggested for a target of "
            f"{100 * float(target or 0):.0f}% of 5–9")
    return (f"**Bundled example (run #{found[0]}):** {what}. Scrub ω: its 17 previews were rendered when it was "
            "built, so they show at once; ω > 0 steers away from S (here toward more 5–9), ω = −1 samples the "
            "auxiliary model itself. **Make your own:** Generate & label → Target → Build set → Fine-tune; your "
            "runs join the checkpoint list. `python -m pipelines build-demo-aux` rebuilds this example.")
