"""CLI: `train` (a model from scratch on a dataset) and `finetune` (a base checkpoint on a synthetic set).

Settings resolve in this order, later winning: TrainConfig defaults, (finetune) the base
checkpoint's own recipe, --config JSON, explicit flags. --dry-run prints the result and stops.
Ctrl-C (or SIGTERM) saves a resumable state; rerunning the same command continues exactly.
A finished run ends with one line: wall time, mean images/s, final loss and the final EMA
checkpoint, also copied to RUN_DIR/checkpoint-final.safetensors (and to --out when given).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
from pathlib import Path

from ..errors import UserError
from .progress import Progress, _duration

# flag dest -> TrainConfig field
_FLAG_FIELDS = {"batch": "batch_size", "batch_gpu": "batch_gpu", "lr": "lr", "lr_rampup_kimg": "lr_rampup_kimg",
                "ema_halflife_kimg": "ema_halflife_kimg", "ema_rampup_ratio": "ema_rampup_ratio",
                "checkpoint_kimg": "checkpoint_kimg", "state_kimg": "state_kimg", "seed": "seed",
                "loss": "loss", "precision": "precision", "device": "device", "dropout": "dropout",
                "grad_clip": "grad_clip", "workers": "num_workers", "log_every": "log_every",
                "augment_p": "augment_p"}


def _common(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--run-dir", required=True, help="folder for checkpoints, training-state.pt, log.jsonl; "
                                                    "rerun with the same folder to resume")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-kimg", type=float, help="training budget in thousands of images seen")
    budget.add_argument("--budget-mi", type=float, help="training budget in millions of images seen (Mi)")
    p.add_argument("--batch", type=int, help="global batch size (split over torchrun processes)")
    p.add_argument("--batch-gpu", type=int, help="micro-batch per process (gradient accumulation)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-rampup-kimg", type=float)
    p.add_argument("--ema-halflife-kimg", type=float)
    p.add_argument("--ema-rampup-ratio", type=float)
    p.add_argument("--checkpoint-kimg", type=float, help="keep an EMA checkpoint every N kimg (budget sweeps)")
    p.add_argument("--state-kimg", type=float, help="save the resumable state every N kimg")
    p.add_argument("--seed", type=int)
    p.add_argument("--loss", choices=["edm", "vp"], help="default: matches the model's preconditioning")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="fp32 (default) or bf16 autocast of the network (CUDA; CPU autocast on a CPU)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network; the first step pays the compilation (its time is printed)")
    p.add_argument("--tf32", action="store_true", default=None, help="allow TF32 on CUDA")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dropout", type=float, help="override the network's dropout")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--augment-p", type=float, help="EDM's non-leaking augmentation probability (EDM: 0.12 CIFAR-10, "
                   "0.15 FFHQ-64; needs a network with 9 augment labels); default: the base's recorded recipe "
                   "when fine-tuning, off when training from scratch")
    p.add_argument("--workers", type=int, help="DataLoader workers decoding image files")
    p.add_argument("--log-every", type=int, help="steps between loss reports")
    p.add_argument("--config", help="TrainConfig as JSON text or a .json file (flags override it)")
    p.add_argument("--out", help="also copy the final EMA checkpoint to this .safetensors path")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")


def register(sub) -> None:
    """Add the `train` and `finetune` subcommands."""
    t = sub.add_parser("train", help="train a diffusion model on a dataset (budget in images seen)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(t, "dataset: digits, digits:16, digits:32:bilinear, an image folder/zip (EDM layout) or an .npz")
    arch = t.add_mutually_exclusive_group()
    arch.add_argument("--arch", default=None,
                      help="preset: tiny (default), cifar10, ffhq64 (SongUNet, sized to the data) or mlp (points)")
    arch.add_argument("--model-config", help="ModelConfig as JSON text or a .json file")
    t.add_argument("--precond", choices=["edm", "vp"], default="edm")
    t.add_argument("--cond", action="store_true", help="class-conditional on the dataset's labels")
    t.set_defaults(run=run_train)

    f = sub.add_parser("finetune", help="fine-tune a base checkpoint on a (synthetic) set: the SIMS auxiliary "
                                        "model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--base", required=True, help="base checkpoint (.safetensors)")
    _common(f, "synthetic set: image folder/zip (EDM layout) or .npz of the base model's samples")
    f.add_argument("--decoder-only", action="store_true", default=None,
                   help="train only the decoder (shared-encoder SIMS sampling)")
    f.set_defaults(run=run_finetune)


#----------------------------------------------------------------------------

def _json_arg(text: str, what: str) -> dict:
    """JSON object from inline text or a file path."""
    try:
        raw = text if text.lstrip().startswith("{") else Path(text).read_text()
    except OSError as e:
        raise UserError(f"Cannot read {what} file {text!r} ({e}); pass a .json file or inline JSON.") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} must be a JSON object, got {type(data).__name__}.")
    return data


def _train_config(args, inherited: dict | None = None):
    from ..training import TrainConfig
    data = dict(inherited or {})
    if args.config:
        data.update(_json_arg(args.config, "--config"))
    for dest, key in _FLAG_FIELDS.items():
        if getattr(args, dest, None) is not None:
            data[key] = getattr(args, dest)
    if args.tf32:
        data["tf32"] = True
    if getattr(args, "compile", None):
        data["compile"] = True
    if getattr(args, "decoder_only", None):
        data["decoder_only"] = True
    if args.budget_kimg is not None:
        data["total_kimg"] = args.budget_kimg
    elif args.budget_mi is not None:
        data["total_kimg"] = args.budget_mi * 1000
    elif "total_kimg" not in data:
        raise UserError("Give a training budget: --budget-kimg N (thousands of images) or --budget-mi N.")
    return TrainConfig.from_dict(data)


def _model_config(args, dataset):
    from ..models import ModelConfig
    if args.model_config:
        return ModelConfig.from_dict(_json_arg(args.model_config, "--model-config"))
    arch = args.arch or ("mlp" if len(dataset.shape) == 1 else "tiny")
    label_dim = dataset.label_dim if args.cond else 0
    if args.cond and not label_dim:
        raise UserError(f"--cond needs a labelled dataset; '{dataset.name}' has no labels.")
    if arch == "mlp":
        if len(dataset.shape) != 1:
            raise UserError(f"--arch mlp is for flat data (points); '{dataset.name}' holds images "
                            f"{dataset.shape}. Use --arch tiny.")
        network = {"dim": dataset.shape[0]}
        return ModelConfig(backbone="mlp", network=network, precond=args.precond, label_dim=label_dim)
    from ..networks.songunet import songunet_config
    if len(dataset.shape) != 3:
        raise UserError(f"--arch {arch} is an image UNet but '{dataset.name}' holds points; use --arch mlp.")
    c, r, _ = dataset.shape
    network = songunet_config(arch, img_resolution=r, img_channels=c)
    return ModelConfig(backbone="songunet", network=network, precond=args.precond, label_dim=label_dim)


def _parent_recipe(base_path: str) -> dict:
    from ..checkpoints.native import read_metadata
    from ..training.config import inherited_recipe
    return inherited_recipe(read_metadata(base_path).get("training"))


def _execute(model_cfg, dataset, cfg, args, base=None) -> int:
    from ..training import train
    from ..training.state import STATE_NAME
    resolved = {"command": args.command, "data": dataset.describe(), "run_dir": args.run_dir,
                "resumes": (Path(args.run_dir) / STATE_NAME).exists(), "base": base,
                "model": model_cfg.to_dict() if model_cfg is not None else "from base checkpoint",
                "training": cfg.to_dict()}
    if args.dry_run:
        print(json.dumps(resolved, indent=2))
        return 0
    out = _out_path(args)
    stop = _StopFlag()
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks
    bar = Progress(cfg.total_kimg, "kimg", args.command, enabled=main_rank, fmt="{:.2f}")

    def progress(info):
        bar.update(info["kimg"], loss=f"{info['loss']:.4f}", img_s=f"{info['images_per_s']:.0f}")
        if info["checkpoint"]:
            bar.write(f"checkpoint {info['checkpoint']}")

    t0 = time.perf_counter()
    with stop:
        result = train(model_cfg, dataset, cfg, args.run_dir, init_checkpoint=base, progress=progress,
                       should_stop=stop)
    wall = time.perf_counter() - t0
    bar.close()
    if not main_rank:
        return 130 if result["status"] == "cancelled" else 0
    if result["status"] == "cancelled":
        print(f"cancelled at {result['kimg']:.3f} kimg; state saved. Rerun the same command to resume.")
        return 130
    final = _publish(Path(result["final_checkpoint"]), Path(args.run_dir), out)
    if cfg.compile and result.get("first_step_s") is not None:
        print(f"compile: the first step (with torch.compile's compilation) took {result['first_step_s']:.1f} s")
    loss = "n/a" if result["loss"] is None else f"{result['loss']:.4f}"
    print(f"{args.command} done on {result['device']}: {result['kimg']:.3f} kimg, wall {_duration(wall)}, "
          f"mean {result['images_per_s']:.0f} images/s, final loss {loss}, checkpoint {final}")
    return 0


def _out_path(args) -> Path | None:
    if not getattr(args, "out", None):
        return None
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out names the final checkpoint's copy; give a path ending in .safetensors "
                        f"(got {args.out!r}).")
    return out


def _publish(final: Path, run_dir: Path, out: Path | None) -> Path:
    """Copy the final EMA checkpoint to the stable RUN_DIR/checkpoint-final.safetensors (and --out);
    written to a temporary name first, so a kill never leaves a half-written file under the name."""
    targets = [run_dir / "checkpoint-final.safetensors"] + ([out] if out is not None else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(final, tmp)
        tmp.replace(target)
    return targets[-1]


class _StopFlag:
    """should_stop() for train(): set by the first Ctrl-C/SIGTERM; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.stop, self._old = False, {}

    def __call__(self) -> bool:
        return self.stop

    def _handle(self, signum, frame):
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True
        print("\nstopping after this step (saving a resumable state); Ctrl-C again to abort", flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_train(args) -> int:
    from ..data import open_dataset
    dataset = open_dataset(args.data)
    cfg = _train_config(args)
    return _execute(_model_config(args, dataset), dataset, cfg, args)


def run_finetune(args) -> int:
    from ..data import open_dataset
    inherited = _parent_recipe(args.base)  # also checks that the base is a readable checkpoint
    dataset = open_dataset(args.data)
    cfg = _train_config(args, inherited)
    return _execute(None, dataset, cfg, args, base=args.base)
