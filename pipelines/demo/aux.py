"""`build-demo-aux`: the bundled example auxiliary model ("70% of 5–9") and its precomputed preview grid.

A newcomer's first studio start registers these, so the Guide scrubs omega at once. The build
runs the same steps a user would: pool of base samples -> labels (digits 0–4 vs 5–9) -> base
fractions -> suggested auxiliary mix for the target -> S with that mix (growing the pool when a
group runs short) -> fine-tune of the base on S only -> the 17 slider positions of omega rendered
over the Guide's 64 preview seeds.

Shipped size: the auxiliary is stored as its difference from the demo base in float16 (the
fine-tune moves weights little, so the difference keeps ~11 significant bits where a float16 copy
of the weights would keep them of the whole value); the previews are rendered from the
reconstructed weights, so they are exactly what the studio renders from the registered model.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..checkpoints.download import sha256_file
from ..checkpoints.native import load_model, metadata_json, read_metadata, save_model
from ..data import TensorImageDataset
from ..errors import UserError
from ..generate import generate_images, generate_sims
from ..models import ModelConfig
from ..sampler import SamplerConfig
from ..synthetic_set import fill_set
from ..training import TrainConfig, list_checkpoints, train
from .assets import ASSETS, DEMO_CLASSIFIER, DEMO_MODEL, DEMO_SAMPLER, HIGH, LOW, base_recipe, plan_demo_shift

DEMO_AUX = ASSETS / "demo" / "digits_aux_70pct_5-9.diff.safetensors"
DEMO_PREVIEWS = ASSETS / "demo" / "digits_aux_previews.npz"
AUX_REPORT = ASSETS / "demo" / "aux_build_report.json"
DIFF_FORMAT = "sims-model-diff/1"

# The Guide's slider (-1..3 in steps of 0.25) and preview grid (seeds 0..63, the demo's 12 steps, whole
# trajectory guided, separate encoders): the studio looks previews up by exactly these settings.
PREVIEW_OMEGAS = [round(-1.0 + 0.25 * i, 4) for i in range(17)]
PREVIEW_SEEDS = list(range(64))
PREVIEW_STEPS = 12
PREVIEW_FIRST_CHUNK, PREVIEW_BATCH = 16, 64


@dataclass
class AuxRecipe:
    """What the bundled example was built with (recorded in the checkpoint and the report)."""
    target_high: float = 0.7      # target share of digits 5-9
    omega0: float = 1.0           # planned omega of the auxiliary-mix guess
    pool_size: int = 1000         # base samples labelled first (seeds 0..pool_size-1)
    n_s: int = 1000               # size of S
    budget_kimg: float = 40.0     # auxiliary fine-tune budget
    threshold: float = 0.5        # group probability below this -> 'uncertain'
    seed: int = 0


def preview_chunks(n: int) -> list[int]:
    """Chunk sizes the studio renders a preview grid in (16 seeds first, then batches of 64): same pixels."""
    sizes = [min(n, PREVIEW_FIRST_CHUNK)]
    while sum(sizes) < n:
        sizes.append(min(PREVIEW_BATCH, n - sum(sizes)))
    return sizes


def render_preview(base, aux, omega: float, seeds=PREVIEW_SEEDS, steps: int = PREVIEW_STEPS,
                   device: str = "cpu") -> np.ndarray:
    """uint8 NHWC grid samples at omega, computed chunk by chunk as the studio computes a preview."""
    sampler, parts, done = SamplerConfig(num_steps=int(steps)), [], 0
    for size in preview_chunks(len(seeds)):
        chunk = list(seeds[done:done + size])
        if float(omega) == 0.0:  # the base alone (as the studio renders omega = 0)
            parts.append(generate_images(base, chunk, sampler, batch_size=PREVIEW_BATCH, device=device))
        else:
            parts.append(generate_sims(base, aux, float(omega), chunk, sampler, interval=None, shared_encoder=False,
                                       batch_size=PREVIEW_BATCH, device=device)[0])
        done += size
    return np.concatenate(parts)


# -- float16 difference from the base --------------------------------------------------------------

def save_diff(aux_path, base_path, out) -> dict:
    """Write aux - base (float16) with the aux's metadata; returns size and rounding error facts."""
    aux_state, base_state = load_file(str(aux_path)), load_file(str(base_path))
    meta = read_metadata(aux_path)
    diff, max_err, max_rel = {}, 0.0, 0.0
    for k, v in aux_state.items():
        if v.is_floating_point():
            d = (v - base_state[k]).to(torch.float16)
            diff[k] = d.contiguous()
            err = (base_state[k] + d.float() - v).abs().max().item() if v.numel() else 0.0
            max_err = max(max_err, err)
            max_rel = max(max_rel, err / max(v.abs().max().item(), 1e-12))
        else:
            diff[k] = v.contiguous()
    header = {"format": DIFF_FORMAT, "base_sha256": sha256_file(base_path), "aux": meta}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(diff, str(out), metadata={"sims_diff": json.dumps(header)})
    return {"bytes": out.stat().st_size, "max_abs_weight_error": max_err, "max_rel_weight_error": max_rel}


def read_diff_header(path) -> dict:
    """The header of a difference file (format, base hash, the aux's own metadata)."""
    rebuild = "Rebuild it with `python -m pipelines build-demo-aux`."
    header = metadata_json(path, "sims_diff", "difference file", rebuild)
    if not isinstance(header, dict) or header.get("format") != DIFF_FORMAT:
        raise UserError(f"{path} is not a {DIFF_FORMAT} file. {rebuild}")
    return header


def restore_aux(diff_path, base_path, out) -> Path:
    """Rebuild the auxiliary checkpoint (our format, float32) from base + difference; returns `out`."""
    header = read_diff_header(diff_path)
    if sha256_file(base_path) != header["base_sha256"]:
        raise UserError(f"{diff_path} was built on another base model than {base_path}; rebuild it with "
                        "`python -m pipelines build-demo-aux`.")
    base, _ = load_model(base_path)
    base_state, diff = base.state_dict(), load_file(str(diff_path))
    state = {k: (base_state[k] + diff[k].float()) if diff[k].is_floating_point() else diff[k] for k in diff}
    base.load_state_dict(state)
    meta = header["aux"]
    # the stored provenance (its git commit included) is kept as built: the same bytes on every restore
    return save_model(out, base, ModelConfig.from_dict(meta["model"]), dataset=meta.get("dataset"),
                      training=meta.get("training"), provenance=meta.get("provenance"))


def load_previews(path=DEMO_PREVIEWS) -> dict:
    """The shipped preview grid: images [omega, seed, H, W, C] uint8, omegas, seeds, steps."""
    with np.load(path, allow_pickle=False) as z:
        return {"images": z["images"], "omegas": [float(w) for w in z["omegas"]],
                "seeds": [int(s) for s in z["seeds"]], "steps": int(z["steps"])}


# -- the build -------------------------------------------------------------------------------------

def build_demo_aux(recipe: AuxRecipe = AuxRecipe(), base_path=DEMO_MODEL, classifier_path=DEMO_CLASSIFIER,
                   out_aux=DEMO_AUX, out_previews=DEMO_PREVIEWS, out_report=AUX_REPORT,
                   log: Callable[[str], None] = print, work_dir=None) -> dict:
    """Build the example auxiliary and its previews; writes the three files and returns the report.

    `work_dir` keeps the fine-tune's run folder (an interrupted build resumes there); default: a temp folder.
    """
    from ..attributes.digits import load_digits_classifier
    from .shift import GROUPING
    t0 = time.time()
    base, _ = load_model(base_path)
    clf = load_digits_classifier(classifier_path)

    def label(images):
        return list(GROUPING.assign(clf.predict_proba(images), clf.classes, threshold=recipe.threshold)[0])

    # 1. Pool and labels; 2. base fractions, target, suggested mix; 3. S with that mix.
    seeds = list(range(recipe.pool_size))
    pool_images = [generate_images(base, seeds, DEMO_SAMPLER, batch_size=250)]
    groups = label(pool_images[0])
    plan = plan_demo_shift(groups, recipe.target_high, recipe.omega0, recipe.n_s)
    base_fr, target, mix, counts = plan["base"], plan["target"], plan["mix"], plan["counts"]
    p_high = base_fr[HIGH]
    log(f"pool {len(groups)}: {HIGH} {100 * p_high:.1f}%; target {100 * recipe.target_high:.0f}%; "
        f"suggested mix {HIGH} {100 * mix[HIGH]:.1f}% -> counts {counts}")

    def grow(n):
        new = list(range(len(seeds), len(seeds) + n))
        imgs = generate_images(base, new, DEMO_SAMPLER, batch_size=250)
        seeds.extend(new)
        pool_images.append(imgs)
        return label(imgs)

    members, groups = fill_set(groups, counts, grow, max_pool=20 * recipe.n_s)
    images = np.concatenate(pool_images)
    order = [i for g in (LOW, HIGH) for i in members[g]]  # S's fixed order: group by group, pool order inside
    s_seeds = {g: [seeds[i] for i in members[g]] for g in (LOW, HIGH)}
    log(f"S: {len(order)} images ({', '.join(f'{g} {len(v)}' for g, v in members.items())}); "
        f"pool grew to {len(groups)}")
    t_build = time.time() - t0

    # 4. Fine-tune the base on S only (the demo base's recipe; no lr ramp-up for a fine-tune).
    cfg = {**base_recipe(recipe.budget_kimg), "lr_rampup_kimg": 0, "seed": recipe.seed,
           "checkpoint_kimg": recipe.budget_kimg}
    t1 = time.time()
    with (contextlib.nullcontext(str(work_dir)) if work_dir else tempfile.TemporaryDirectory(prefix="sims-demo-aux-")
          ) as work:
        result = train(None, TensorImageDataset(images[order]), TrainConfig(**cfg), Path(work) / "aux",
                       init_checkpoint=base_path)
        log(f"fine-tuned {result['kimg']:.1f} kimg in {time.time() - t1:.0f} s")
        t_ft = time.time() - t1
        full = list_checkpoints(Path(work) / "aux")[-1][1]
        provenance = {
            "name": "digits demo aux: 70% of 5-9 (bundled example)",
            "synthetic_set": {"kind": "mix", "grouping": GROUPING.name, "groups": GROUPING.to_dict(),
                              "classifier": "digits", "threshold": recipe.threshold,
                              "base_fractions": base_fr, "target": target, "omega0": recipe.omega0, "mix": mix,
                              "counts": {g: len(v) for g, v in members.items()}, "n_s": recipe.n_s,
                              "pool_size": len(groups), "pool_seeds": [0, len(groups) - 1],
                              "sampler_steps": DEMO_SAMPLER.num_steps, "seeds": s_seeds},
            "finetune": {"budget_kimg": recipe.budget_kimg, "lr": cfg["lr"], "batch_size": cfg["batch_size"],
                         "ema_halflife_kimg": cfg["ema_halflife_kimg"], "seed": recipe.seed,
                         "final_loss": result["loss"], "kimg": result["kimg"]},
            "base_model_sha256": sha256_file(base_path),
            "how": "python -m pipelines build-demo-aux"}
        aux_model, meta = load_model(full)
        save_model(full, aux_model, ModelConfig.from_dict(meta["model"]), dataset=meta.get("dataset"),
                   training=meta.get("training"), provenance={**meta.get("provenance", {}), **provenance})
        shipped = save_diff(full, base_path, out_aux)
        restored = restore_aux(out_aux, base_path, Path(work) / "restored.safetensors")
        aux_exact, _ = load_model(full)
        aux, _ = load_model(restored)
        # 5. Previews from the shipped (reconstructed) weights; how far they are from the float32 original's.
        t2 = time.time()
        grids = []
        for w in PREVIEW_OMEGAS:
            grids.append(render_preview(base, aux, w))
            log(f"preview omega={w:+.2f} ({len(grids)}/{len(PREVIEW_OMEGAS)}, {time.time() - t2:.0f} s)")
        grids = np.stack(grids)
        t_prev = time.time() - t2
        check = [w for w in PREVIEW_OMEGAS if w in (-1.0, 1.0, 3.0)]
        exact = np.stack([render_preview(base, aux_exact, w) for w in check])
        mine = grids[[PREVIEW_OMEGAS.index(w) for w in check]]
        delta = np.abs(exact.astype(int) - mine.astype(int))
    out_previews = Path(out_previews)
    np.savez_compressed(out_previews, images=grids, omegas=np.asarray(PREVIEW_OMEGAS),
                        seeds=np.asarray(PREVIEW_SEEDS), steps=np.asarray(PREVIEW_STEPS))
    report = {"how": "python -m pipelines build-demo-aux", "recipe": asdict(recipe),
              "base_fractions": base_fr, "target": target, "aux_mix": mix, "counts": counts,
              "pool_size": len(groups), "finetune": {"kimg": result["kimg"], "final_loss": result["loss"],
                                                    "images_per_s": round(result["images_per_s"], 1)},
              "shipped": {"aux_file": Path(out_aux).name, "aux_bytes": shipped["bytes"],
                          "previews_file": out_previews.name, "previews_bytes": out_previews.stat().st_size,
                          "base_bytes": Path(base_path).stat().st_size,
                          "max_abs_weight_error": shipped["max_abs_weight_error"],
                          "max_rel_weight_error": shipped["max_rel_weight_error"],
                          "preview_pixels_vs_float32_aux": {
                              "omegas": check, "max_abs_uint8": int(delta.max()),
                              "fraction_differing": float((delta > 0).mean())}},
              "wall_seconds": {"pool_and_set": round(t_build, 1), "finetune": round(t_ft, 1),
                               "previews": round(t_prev, 1), "total": round(time.time() - t0, 1)},
              "threads": torch.get_num_threads()}
    Path(out_report).write_text(json.dumps(report, indent=1))
    log(f"wrote {out_aux} ({shipped['bytes'] / 1e6:.2f} MB), {out_previews} "
        f"({out_previews.stat().st_size / 1e3:.0f} kB); preview pixels vs the float32 aux: max "
        f"|Δ| {int(delta.max())}/255 on {100 * (delta > 0).mean():.3f}% of pixels; "
        f"{report['wall_seconds']['total']:.0f} s")
    return report
