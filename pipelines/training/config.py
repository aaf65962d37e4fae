"""TrainConfig: the training recipe and run settings, validated at the boundary."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import strict_from_dict, to_dict
from ..errors import UserError

# Settings that define the optimisation trajectory: a resumed run must keep them, or it would
# silently continue a different experiment. Budget, intervals, device and workers may change.
RECIPE_KEYS = ("batch_size", "batch_gpu", "lr", "lr_rampup_kimg", "ema_halflife_kimg", "ema_rampup_ratio",
               "seed", "loss", "decoder_only", "dropout", "grad_clip")
# What a fine-tune inherits from its base's recorded recipe (SIMS: "the base's training recipe"); the
# CLI's `finetune` and the studio both read it through `inherited_recipe`.
INHERITED_KEYS = ("batch_size", "lr", "lr_rampup_kimg", "ema_halflife_kimg", "ema_rampup_ratio", "loss")


@dataclass
class TrainConfig:
    """Training recipe (EDM defaults where they make sense at small scale; see field comments)."""
    batch_size: int = 64                 # global batch (all ranks together)
    batch_gpu: int | None = None         # micro-batch per rank and accumulation round; None = batch/world
    lr: float = 1e-3
    lr_rampup_kimg: float = 10.0         # lr * min(nimg / (rampup*1000), 1); EDM used 10000 for 200 Mimg; 0 = none
    ema_halflife_kimg: float = 500.0     # EDM
    ema_rampup_ratio: float | None = 0.05  # EDM: half-life = min(halflife, ratio * nimg); None = no ramp
    total_kimg: float = 100.0            # budget in thousands of images seen
    checkpoint_kimg: float | None = None  # EMA checkpoint interval (kept for budget sweeps); None = final only
    state_kimg: float | None = None      # resumable-state interval; None = at every checkpoint
    log_every: int = 10                  # steps between loss reports (log.jsonl, progress callback)
    seed: int = 0
    loss: str | None = None              # 'edm' | 'vp'; None = match the model's preconditioning
    decoder_only: bool = False           # train only model.decoder_parameters() (shared-encoder SIMS)
    precision: str = "fp32"              # 'fp32' | 'bf16' (bf16 autocast of the network; CPU autocast on a CPU)
    tf32: bool = False                   # allow TF32 matmul/cuDNN on CUDA (EDM keeps it off)
    device: str = "auto"                 # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'
    dropout: float | None = None         # override the backbone's dropout
    grad_clip: float | None = None       # max global grad norm; None = no clipping (EDM)
    num_workers: int = 0                 # DataLoader workers for decoding image files
    compile: bool = False                # torch.compile the network (first step pays the compilation)
    augment_p: float | None = None       # EDM non-leaking augmentation probability (training/augment.py);
                                         # None = the base checkpoint's recorded recipe (0 from scratch)

    def __post_init__(self):
        if not (isinstance(self.total_kimg, (int, float)) and math.isfinite(self.total_kimg)) \
                or self.total_kimg <= 0:
            raise UserError(f"budget must be > 0 kimg (got total_kimg={self.total_kimg!r}); "
                            "e.g. --budget-kimg 100 trains on 100,000 images.")
        _positive("batch_size", self.batch_size, int)
        if self.batch_gpu is not None:
            _positive("batch_gpu", self.batch_gpu, int)
        _positive("lr", self.lr, float)
        _positive("log_every", self.log_every, int)
        for name in ("lr_rampup_kimg", "ema_halflife_kimg"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0 (got {getattr(self, name)}).")
        for name in ("checkpoint_kimg", "state_kimg", "ema_rampup_ratio", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"{name} must be > 0 or null (got {value}).")
        if self.loss not in (None, "edm", "vp"):
            raise UserError(f"loss must be 'edm' or 'vp' (got {self.loss!r}).")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"precision must be 'fp32' or 'bf16' (got {self.precision!r}).")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1) (got {self.dropout}).")
        if self.augment_p is not None and not (isinstance(self.augment_p, (int, float)) and 0 <= self.augment_p <= 1):
            raise UserError(f"augment_p must be in [0, 1] or null (got {self.augment_p!r}).")
        if self.num_workers < 0:
            raise UserError(f"num_workers must be >= 0 (got {self.num_workers}).")

    @property
    def total_nimg(self) -> int:
        return int(round(self.total_kimg * 1000))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainConfig":
        return strict_from_dict(cls, data, "training config")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        recipe = {k: getattr(self, k) for k in RECIPE_KEYS}
        if self.augment_p:  # only when on, so runs saved before the option existed still resume
            recipe["augment_p"] = self.augment_p
        return recipe


def inherited_recipe(training: dict | None) -> dict[str, Any]:
    """The inherited part of a checkpoint's `training` metadata: its TrainConfig when recorded, else the
    summary fields older checkpoints carry ({} when it records none). A recorded null is inherited too
    (e.g. ema_rampup_ratio = None: the base ran without the ramp)."""
    training = training or {}
    recorded = training.get("config") or training
    return {k: recorded[k] for k in INHERITED_KEYS if k in recorded}


def _positive(name: str, value, kind) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
            or (kind is int and int(value) != value):
        raise UserError(f"{name} must be a positive {'integer' if kind is int else 'number'} (got {value!r}).")


def lr_factor(nimg: int, rampup_kimg: float) -> float:
    """EDM lr ramp-up: min(nimg / (rampup_kimg * 1000), 1); no ramp when rampup_kimg == 0."""
    if rampup_kimg <= 0:
        return 1.0
    return min(nimg / (rampup_kimg * 1000), 1.0)

