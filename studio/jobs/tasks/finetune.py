"""Job 'finetune': the auxiliary model, fine-tuned from the base on S (SIMS Alg. 1 step 3).

The run directory is fixed per job, so running the job again (resume) continues exactly from
the last saved training state. Several GPUs: the job launches `torchrun -m pipelines finetune`
and follows its log.jsonl. Each EMA checkpoint is registered as a budget for the Guide tab.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from pipelines.training.state import read_log

from ...models import Checkpoint, Model
from ...services.finetune import run_dir
from ...services.sets import member_ids
from ...storage import read_pngs
from ..context import JobCancelled
from ..specs import FinetuneSpec
from .common import set_threads

CONFIG_NAME = "train-config.json"  # the whole TrainConfig handed to `torchrun -m pipelines finetune --config`


def _dataset_file(ctx, set_id: int, out: Path) -> Path:
    # S is written once per run as an .npz in member order; a resumed run trains on the same file.
    if out.exists():
        return out
    from pipelines.imageio import save_npz
    rows = member_ids(ctx.db, set_id)
    ctx.progress(0.0, f"reading {len(rows)} images of S #{set_id}", force=True)
    images = read_pngs([ctx.settings.abs(p) for _, p in rows], [f"sample #{i} of S #{set_id}" for i, _ in rows])
    return save_npz(out, images)


def _register_checkpoints(ctx, rd: Path, model_id: int, set_id: int) -> int:
    from pipelines.training import list_checkpoints
    with ctx.db.session() as s:
        have = set(s.scalars(select(Checkpoint.kimg).where(Checkpoint.job_id == ctx.job_id)))
        new = [(nimg, p) for nimg, p in list_checkpoints(rd) if nimg / 1000 not in have]
        s.add_all([Checkpoint(job_id=ctx.job_id, base_model_id=model_id, set_id=set_id, kimg=nimg / 1000,
                              path=ctx.settings.rel(p)) for nimg, p in new])
    return len(new)


def _report(ctx, info: dict) -> None:
    eta = info.get("eta_s") or 0
    ctx.progress(info["kimg"] / info["total_kimg"],
                 f"{info['kimg']:g}/{info['total_kimg']:g} kimg · loss {info['loss']:.4f} · "
                 f"{info['images_per_s']:.0f} img/s · ETA {int(eta // 60)}m{int(eta % 60):02d}s",
                 kimg=info["kimg"], loss=info["loss"], images_per_s=info["images_per_s"], eta_s=eta)


def run(ctx, spec: FinetuneSpec) -> dict:
    """Fine-tune (in this process, or via torchrun for several GPUs) and register the checkpoints."""
    with ctx.db.session(read_only=True) as s:
        base = s.get(Model, spec.model_id)
        base_path = ctx.settings.abs(base.path)
    rd = run_dir(ctx.settings, ctx.job_id)
    rd.mkdir(parents=True, exist_ok=True)
    data = _dataset_file(ctx, spec.set_id, rd / "synthetic_set.npz")
    ctx.log(f"fine-tuning {base.name} on S #{spec.set_id} ({spec.config}), attempt {ctx.attempt}")
    if spec.gpus > 1:
        result = _run_torchrun(ctx, base_path, data, rd, spec)
    else:
        result = _run_here(ctx, base_path, data, rd, spec)
    _register_checkpoints(ctx, rd, spec.model_id, spec.set_id)
    if result.get("status") == "cancelled":
        raise JobCancelled()
    with ctx.db.session(read_only=True) as s:
        ids = s.scalars(select(Checkpoint.id).where(Checkpoint.job_id == ctx.job_id).order_by(Checkpoint.kimg)).all()
        n = len(ids)
    if spec.previews and ids:
        # Render the Guide tab's omega grid for the final budget now, so scrubbing starts cached.
        from ...services.guide import submit_previews
        submit_previews(ctx.db, ids[-1], device=ctx.device)
    return {"message": f"done: {result['kimg']:g} kimg seen ({result['nimg']:,} images), {n} budget checkpoints",
            "nimg": result["nimg"], "kimg": result["kimg"], "run_dir": ctx.settings.rel(rd),
            "images_per_s": result.get("images_per_s"), "loss": result.get("loss")}


def _run_here(ctx, base_path, data, rd, spec: FinetuneSpec) -> dict:
    from pipelines.data import open_dataset
    from pipelines.training import train
    set_threads()

    def progress(info):
        if info.get("checkpoint"):
            _register_checkpoints(ctx, rd, spec.model_id, spec.set_id)
        _report(ctx, info)

    return train(None, open_dataset(str(data)), spec.config, rd, init_checkpoint=str(base_path), progress=progress,
                 should_stop=ctx.should_stop)


def torchrun_command(base_path, data, rd: Path, spec: FinetuneSpec) -> list[str]:
    """The torchrun command line; writes the whole TrainConfig to RUN_DIR/train-config.json, which it passes."""
    config = rd / CONFIG_NAME
    config.write_text(json.dumps(spec.config.to_dict(), indent=2))
    # --standalone: a free rendezvous port per run, so two fine-tunes on one host do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.gpus}",
            "-m", "pipelines",
            "finetune", "--base", str(base_path), "--data", str(data), "--run-dir", str(rd), "--config", str(config)]


def _run_torchrun(ctx, base_path, data, rd, spec: FinetuneSpec) -> dict:
    model_id, set_id = spec.model_id, spec.set_id
    cmd = torchrun_command(base_path, data, rd, spec)
    ctx.log("launching: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr, start_new_session=True, env=dict(os.environ))
    seen = 0
    try:
        while proc.poll() is None:
            time.sleep(2.0)
            ctx.check_cancel()
            records = read_log(rd)
            if len(records) > seen:
                seen = len(records)
                r = records[-1]
                total = spec.config.total_kimg
                _report(ctx, {"kimg": r["kimg"], "total_kimg": total, "loss": r["loss"],
                              "images_per_s": r["images_per_s"],
                              "eta_s": (total - r["kimg"]) * 1000 / max(r["images_per_s"], 1e-9)})
                _register_checkpoints(ctx, rd, model_id, set_id)
    except JobCancelled:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI saves a resumable state on SIGTERM
        proc.wait()
        return {"status": "cancelled"}
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with code {proc.returncode}; see the log above")
    last = read_log(rd)[-1]
    return {"status": "done", "nimg": last["nimg"], "kimg": last["kimg"], "loss": last["loss"],
            "images_per_s": last["images_per_s"]}
