"""Fine-tune the auxiliary model on S (SIMS Alg. 1 step 3): submit, follow, list its budget checkpoints."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from pipelines.errors import UserError

from ..db import Database
from ..models import Checkpoint, Job
from ..settings import Settings
from ..jobs.specs import FinetuneSpec
from . import jobs as jobs_service
from .registry import get_model
from .sets import get_set

DEVICE_CHOICES = ("cpu", "cuda", "torchrun")


def base_recipe(db: Database, model_id: int) -> dict:
    """The inherited part of the base model's TrainConfig, as `python -m pipelines finetune` inherits it."""
    from pipelines.training.config import inherited_recipe
    return inherited_recipe(get_model(db, model_id).meta.get("training"))


def defaults_for(db: Database, model_id: int) -> dict:
    """Batch size and learning rate to prefill (the base's, else 64 and 1e-3)."""
    r = base_recipe(db, model_id)
    return {"batch_size": int(r.get("batch_size") or 64), "lr": float(r.get("lr") or 1e-3)}


def submit(db: Database, set_id: int, total_kimg: float, checkpoint_kimg: float, lr: float, batch_size: int,
           decoder_only: bool = False, device: str = "cpu", gpus: int = 1, seed: int = 0,
           previews: bool = True) -> int:
    """Validate and queue a fine-tune of S's base model on S; returns the job id.

    With `previews`, the finished job queues the Guide tab's preview grid for its final budget.
    An identical fine-tune still queued or running is returned instead of a second one (see `submit_new`).
    """
    return submit_new(db, set_id, total_kimg, checkpoint_kimg, lr, batch_size, decoder_only, device, gpus, seed,
                      previews)[0]


def submit_new(db: Database, set_id: int, total_kimg: float, checkpoint_kimg: float, lr: float, batch_size: int,
               decoder_only: bool = False, device: str = "cpu", gpus: int = 1, seed: int = 0,
               previews: bool = True) -> tuple[int, bool]:
    """Like `submit`, returning (job id, True when newly queued; False when an identical active one exists)."""
    s_set = get_set(db, set_id)
    if s_set["state"] != "ready":
        raise UserError(f"S #{set_id} is {s_set['state']}; wait for its build job to finish (Jobs tab).")
    total_kimg, checkpoint_kimg = float(total_kimg or 0), float(checkpoint_kimg or 0)
    if total_kimg <= 0:
        raise UserError("The budget must be > 0 kimg (1 kimg = 1,000 images seen; the paper used 34-102 Mi).")
    if not 0 < checkpoint_kimg <= total_kimg:
        raise UserError(f"The checkpoint interval must be in (0, budget] = (0, {total_kimg:g}] kimg: checkpoints "
                        "along the way are the budgets the Guide tab compares.")
    if total_kimg / checkpoint_kimg > 200:
        raise UserError(f"{total_kimg / checkpoint_kimg:.0f} checkpoints is too many; raise the interval "
                        "(at most 200 checkpoints per run).")
    if device not in DEVICE_CHOICES and not str(device).startswith("cuda:"):
        raise UserError(f"Device must be one of {', '.join(DEVICE_CHOICES)} or cuda:N (got {device!r}).")
    gpus = int(gpus or 1)
    if device == "torchrun" and gpus < 2:
        raise UserError("torchrun is for several GPUs: set the number of GPUs to 2 or more, or pick 'cuda'.")
    from pipelines.training import TrainConfig
    cfg = TrainConfig.from_dict({  # refuses bad numbers now, not in the worker
        **base_recipe(db, s_set["model_id"]), "batch_size": int(batch_size), "lr": float(lr),
        "total_kimg": total_kimg, "checkpoint_kimg": checkpoint_kimg, "decoder_only": bool(decoder_only),
        "seed": int(seed), "device": "cuda" if device == "torchrun" else device})
    spec = FinetuneSpec(set_id=int(set_id), model_id=s_set["model_id"], config=cfg,
                        gpus=gpus if device == "torchrun" else 1, previews=bool(previews))
    return jobs_service.submit_once(db, spec, title=f"Fine-tune aux on S #{set_id} ({total_kimg:g} kimg)",
                                    device="cuda" if device == "torchrun" else device)


def list_runs(db: Database, model_id: int | None = None) -> list[dict]:
    """Fine-tune jobs (newest first) with their checkpoint counts."""
    out = []
    for j in jobs_service.list_jobs(db, kind="finetune"):
        if model_id is not None and j.params.get("model_id") != int(model_id):
            continue
        out.append({"id": j.id, "state": j.state, "set_id": j.params.get("set_id"),
                    "total_kimg": j.params["config"]["total_kimg"], "checkpoints": len(checkpoints(db, j.id)),
                    "title": j.title})
    return out


def checkpoints(db: Database, job_id: int) -> list[dict]:
    """Budget checkpoints of a fine-tune run, in budget order."""
    with db.session(read_only=True) as s:
        return [{"id": c.id, "kimg": c.kimg, "path": c.path, "set_id": c.set_id, "base_model_id": c.base_model_id}
                for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == int(job_id))
                                   .order_by(Checkpoint.kimg))]


def get_checkpoint(db: Database, checkpoint_id: int) -> dict:
    """One checkpoint, or a UserError."""
    with db.session(read_only=True) as s:
        c = s.get(Checkpoint, int(checkpoint_id)) if checkpoint_id not in (None, "") else None
        if c is None:
            raise UserError("Pick an auxiliary checkpoint (finish a fine-tune in the Fine-tune tab first).")
        return {"id": c.id, "kimg": c.kimg, "path": c.path, "set_id": c.set_id, "base_model_id": c.base_model_id,
                "job_id": c.job_id}


def loss_curve(settings: Settings, db: Database, job_id: int) -> list[dict]:
    """The run's training log (kimg, loss, images/s), read from its run directory."""
    with db.session(read_only=True) as s:
        job = s.get(Job, int(job_id))
        if job is None:
            return []
    from pipelines.training.state import read_log
    return read_log(run_dir(settings, int(job_id)))


def run_dir(settings: Settings, job_id: int) -> Path:
    """Where a fine-tune job keeps checkpoints, state and log."""
    return settings.path("runs", f"finetune-{int(job_id)}")
