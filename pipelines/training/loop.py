"""Training / fine-tuning loop (EDM training_loop recipe; SIMS Alg. 1 steps 1 and 3).

One step: for each micro-batch ("chunk") of this rank, loss.sum() / per-rank batch is
back-propagated (DDP averages over ranks, so gradients are sum over the global batch / batch);
lr ramp-up; non-finite gradients zeroed (EDM); optional clipping; Adam; EMA with EDM's
half-life rule. Images seen advance by the global batch per step; training stops at the first
step where images seen >= budget, so a run sees ceil(budget / batch) * batch images.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..checkpoints.native import load_model, save_model
from ..data import BaseDataset, open_dataset, to_model_input
from ..errors import UserError
from ..loss import make_loss
from ..models import ModelConfig, backbone_class, build_model, sample_shape
from ..precond import compile_backbone
from .augment import resolve_augment_p
from .config import TrainConfig, lr_factor
from .distributed import DistEnv, init_from_env
from .ema import ema_beta, update_ema
from .order import ChunkSampler, EpochOrder, chunk_generators
from . import state as files


@dataclass
class _Run:
    """Everything one training run carries between steps."""
    env: DistEnv
    cfg: TrainConfig
    model_cfg: ModelConfig
    dataset: BaseDataset
    run_dir: Path
    net: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    sampler: ChunkSampler
    per_rank: int
    parent: dict | None
    fingerprint: dict
    ddp: nn.Module | None = None
    nimg: int = 0
    step: int = 0
    loss_history: list = field(default_factory=list)
    last_loss: float | None = None
    pending: list = field(default_factory=lambda: [0.0, 0.0])  # loss sum/count since the last report (this rank)
    staged: tuple | None = None  # (images, labels) of an in-memory dataset, already on the device
    first_step_s: float | None = None  # wall time of this process's first step (includes compilation)

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]


#----------------------------------------------------------------------------
# Setup.

def _resolve_model(model_cfg, init_checkpoint, cfg: TrainConfig):
    """(model config, initial state dict or None, parent record or None); applies the dropout override."""
    parent, weights = None, None
    if isinstance(model_cfg, dict):
        model_cfg = ModelConfig.from_dict(model_cfg)
    if init_checkpoint is not None:
        base, meta = load_model(init_checkpoint)
        base_cfg = ModelConfig.from_dict(meta["model"])
        if model_cfg is not None and model_cfg.to_dict() != base_cfg.to_dict():
            raise UserError("Fine-tuning takes the architecture from the base checkpoint; do not also pass a "
                            "different model config (drop --arch/--model-config).")
        model_cfg, weights = base_cfg, base.state_dict()
        parent = {"path": str(Path(init_checkpoint).resolve()), "sha256": files.file_sha256(init_checkpoint),
                  "dataset": meta.get("dataset"), "training": _summary(meta.get("training") or {}),
                  "provenance": meta.get("provenance")}
    if model_cfg is None:
        raise UserError("Nothing to train: give a model config (--arch or --model-config) or a base "
                        "checkpoint to fine-tune (--base).")
    if cfg.dropout is not None:
        model_cfg = copy.deepcopy(model_cfg)
        backbone = backbone_class(model_cfg.backbone)
        if "dropout" not in {f.name for f in dataclasses.fields(backbone.Config)}:
            raise UserError(f"The {model_cfg.backbone} backbone has no dropout setting; drop the dropout override.")
        model_cfg.network["dropout"] = cfg.dropout
    return model_cfg, weights, parent


def _summary(training: dict) -> dict:
    return {k: training[k] for k in ("nimg", "kimg", "budget_kimg", "batch_size", "lr", "decoder_only")
            if k in training}


def _check_data(net, model_cfg: ModelConfig, dataset: BaseDataset) -> None:
    shape = tuple(sample_shape(net))
    if tuple(dataset.shape) != shape:
        raise UserError(f"The model makes samples shaped {shape} but dataset '{dataset.name}' holds "
                        f"{tuple(dataset.shape)}; choose a model for this data (e.g. --arch tiny sets "
                        f"img_resolution/img_channels from the data) or another dataset.")
    if model_cfg.label_dim:
        if not dataset.has_labels:
            raise UserError(f"The model is class-conditional (label_dim={model_cfg.label_dim}) but dataset "
                            f"'{dataset.name}' has no labels; use an unconditional model or a labelled set.")
        if dataset.label_dim > model_cfg.label_dim:
            raise UserError(f"Dataset '{dataset.name}' has labels up to {dataset.label_dim - 1} but the model "
                            f"has label_dim={model_cfg.label_dim}.")


def _configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    # bf16 autocasts the network on CUDA and on CPU alike (CPU autocast); nothing to refuse here.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True  # speed; bitwise resume is promised on CPU only


def _select_trainable(net: nn.Module, decoder_only: bool, probe: Callable) -> None:
    """Freeze what is not trained: the encoder in decoder-only mode, and parameters the loss
    never reaches (e.g. map_augment without augmentation; DDP's reducer would wait for them)."""
    net.requires_grad_(not decoder_only)
    if decoder_only:
        if not hasattr(net.model, "decoder_parameters"):
            raise UserError(f"{type(net.model).__name__} has no decoder/encoder split; drop --decoder-only.")
        for p in net.model.decoder_parameters():
            p.requires_grad_(True)
    net.zero_grad(set_to_none=True)
    probe().sum().backward()
    for p in net.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
    net.zero_grad(set_to_none=True)


def _split_batch(cfg: TrainConfig, world: int) -> tuple[int, int, int]:
    """(per-rank batch, micro-batch, accumulation rounds)."""
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} does not split over {world} processes; "
                        f"use a multiple of {world}.")
    per_rank = cfg.batch_size // world
    batch_gpu = min(cfg.batch_gpu or per_rank, per_rank)
    if per_rank % batch_gpu:
        raise UserError(f"Per-process batch {per_rank} is not a multiple of batch_gpu {batch_gpu}.")
    return per_rank, batch_gpu, per_rank // batch_gpu


def _setup(model_cfg, dataset, cfg: TrainConfig, run_dir: Path, init_checkpoint, env: DistEnv) -> _Run:
    dataset = open_dataset(dataset)
    _configure_backends(cfg, env.device)
    per_rank, batch_gpu, rounds = _split_batch(cfg, env.world_size)
    model_cfg, weights, parent = _resolve_model(model_cfg, init_checkpoint, cfg)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every rerun
    net = build_model(model_cfg)
    if weights is not None:
        net.load_state_dict(weights)
    _check_data(net, model_cfg, dataset)
    net.train().to(env.device)
    loss_fn = make_loss(cfg.loss or model_cfg.precond, augment_p=cfg.augment_p or 0.0)
    x0, lab0 = dataset.get_batch([0])
    x0, probe_labels = to_model_input(x0).to(env.device), _one_hot(lab0, model_cfg.label_dim)
    probe_labels = probe_labels.to(env.device) if probe_labels is not None else None
    _select_trainable(net, cfg.decoder_only, lambda: loss_fn(net, x0, probe_labels, None,
                                                             torch.Generator(env.device).manual_seed(0)))
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if cfg.precision == "bf16":
        net.amp_dtype = ema.amp_dtype = torch.bfloat16
    # Fused Adam (one kernel for all parameters) on CUDA; on CPU the default per-tensor loop,
    # which keeps CPU runs bit-identical to earlier versions. The state dict is the same either way.
    fused = {"fused": True} if env.device.type == "cuda" else {}
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                                 betas=(0.9, 0.999), eps=1e-8, **fused)
    if cfg.compile:
        compile_backbone(net)  # after the EMA copy: the EMA stays eager; compiles on the first step
    fingerprint = {"recipe": cfg.recipe(), "model": model_cfg.to_dict(), "dataset": dataset.describe(),
                   "parent_sha256": parent and parent["sha256"]}
    sampler = ChunkSampler(EpochOrder(len(dataset), cfg.seed), cfg.batch_size, batch_gpu, rounds, env.rank, 0)
    return _Run(env, cfg, model_cfg, dataset, run_dir, net, ema, optimizer, loss_fn, sampler, per_rank,
                parent, fingerprint)


def _stage(dataset: BaseDataset, device: torch.device, num_workers: int):
    """An in-memory dataset's tensors moved to the device once, so a step indexes there instead of
    copying each batch from host memory (None when the data is read from files, or on CPU)."""
    if device.type == "cpu" or num_workers:
        return None
    data = getattr(dataset, "images", None)
    if data is None:
        data = getattr(dataset, "points", None)
    if not isinstance(data, torch.Tensor):
        return None
    labels = torch.from_numpy(dataset.labels).to(device) if dataset.has_labels else None
    return data.to(device), labels


def _one_hot(labels: torch.Tensor, label_dim: int) -> torch.Tensor | None:
    if not label_dim:
        return None
    # scatter_ instead of F.one_hot: the latter checks the label range, a host sync on CUDA.
    labels = labels.clamp_min(0).long().reshape(-1, 1)
    return torch.zeros(labels.shape[0], label_dim, device=labels.device).scatter_(1, labels, 1.0)


#----------------------------------------------------------------------------
# Resume.

def _resume(run: _Run) -> None:
    """Continue from run_dir/training-state.pt if present (same recipe, model and data required)."""
    state = files.load_state(run.run_dir)
    if state is None:
        return
    saved = json.loads(state["fingerprint_json"])
    if saved != run.fingerprint:
        diff = sorted(k for k in run.fingerprint if saved.get(k) != run.fingerprint[k])
        detail = {k: (saved.get(k), run.fingerprint[k]) for k in diff}
        raise UserError(f"{run.run_dir} holds a run with different {', '.join(diff)} ({detail} as (saved, now)); "
                        "resume with the same settings, or pass a new --run-dir.")
    run.net.load_state_dict(state["net"])
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.nimg, run.step = int(state["nimg"]), int(state["step"])
    run.loss_history = [list(x) for x in state["loss_history"]]
    run.last_loss = run.loss_history[-1][1] if run.loss_history else None
    # The saved pending loss is already summed over ranks: only rank 0 carries it on.
    run.pending = [float(v) for v in state["pending_loss"]] if run.env.is_main else [0.0, 0.0]
    files.restore_rng(state["rng"])
    if run.env.is_main:
        files.truncate_log(run.run_dir, run.nimg)


def _save_state(run: _Run) -> None:
    if run.env.is_main:
        files.save_state(run.run_dir, {
            "net": run.net.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
            "nimg": run.nimg, "step": run.step, "loss_history": run.loss_history, "rng": files.capture_rng(),
            "pending_loss": run.pending,  # a cancel between reports: the next report still averages the same steps
            "sampler": {"kind": "epoch-permutation", "seed": run.cfg.seed, "step": run.step,
                        "position": run.step * run.cfg.batch_size},
            "fingerprint_json": json.dumps(run.fingerprint), "train_config_json": json.dumps(run.cfg.to_dict()),
        })
    run.env.barrier()


def _save_checkpoint(run: _Run) -> Path:
    path = files.checkpoint_path(run.run_dir, run.nimg)
    if run.env.is_main:
        cfg = run.cfg
        training = {"nimg": run.nimg, "kimg": run.nimg / 1000, "budget_kimg": cfg.total_kimg, "lr": cfg.lr,
                    "batch_size": cfg.batch_size, "decoder_only": cfg.decoder_only, "precision": cfg.precision,
                    "world_size": run.env.world_size, "loss": cfg.loss or run.model_cfg.precond,
                    "last_loss": run.last_loss, "config": cfg.to_dict(), "run_dir": str(run.run_dir.resolve())}
        provenance = {"kind": "finetune" if run.parent else "train", "parent": run.parent,
                      "images_seen": run.nimg}
        save_model(path, run.ema, run.model_cfg, dataset=run.dataset.describe(), training=training,
                   provenance=provenance)
    run.env.barrier()
    return path


#----------------------------------------------------------------------------
# Steps.

def _batches(run: _Run, start_step: int):
    """Yield this rank's chunks (x, labels) in order from `start_step` (DataLoader if workers)."""
    sampler = ChunkSampler(run.sampler.order, run.sampler.batch_size, run.sampler.batch_gpu,
                           run.sampler.rounds, run.sampler.rank, start_step)
    if run.staged is not None:
        data, labels = run.staged
        for idx in sampler:
            # Only the indices travel; from pinned memory the copy is asynchronous (from pageable
            # memory CUDA would wait for the queued kernels first: a host sync per chunk).
            idx = torch.as_tensor(idx, dtype=torch.int64).pin_memory().to(data.device, non_blocking=True)
            yield data[idx], (labels[idx] if labels is not None else torch.full((len(idx),), -1))
        return
    if run.cfg.num_workers == 0:
        for idx in sampler:
            yield run.dataset.get_batch(idx)
        return
    loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=sampler, num_workers=run.cfg.num_workers,
                                         pin_memory=run.env.device.type == "cuda", persistent_workers=True)
    yield from loader


def _train_step(run: _Run, batches) -> torch.Tensor:
    """One optimiser step over the global batch; returns [sum of per-element losses, count] (this rank)."""
    env, cfg, s = run.env, run.cfg, run.sampler
    run.optimizer.zero_grad(set_to_none=True)
    acc = torch.zeros(2, dtype=torch.float64, device=env.device)
    for r in range(s.rounds):
        x, labels = next(batches)
        x = to_model_input(x).to(env.device, non_blocking=True)
        cond = _one_hot(labels, run.model_cfg.label_dim)
        cond = cond.to(env.device) if cond is not None else None
        gen = chunk_generators(cfg.seed, run.step, env.rank * s.rounds + r, env.device)
        sync = run.ddp.no_sync() if run.ddp is not None and r < s.rounds - 1 else contextlib.nullcontext()
        with sync:
            loss = run.loss_fn(run.ddp or run.net, x, cond, None, generator=gen)
            loss.sum().mul(1.0 / run.per_rank).backward()
        acc[0] += loss.detach().sum().double()
        acc[1] += loss.numel()
    for g in run.optimizer.param_groups:
        g["lr"] = cfg.lr * lr_factor(run.nimg, cfg.lr_rampup_kimg)
    for p in run.trainable:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.trainable, cfg.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.net, ema_beta(run.nimg, cfg.batch_size, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio))
    run.nimg += cfg.batch_size
    run.step += 1
    return acc


def _crossed(prev: int, now: int, interval_kimg: float | None) -> bool:
    if interval_kimg is None:
        return False
    n = max(int(round(interval_kimg * 1000)), 1)
    return now // n > prev // n


#----------------------------------------------------------------------------
# Entry point.

def train(model_cfg: ModelConfig | dict | None, dataset, cfg: TrainConfig | dict, run_dir,
          init_checkpoint=None, progress: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train (or fine-tune from `init_checkpoint`) until `cfg.total_kimg`; resumes from run_dir's state."""
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    if cfg.augment_p is None:  # unset: the base's recorded recipe decides, and the checkpoints record it
        cfg = dataclasses.replace(cfg, augment_p=resolve_augment_p(None, init_checkpoint)[0])
    run_dir = Path(run_dir)
    env = init_from_env(cfg.device)
    try:
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        env.barrier()
        run = _setup(model_cfg, dataset, cfg, run_dir, init_checkpoint, env)
        _resume(run)
        if env.distributed:
            run.ddp = nn.parallel.DistributedDataParallel(
                run.net, device_ids=[env.device] if env.device.type == "cuda" else None)
        run.staged = _stage(run.dataset, env.device, cfg.num_workers)
        result = _loop(run, progress, should_stop)
        # All ranks reach the teardown together: gloo aborts a rank ("terminate called without an active
        # exception") whose peer destroys the group while it still uses it. Not on an error: it would hang.
        env.barrier()
        return result
    finally:
        env.close()


def _report(run: _Run, acc: torch.Tensor, clock: list, ckpt: bool, save: bool, progress) -> None:
    """Average the loss since the last report over ranks, log it, save what is due, call `progress`."""
    env, cfg = run.env, run.cfg
    total_loss, count = env.all_reduce_sum(acc.clone()).tolist()
    acc.zero_()
    now = time.perf_counter()
    rate = (run.nimg - clock[1]) / max(now - clock[0], 1e-9)
    clock[:] = [now, run.nimg]
    run.last_loss = total_loss / max(count, 1)
    run.loss_history.append([run.nimg, run.last_loss])
    if env.is_main:
        files.append_log(run.run_dir, {"nimg": run.nimg, "kimg": run.nimg / 1000, "step": run.step,
                                       "loss": run.last_loss, "images_per_s": rate,
                                       "lr": run.optimizer.param_groups[0]["lr"], "time": time.time()})
    path = _save_checkpoint(run) if ckpt else None
    if save:
        _save_state(run)
    if progress is not None and env.is_main:
        progress({"kimg": run.nimg / 1000, "total_kimg": cfg.total_kimg, "nimg": run.nimg, "step": run.step,
                  "loss": run.last_loss, "images_per_s": rate,
                  "eta_s": max(cfg.total_nimg - run.nimg, 0) / max(rate, 1e-9),
                  "checkpoint": str(path) if path else None})


def _loop(run: _Run, progress, should_stop) -> dict[str, Any]:
    env, cfg, total = run.env, run.cfg, run.cfg.total_nimg
    batches = _batches(run, run.step)
    acc = torch.tensor(run.pending, dtype=torch.float64, device=env.device)
    t_start, n_start = time.perf_counter(), run.nimg
    clock = [t_start, n_start]
    status = "done"
    try:
        while run.nimg < total:
            # Several processes agree on a stop only at report steps: the vote is a collective and
            # a host sync, which every step would pay for otherwise.
            if should_stop is not None and (not env.distributed or run.step % cfg.log_every == 0) \
                    and env.any(bool(should_stop())):
                status = "cancelled"
                break
            prev = run.nimg
            t_step = time.perf_counter()
            acc += _train_step(run, batches)
            if run.first_step_s is None:
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                run.first_step_s = time.perf_counter() - t_step
            finished = run.nimg >= total
            ckpt = finished or _crossed(prev, run.nimg, cfg.checkpoint_kimg)
            save = ckpt if cfg.state_kimg is None else finished or _crossed(prev, run.nimg, cfg.state_kimg)
            if run.step % cfg.log_every == 0 or ckpt or save:
                _report(run, acc, clock, ckpt, save, progress)
    finally:
        batches.close()  # stops DataLoader workers
    if status == "cancelled":
        run.pending = env.all_reduce_sum(acc.clone()).tolist()
        _save_state(run)
    elif env.any(not files.checkpoint_path(run.run_dir, run.nimg).exists()):
        _save_checkpoint(run)  # a rerun of a finished run whose final checkpoint was deleted
    elapsed = time.perf_counter() - t_start
    return {"status": status, "nimg": run.nimg, "kimg": run.nimg / 1000, "total_kimg": cfg.total_kimg,
            "steps": run.step, "run_dir": str(run.run_dir), "loss": run.last_loss,
            "loss_history": run.loss_history, "images_per_s": (run.nimg - n_start) / max(elapsed, 1e-9),
            "checkpoints": [str(p) for _, p in files.list_checkpoints(run.run_dir)],
            "final_checkpoint": str(files.checkpoint_path(run.run_dir, run.nimg)) if status == "done" else None,
            "parent": run.parent, "wall_s": elapsed, "first_step_s": run.first_step_s, "compiled": cfg.compile,
            "device": str(env.device)}
