"""`build-demo`: rebuild the bundled demo classifier and base model from scikit-learn's digits."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..attributes.digits import build_digits_classifier, load_digits_classifier
from ..data import DigitsDataset
from ..generate import generate_images
from ..training import TrainConfig, list_checkpoints, train
from .assets import (DEMO_CLASSIFIER, DEMO_MODEL, DEMO_SAMPLER, RESOLUTION, base_recipe, cooldown_recipe,
                     demo_model_config)
from .evaluate import sample_quality


def build_demo(model_path=DEMO_MODEL, classifier_path=DEMO_CLASSIFIER, total_kimg: float = 300.0,
               cooldown_kimg: float = 50.0, rebuild_classifier: bool = False, eval_samples: int = 1000,
               progress: Callable[[dict], None] | None = None) -> dict:
    """Train the demo classifier (if missing or asked) and the demo base model; returns measured facts."""
    t0 = time.time()
    report: dict = {}
    classifier_path, model_path = Path(classifier_path), Path(model_path)
    if rebuild_classifier or not classifier_path.exists():
        report["classifier"] = build_digits_classifier(classifier_path)
    report["classifier_seconds"] = round(time.time() - t0, 1)

    work = Path(tempfile.mkdtemp(prefix="sims-demo-base-"))
    try:
        # Stage 1 from scratch, stage 2 a low-lr cool-down from stage 1's EMA (see assets.cooldown_recipe).
        t1 = time.time()
        first = train(demo_model_config(), DigitsDataset(RESOLUTION), TrainConfig(**base_recipe(total_kimg)),
                      work / "stage1", progress=progress)
        report["stage1"] = _summary(first, t1)
        t2 = time.time()
        second = train(None, DigitsDataset(RESOLUTION), TrainConfig(**cooldown_recipe(cooldown_kimg)),
                       work / "stage2", init_checkpoint=list_checkpoints(work / "stage1")[-1][1], progress=progress)
        report["stage2_cooldown"] = _summary(second, t2)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(list_checkpoints(work / "stage2")[-1][1], model_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["base_quality"] = evaluate_demo_model(model_path, classifier_path, eval_samples)
    report["total_seconds"] = round(time.time() - t0, 1)
    (model_path.parent / "build_report.json").write_text(json.dumps(report, indent=1))
    return report


def _summary(result: dict, t0: float) -> dict:
    return {"kimg": result["kimg"], "final_loss": result["loss"], "images_per_s": round(result["images_per_s"], 1),
            "seconds": round(time.time() - t0, 1)}


def evaluate_demo_model(model_path=DEMO_MODEL, classifier_path=DEMO_CLASSIFIER, n: int = 1000) -> dict:
    """Confident-class fraction and class-histogram distance of `n` samples (seeds 0..n-1)."""
    from ..checkpoints.native import load_model
    model, _ = load_model(model_path)
    images = generate_images(model, range(n), DEMO_SAMPLER, batch_size=250)
    probs = load_digits_classifier(classifier_path).predict_proba(images)
    return {"samples": n, **sample_quality(probs, DigitsDataset(RESOLUTION).labels)}
