"""Where the bundled demo assets live and the recipe that rebuilds them."""
from __future__ import annotations

from ..models import ModelConfig
from ..networks.songunet import songunet_config
from ..resources import ASSETS
from ..sampler import SamplerConfig
from ..shift import mix_counts, suggest_aux_mix

DEMO_MODEL = ASSETS / "demo" / "digits_base.safetensors"
DEMO_CLASSIFIER = ASSETS / "digits_classifier.safetensors"
RESOLUTION = 8

# Sampler used everywhere in the demo: 12 Heun steps (NFE 23) is plenty at 8x8.
DEMO_SAMPLER = SamplerConfig(num_steps=12)

# Digit groups of the demo's headline shift.
LOW, HIGH = "0-4", "5-9"


def demo_model_config() -> ModelConfig:
    """The demo's SongUNet: the 'tiny' preset at 8x8 grey."""
    return ModelConfig(backbone="songunet",
                       network=songunet_config("tiny", img_resolution=RESOLUTION, img_channels=1))


def base_recipe(total_kimg: float = 300.0) -> dict:
    """Training recipe of the demo base model, stage 1 (TrainConfig fields)."""
    return dict(batch_size=128, lr=2e-3, lr_rampup_kimg=10, ema_halflife_kimg=20, ema_rampup_ratio=0.1,
                total_kimg=total_kimg, checkpoint_kimg=None, seed=0, device="cpu")


def cooldown_recipe(total_kimg: float = 50.0) -> dict:
    """Stage 2: the same data at a 5x lower learning rate (EDM keeps lr constant; on this small
    budget a short low-lr stage lifts the share of confidently classified samples)."""
    return {**base_recipe(total_kimg), "lr": 4e-4, "lr_rampup_kimg": 0, "ema_halflife_kimg": 10, "seed": 1}


def plan_demo_shift(pool_groups, target_high: float, omega0: float, n_s: int) -> dict:
    """Base fractions of a labelled pool (uncertain samples left out), the target, the suggested auxiliary
    mix a = p - (q - p)/omega0 and its counts for an S of n_s images."""
    decided = [g for g in pool_groups if g != "uncertain"]
    p_high = decided.count(HIGH) / len(decided)
    base = {LOW: 1 - p_high, HIGH: p_high}
    target = {LOW: 1 - target_high, HIGH: target_high}
    mix = suggest_aux_mix(base, target, omega0)
    return {"base": base, "target": target, "mix": mix, "counts": mix_counts(mix, n_s)}
