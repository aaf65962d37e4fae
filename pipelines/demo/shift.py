"""`demo-shift`: the whole SIMS distribution shift on the digits world, without the UI.

pool -> labels -> base fractions -> target -> suggested auxiliary mix -> build S -> fine-tune
the auxiliary model on S -> omega sweep (group fraction, FD-digits overall and per group) -> report.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..attributes.digits import load_digits_classifier
from ..attributes.groupings import Grouping
from ..checkpoints.native import load_model
from ..data import DigitsDataset, TensorImageDataset
from ..errors import UserError
from ..metrics.floor import FEATURE_DIMS, small_sample_warning
from ..generate import generate_images, generate_sims
from ..attributes.groupings import wilson_interval
from ..shift import closest_omega, find_omega
from ..synthetic_set import fill_set
from ..training import TrainConfig, list_checkpoints, train
from .assets import DEMO_CLASSIFIER, DEMO_MODEL, DEMO_SAMPLER, HIGH, LOW, RESOLUTION, base_recipe, plan_demo_shift
from .evaluate import fd_digits

FD_DIMS = FEATURE_DIMS["FD-digits"]
GROUPING = Grouping("digits 0-4 vs 5-9", {LOW: list("01234"), HIGH: list("56789")})


@dataclass
class ShiftSettings:
    """Knobs of the end-to-end demo (defaults fit 2 CPU cores in minutes)."""
    target_high: float = 0.7          # target share of digits 5-9
    omega0: float = 1.0               # planned guidance for the auxiliary-mix guess
    pool_size: int = 1000
    n_s: int = 1000                   # size of the synthetic set S
    finetune_kimg: float = 60.0       # auxiliary budget (images seen / 1000)
    omegas: list = field(default_factory=lambda: [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    eval_samples: int = 500           # fixed seeds per omega
    threshold: float = 0.5            # group probability below this -> 'uncertain'
    seed: int = 0
    find_iterations: int = 4          # bisection points of find-omega after the sweep (0: none)


class DemoWorld:
    """Base model, classifier and real-data features of the digits world."""

    def __init__(self, model_path=DEMO_MODEL, classifier_path=DEMO_CLASSIFIER):
        self.model_path = Path(model_path)
        self.base, _ = load_model(self.model_path)
        self.classifier = load_digits_classifier(classifier_path)
        real = DigitsDataset(RESOLUTION)
        real_images = real.images.permute(0, 2, 3, 1).numpy()  # uint8 NHWC
        self.real_features = self.classifier.features(real_images)
        self.real_groups, _ = self.label(real_images)

    def label(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(group name per image, group probabilities) under the demo grouping."""
        probs = self.classifier.predict_proba(images)
        return GROUPING.assign(probs, self.classifier.classes, threshold=0.5)

    def measure(self, images) -> dict:
        """High-group fraction and FD-digits overall and per group against the real digits."""
        groups, _ = self.label(images)
        feats = self.classifier.features(images)
        decided = groups != "uncertain"
        k, n = int((groups[decided] == HIGH).sum()), int(decided.sum())
        out = {"fraction_high": k / n if n else float("nan"), "ci_high": list(wilson_interval(k, n)),
               "uncertain": float((~decided).mean()), "fd_digits": fd_digits(feats, self.real_features)}
        for g in (LOW, HIGH):
            mine = groups == g
            out[f"fd_digits_{g}"] = (fd_digits(feats[mine], self.real_features[self.real_groups == g])
                                     if mine.sum() > 20 else float("nan"))
        # FD-digits from fewer samples than its 128 feature dimensions is mostly small-sample bias: say so.
        sizes = {"overall": len(feats), **{f"group {g}": int((groups == g).sum()) for g in (LOW, HIGH)}}
        out["warnings"] = [w for k, n in sizes.items()
                           if (w := small_sample_warning(n, FD_DIMS, k, "FD-digits")) is not None]
        return out


def run_demo_shift(settings: ShiftSettings, work_dir, log: Callable[[str], None] = print,
                   world: DemoWorld | None = None) -> dict:
    """Run the shift end to end; writes report.json under `work_dir` and returns the report."""
    t0 = time.time()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    world = world or DemoWorld()
    sampler = DEMO_SAMPLER

    # 1. Pool of base samples, labelled.
    pool_images = [generate_images(world.base, range(settings.pool_size), sampler, batch_size=250)]
    pool_groups = list(world.label(pool_images[0])[0])
    plan = plan_demo_shift(pool_groups, settings.target_high, settings.omega0, settings.n_s)
    base, target, mix, counts = plan["base"], plan["target"], plan["mix"], plan["counts"]
    p_high = base[HIGH]
    log(f"base fraction of {HIGH}: {p_high:.3f}  target: {settings.target_high:.3f}  "
        f"suggested auxiliary mix: {HIGH} {mix[HIGH]:.3f} ({counts[HIGH]} of {settings.n_s})")

    # 2. Build S, generating more when a group runs short.
    next_seed = settings.pool_size

    def grow(n):
        nonlocal next_seed
        imgs = generate_images(world.base, range(next_seed, next_seed + n), sampler, batch_size=250)
        next_seed += n
        pool_images.append(imgs)
        return list(world.label(imgs)[0])

    members, pool_groups = fill_set(pool_groups, counts, grow, max_pool=20 * settings.n_s)
    all_images = np.concatenate(pool_images)
    chosen = sorted(i for idx in members.values() for i in idx)
    s_images = all_images[chosen]
    s_fraction = float(np.mean([pool_groups[i] == HIGH for i in chosen]))
    log(f"built S: {len(chosen)} images, {HIGH} fraction {s_fraction:.3f} (pool grew to {len(pool_groups)})")

    # 3. Fine-tune the auxiliary model on S only.
    recipe = {**base_recipe(settings.finetune_kimg), "lr_rampup_kimg": 0, "seed": settings.seed,
              "checkpoint_kimg": settings.finetune_kimg / 3}
    t_ft = time.time()
    result = train(None, TensorImageDataset(s_images), TrainConfig(**recipe), work_dir / "aux",
                   init_checkpoint=world.model_path)
    aux_ckpt = list_checkpoints(work_dir / "aux")[-1][1]
    aux, _ = load_model(aux_ckpt)
    log(f"fine-tuned auxiliary for {result['kimg']:.1f} kimg in {time.time() - t_ft:.0f} s "
        f"({result['images_per_s']:.0f} img/s)")

    # 4. Omega sweep on fixed seeds (same noise at every omega).
    seeds = range(10_000_000, 10_000_000 + settings.eval_samples)
    sweep = []
    for omega in settings.omegas:
        images, _ = generate_sims(world.base, aux, omega, seeds, sampler, batch_size=250)
        row = {"omega": omega, **world.measure(images)}
        sweep.append(row)
        log(f"omega {omega:+.2f}: {HIGH} fraction {row['fraction_high']:.3f}  FD-digits {row['fd_digits']:.2f} "
            f"({LOW} {row[f'fd_digits_{LOW}']:.2f}, {HIGH} {row[f'fd_digits_{HIGH}']:.2f})")
        for w in row["warnings"]:
            log(f"  WARNING: {w}")
    # 5. Find omega for the target: the sweep's points are reused, bisection adds a few where it crosses.
    def measure(omega):
        images, _ = generate_sims(world.base, aux, omega, seeds, sampler, batch_size=250)
        row = world.measure(images)
        return row["fraction_high"], tuple(row["ci_high"])

    search = find_omega(measure, settings.target_high, iterations=settings.find_iterations,
                        known={r["omega"]: (r["fraction_high"], tuple(r["ci_high"])) for r in sweep})
    log(f"find omega: {search.describe(HIGH)} ({len(search.measured)} extra points)")
    best_omega, best_fraction = closest_omega([r["omega"] for r in sweep], [r["fraction_high"] for r in sweep],
                                              settings.target_high)
    at = {r["omega"]: r for r in sweep}
    zero = at.get(0.0)
    if zero is None:
        raise UserError("The omega grid must include 0 (the base model) for the report.")
    report = {"settings": asdict(settings), "base_fractions": base, "target": target, "aux_mix": mix,
              "aux_counts": counts, "s_fraction_high": s_fraction, "pool_size": len(pool_groups),
              "aux_checkpoint": str(aux_ckpt), "finetune": {k: result[k] for k in ("kimg", "loss", "images_per_s")},
              "sweep": sweep, "closest_omega": best_omega, "closest_fraction": best_fraction,
              "fd_digits_at_0": zero["fd_digits"], "fd_digits_at_closest": at[best_omega]["fd_digits"],
              "max_move_toward_target": max((r["fraction_high"] - zero["fraction_high"]) *
                                            np.sign(settings.target_high - zero["fraction_high"])
                                            for r in sweep if 0 <= r["omega"] <= 3),
              "find_omega": {"omega": search.omega, "fraction": search.fraction, "interval": search.interval,
                             "status": search.status, "measured": search.measured, "message": search.describe(HIGH)},
              "wall_seconds": round(time.time() - t0, 1)}
    (work_dir / "report.json").write_text(json.dumps(report, indent=1))
    log(f"closest omega to target: {best_omega} ({HIGH} fraction {best_fraction:.3f}); FD-digits "
        f"{report['fd_digits_at_0']:.2f} at omega 0 -> {report['fd_digits_at_closest']:.2f} there; "
        f"largest move toward target: {100 * report['max_move_toward_target']:.1f} points; "
        f"wall time {report['wall_seconds']:.0f} s")
    return report
