"""Self-improvement on the digits world (the paper's Table 1 / Fig. 3, no shift).

For each base model: S = base samples at the base's own mix, an auxiliary model fine-tuned on
S only (the demo's fine-tune recipe) with checkpoints at the budgets, and SIMS samples
(1 + ω)·D_base − ω·D_aux on the same fixed seeds at every ω. Each point is measured with
FD-digits against the real digits, overall and per class-matched group (generated samples the
classifier calls k against the real digits it calls k; also the demo's 0-4 / 5-9 halves), with
a bootstrap interval, a paired bootstrap interval of the change from ω = 0 (same seeds, same
resampled rows), and the metric's own floor at the same n (`metrics.floor.fd_floor`).

Why a floor: a base already at the floor has nothing left that FD-digits at this n can see,
so weaker bases (earlier checkpoints of the demo recipe) are part of the grid.

Why `trajectory_errors`: when SIMS does not help, it says where along the noise levels the
auxiliary's error lines up with the base's: the denoising error on real digits of
(1 + ω)·D_base − ω·D_aux per σ, and the ω that minimises it per σ (closed form).

Every step writes its result under the work folder and is skipped when present, so a run
can be split over processes (one per base) and rerun to assemble the grid.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..attributes.digits import load_digits_classifier
from ..checkpoints.native import load_model, read_metadata
from ..data import DigitsDataset, TensorImageDataset, to_model_input
from ..errors import UserError
from ..generate import generate_images, generate_sims
from ..metrics.floor import fd_bootstrap, fd_floor, small_sample_warning
from ..metrics.frechet import feature_stats, frechet_distance
from ..sampler import SamplerConfig
from ..training import TrainConfig, list_checkpoints, train
from ..training.augment import resolve_augment_p

FEATURE_DIMS = 128           # FD-digits features
EVAL_SEED0 = 10_000_000      # evaluation seeds start here; S uses seeds 0..n_s-1 (disjoint)
HALVES = {"0-4": "01234", "5-9": "56789"}


@dataclass
class SelfImproveSettings:
    """The grid and how each point is measured (defaults: what fits 2 shared CPU cores)."""
    bases: dict = field(default_factory=dict)        # name -> base checkpoint path
    s_sizes: list = field(default_factory=lambda: [1000])
    budgets_kimg: list = field(default_factory=lambda: [8.0, 32.0])
    omegas: list = field(default_factory=lambda: [0.0, 1.0, 0.5, 2.0])  # run in this order
    eval_samples: int = 2000
    num_steps: int = 12                               # Heun steps (the demo sampler)
    interval: list | None = None                      # guidance sigma interval; None = every step
    # Fine-tune augmentation p: None = the base's recorded recipe; a list runs each (augmentation on/off).
    augment_p: float | None | list = None
    finetune_lr: float = 2e-3                         # the demo base recipe's stage-1 lr
    bootstrap: int = 50
    floor_repeats: int = 20
    batch_size: int = 500
    seed: int = 0
    time_limit_min: float | None = None               # stop starting new points after this
    diag_images: int = 512                            # real digits for the trajectory errors
    diag_sigmas: list = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])

    def __post_init__(self):
        if not self.bases:
            raise UserError("give at least one base: --base NAME=CHECKPOINT")
        for name, path in self.bases.items():
            if not Path(path).is_file():
                raise UserError(f"base {name!r}: checkpoint {path} not found")
        if 0.0 not in [float(w) for w in self.omegas]:
            raise UserError("the omega grid must include 0 (the base model, what every point is compared with)")
        if int(self.eval_samples) < 2:
            raise UserError("eval_samples must be >= 2")
        if any(b <= 0 for b in self.budgets_kimg) or any(n < 2 for n in self.s_sizes):
            raise UserError("budgets must be > 0 kimg and S sizes >= 2")

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(num_steps=int(self.num_steps))


class Reference:
    """The real digits' classifier features and labels: what every point is measured against."""

    def __init__(self, classifier_path=None):
        self.classifier = load_digits_classifier(classifier_path)
        real = DigitsDataset(8)
        self.images = real.images.permute(0, 2, 3, 1).numpy()   # uint8 NHWC
        self.features = self.classifier.features(self.images)
        self.classes = self.top_class(self.images)
        self.stats = feature_stats(self.features)

    def top_class(self, images) -> np.ndarray:
        return np.asarray(self.classifier.classes)[self.classifier.predict_proba(images).argmax(axis=1)]


def _halves(classes: np.ndarray) -> np.ndarray:
    return np.array([next(g for g, members in HALVES.items() if c in members) for c in classes], dtype=object)


def measure(features: np.ndarray, classes: np.ndarray, ref: Reference, settings: SelfImproveSettings,
            zero: dict | None = None) -> dict:
    """FD-digits overall and per class-matched group with bootstrap intervals and the floor at n.

    zero: {'features': ...} of the ω = 0 samples on the same seeds; adds the paired bootstrap
    interval of FD(ω) − FD(0) (the same resampled rows for both).
    """
    n = len(features)
    seed = settings.seed
    out = {"n": n, "overall": frechet_distance(*feature_stats(features), *ref.stats)}
    out["overall_ci"] = list(fd_bootstrap(features, *ref.stats, settings.bootstrap, seed))
    floor, floor_ci = fd_floor(ref.features, n, settings.floor_repeats, seed)
    out["floor"], out["floor_ci"] = floor, list(floor_ci)
    warnings = [w for w in [small_sample_warning(n, FEATURE_DIMS, "overall", "FD-digits")] if w]
    if zero is not None:
        out["delta_vs_0"] = out["overall"] - zero["overall"]
        out["delta_vs_0_ci"] = list(_paired_delta_ci(features, zero["features"], ref, settings))
    for kind, gen_g, real_g in (("class", classes, ref.classes), ("half", _halves(classes), _halves(ref.classes))):
        groups = {}
        for g in sorted(set(real_g)):
            rows, real_rows = features[gen_g == g], ref.features[real_g == g]
            if len(rows) < 2:
                groups[g] = {"n": int(len(rows)), "fd": None}
                continue
            mu, sigma = feature_stats(real_rows)
            f_mean, f_ci = fd_floor(real_rows, len(rows), settings.floor_repeats, seed + 1)
            groups[g] = {"n": int(len(rows)), "fd": frechet_distance(*feature_stats(rows), mu, sigma),
                         "fd_ci": list(fd_bootstrap(rows, mu, sigma, settings.bootstrap, seed)),
                         "floor": f_mean, "floor_ci": list(f_ci)}
            w = small_sample_warning(len(rows), FEATURE_DIMS, f"{kind} {g}", "FD-digits")
            if w:
                warnings.append(w)
        vals = [v["fd"] for v in groups.values() if v["fd"] is not None]
        floors = [v["floor"] for v in groups.values() if v["fd"] is not None]
        out[f"per_{kind}"] = groups
        out[f"mean_{kind}_fd"] = float(np.mean(vals)) if vals else None
        out[f"mean_{kind}_floor"] = float(np.mean(floors)) if floors else None
    out["class_histogram"] = {c: int((classes == c).sum()) for c in ref.classifier.classes}
    out["warnings"] = warnings
    return out


def _with_class_tv(row: dict, ref: Reference) -> dict:
    """Add class_tv: total-variation distance of the sample's class histogram from the real digits'
    (did the mix move? overall FD rises with it even when every class is drawn well)."""
    names = list(ref.classifier.classes)
    real = np.array([(ref.classes == c).mean() for c in names])
    gen = np.array([row["class_histogram"].get(c, 0) for c in names], float)
    row["class_tv"] = float(0.5 * np.abs(gen / gen.sum() - real).sum())
    return row


def _paired_delta_ci(features, zero_features, ref, settings, level=0.95) -> tuple[float, float]:
    rng = np.random.default_rng(settings.seed + 7)
    deltas = []
    for _ in range(settings.bootstrap):
        idx = rng.integers(0, len(features), len(features))
        deltas.append(frechet_distance(*feature_stats(features[idx]), *ref.stats)
                      - frechet_distance(*feature_stats(zero_features[idx]), *ref.stats))
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@torch.no_grad()
def trajectory_errors(base, aux, real_images, sigmas, omegas, seed: int = 0, batch: int = 256) -> dict:
    """Denoising error on real digits along the noise levels, base vs auxiliary vs SIMS.

    For each σ: mse(ω) = E||(1+ω)·D_base(x+σn) − ω·D_aux(x+σn) − x||² per pixel, and the ω
    minimising it, ω* = −<e_b, D_b − D_a> / ||D_b − D_a||² with e_b = D_b − x. ω* > 0 at a σ
    means extrapolating away from the auxiliary lowers the error there (what SIMS relies on).
    """
    x0 = to_model_input(torch.as_tensor(real_images).permute(0, 3, 1, 2))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=g) * s
        sig = torch.full((len(x0),), float(s))
        db = torch.cat([base(x0[i:i + batch] + noise[i:i + batch], sig[i:i + batch]) for i in range(0, len(x0), batch)])
        da = torch.cat([aux(x0[i:i + batch] + noise[i:i + batch], sig[i:i + batch]) for i in range(0, len(x0), batch)])
        eb, diff = (db - x0).double(), (db - da).double()
        denom = float((diff ** 2).sum())
        row = {"sigma": float(s), "mse_base": float((eb ** 2).mean()), "mse_aux": float(((da - x0).double() ** 2).mean()),
               "omega_star": -float((eb * diff).sum()) / denom if denom > 0 else 0.0,
               "mse": {str(w): float(((eb + w * diff) ** 2).mean()) for w in omegas}}
        rows.append(row)
    return {"images": int(len(x0)), "rows": rows}


def floor_comparison(ref: Reference, n: int, settings: SelfImproveSettings) -> dict:
    """Three readings of 'real vs real' for FD-digits, to place a base against the floor.

    - resampled: fd_floor, n rows drawn with replacement vs all real digits (a generator that
      reproduces its training set's empirical distribution);
    - disjoint halves: two disjoint halves of the real digits against each other (independent
      real samples, but each only half the size);
    - independent at n: the disjoint-halves value moved to sizes (n, all) with the 1/n law of
      the small-sample bias, FD ≈ c·(1/n_a + 1/n_b): what fresh real samples of size n would
      score against all real digits. A model below it is closer to the training set than new
      real data would be.
    """
    f, rng = ref.features, np.random.default_rng(settings.seed)
    mean, ci = fd_floor(f, n, settings.floor_repeats, settings.seed)
    half = len(f) // 2
    vals = []
    for _ in range(settings.floor_repeats):
        p = rng.permutation(len(f))
        vals.append(frechet_distance(*feature_stats(f[p[:half]]), *feature_stats(f[p[half:]])))
    c = float(np.mean(vals)) / (1 / half + 1 / (len(f) - half))
    return {"n": n, "n_real": len(f), "resampled": mean, "resampled_ci": list(ci),
            "disjoint_halves": float(np.mean(vals)), "disjoint_halves_ci": [float(np.quantile(vals, 0.025)),
                                                                          float(np.quantile(vals, 0.975))],
            "halves_size": half, "independent_at_n": c * (1 / n + 1 / len(f))}


# ----------------------------------------------------------------------------
# The run


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _budget_checkpoint(run_dir: Path, kimg: float) -> Path:
    """The first checkpoint at or after `kimg` (training stops at the first batch past a boundary)."""
    for nimg, path in list_checkpoints(run_dir):
        if nimg >= kimg * 1000:
            return path
    raise UserError(f"{run_dir} has no checkpoint at {kimg} kimg")


def _point_name(s_size, budget, omega, aug) -> str:
    return f"s{s_size}-b{budget:g}-w{omega:+g}" + (f"-aug{aug:g}" if aug else "")


def run_self_improve(settings: SelfImproveSettings, work_dir, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the grid under work_dir; returns and writes grid.json."""
    t0 = time.time()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ref = Reference()
    sampler, seeds = settings.sampler, range(EVAL_SEED0, EVAL_SEED0 + int(settings.eval_samples))
    deadline = t0 + 60 * settings.time_limit_min if settings.time_limit_min is not None else None
    omegas = [float(w) for w in settings.omegas]
    grid = {"settings": asdict(settings), "bases": {}, "points": [], "not_run": []}

    for name, path in settings.bases.items():
        bdir = work / name
        bdir.mkdir(exist_ok=True)
        base, meta = load_model(path)
        augs = finetune_augment_ps(settings, path)
        info = {"checkpoint": str(path), "kimg": (meta.get("training") or {}).get("kimg"),
                "finetune_augment": [{"p": a, "source": src} for a, src in augs]}
        zero_file = bdir / "omega0.npz"
        if not zero_file.exists():
            t = time.time()
            images = generate_images(base, seeds, sampler, batch_size=settings.batch_size)
            _save_npz(zero_file, features=ref.classifier.features(images), classes=ref.top_class(images),
                      images=images, seconds=time.time() - t)
            log(f"[{name}] omega 0: {len(images)} samples in {time.time() - t:.0f} s")
        z = np.load(zero_file, allow_pickle=False)
        zero_measure_file = bdir / "omega0.json"
        if not zero_measure_file.exists():
            _write_json(zero_measure_file, measure(z["features"], z["classes"].astype(object), ref, settings))
        zero = json.loads(zero_measure_file.read_text())
        zero["features"] = z["features"]
        info["omega0"] = _with_class_tv({k: v for k, v in zero.items() if k != "features"}, ref)
        info["omega0_seconds"] = float(z["seconds"])
        log(f"[{name}] FD-digits at omega 0: {zero['overall']:.3f} (floor at n={zero['n']}: {zero['floor']:.3f})")
        grid["bases"][name] = info

        for s_size, aug in [(s, a) for a, _ in augs for s in settings.s_sizes]:
            run_dir = bdir / (f"aux-s{s_size}" + (f"-aug{aug:g}" if aug else ""))
            # Budget by budget, in the order given: the fine-tune continues to the next budget only
            # once every omega of the previous one is measured (what is cut by the time limit is the tail).
            points = [(b, w) for b in settings.budgets_kimg for w in omegas if w != 0]
            for budget, omega in points:
                pname = _point_name(s_size, budget, omega, aug)
                pfile = bdir / "points" / f"{pname}.json"
                if not pfile.exists():
                    if deadline and time.time() > deadline:
                        grid["not_run"].append(f"{name}/{pname} (time limit)")
                        continue
                    _finetune(base, path, s_size, settings, bdir, run_dir, log, name, budget, aug)
                    _trajectory(grid, base, run_dir, budget, ref, settings, omegas, name)
                    aux, _ = load_model(_budget_checkpoint(run_dir, budget))
                    t = time.time()
                    images, nfe = generate_sims(base, aux, omega, seeds, sampler, interval=settings.interval,
                                                batch_size=settings.batch_size)
                    feats, classes = ref.classifier.features(images), ref.top_class(images)
                    row = {"base": name, "s_size": s_size, "budget_kimg": budget, "omega": omega, "augment_p": aug,
                           "nfe": nfe, "sample_seconds": round(time.time() - t, 1),
                           **measure(feats, classes.astype(object), ref, settings, zero)}
                    pfile.parent.mkdir(exist_ok=True)
                    _write_json(pfile, row)
                    log(f"[{name}] S {s_size} budget {budget:g} omega {omega:+g}: FD-digits {row['overall']:.3f} "
                        f"(omega 0: {zero['overall']:.3f}; change {row['delta_vs_0']:+.3f}, 95% "
                        f"[{row['delta_vs_0_ci'][0]:+.3f}, {row['delta_vs_0_ci'][1]:+.3f}]) in {row['sample_seconds']:.0f} s")
                else:
                    _trajectory(grid, base, run_dir, budget, ref, settings, omegas, name)
                grid["points"].append(_with_class_tv(json.loads(pfile.read_text()), ref))
    floors_file = work / "floors.json"
    if not floors_file.exists():
        _write_json(floors_file, floor_comparison(ref, int(settings.eval_samples), settings))
    grid["floors"] = json.loads(floors_file.read_text())
    grid["wall_seconds_this_call"] = round(time.time() - t0, 1)
    _write_json(work / "grid.json", grid)
    return grid


def finetune_augment_ps(settings: SelfImproveSettings, base_path) -> list[tuple[float, str]]:
    """The auxiliary fine-tune's augmentation probabilities for one base (distinct, in the order
    given) and where each came from.

    The paper fine-tunes the auxiliary with the base's recipe, so augmentation follows the base's
    recorded recipe unless set (None). The result is always passed to the fine-tune explicitly: an
    unset value would be resolved again by the training loop, out of sight of the point names."""
    wanted = settings.augment_p if isinstance(settings.augment_p, (list, tuple)) else [settings.augment_p]
    out: dict[float, str] = {}
    for p in wanted:
        value, source = resolve_augment_p(p, base_path)
        out.setdefault(value, source)
    return list(out.items())


def _trajectory(grid, base, run_dir: Path, budget, ref, settings, omegas, name) -> None:
    """trajectory_errors of the budget's auxiliary, computed once and kept beside its checkpoints."""
    diag_file = run_dir / f"trajectory-b{budget:g}.json"
    if not diag_file.exists():
        aux, _ = load_model(_budget_checkpoint(run_dir, budget))
        _write_json(diag_file, trajectory_errors(base, aux, ref.images[:settings.diag_images], settings.diag_sigmas,
                                                 [0.0] + [w for w in omegas if w], settings.seed))
    grid.setdefault("trajectory", {})[f"{name}/{run_dir.name}/b{budget:g}"] = json.loads(diag_file.read_text())


def _finetune(base, base_path, s_size, settings, bdir: Path, run_dir: Path, log, name, top: float,
              augment_p: float = 0.0) -> None:
    """S = base samples on seeds 0..s_size-1 (the base's own mix); fine-tune on S only up to `top` kimg
    (a later call with a larger budget resumes the same run)."""
    done = [n for n, _ in list_checkpoints(run_dir)] if run_dir.exists() else []
    if done and max(done) >= top * 1000:
        return
    s_file = bdir / f"S{s_size}.npz"
    if not s_file.exists():
        t = time.time()
        _save_npz(s_file, images=generate_images(base, range(s_size), settings.sampler, batch_size=settings.batch_size))
        log(f"[{name}] S of {s_size} base samples in {time.time() - t:.0f} s")
    images = np.load(s_file)["images"]
    recipe = {**_demo_finetune_recipe(settings, augment_p), "total_kimg": top}
    # Checkpoints at every budget: the interval is their greatest common step in kimg (e.g. 8 for {8, 32}).
    recipe["checkpoint_kimg"] = float(np.gcd.reduce([int(round(b * 1000)) for b in settings.budgets_kimg])) / 1000
    t = time.time()
    result = train(None, TensorImageDataset(images), TrainConfig(**recipe), run_dir, init_checkpoint=base_path)
    log(f"[{name}] fine-tuned on S {s_size} for {result['kimg']:.1f} kimg in {time.time() - t:.0f} s "
        f"({result['images_per_s']:.0f} img/s)")


def _demo_finetune_recipe(settings, augment_p: float = 0.0) -> dict:
    """The demo's auxiliary fine-tune (demo-shift's): the base recipe's batch/EMA, no lr ramp-up, and
    the given augmentation probability (0 = off, stated rather than left to the base's recipe)."""
    from ..demo.assets import base_recipe

    return {**base_recipe(1.0), "lr": settings.finetune_lr, "lr_rampup_kimg": 0, "seed": settings.seed,
            "augment_p": float(augment_p)}


def base_kimg(path) -> float | None:
    """Images seen (kimg) recorded in a checkpoint."""
    return (read_metadata(path).get("training") or {}).get("kimg")


# ----------------------------------------------------------------------------
# Figure and table


def _panels(grid: dict) -> dict:
    """(base, S size, augment p) -> {(budget, omega): point}, with ω = 0 (the base) at every budget."""
    panels: dict = {}
    for p in grid["points"]:
        key = (p["base"], p["s_size"], p["augment_p"])
        panels.setdefault(key, {})[(p["budget_kimg"], p["omega"])] = p
    for (base, _, _), cells in panels.items():
        zero = grid["bases"][base]["omega0"]
        for b in {b for b, _ in cells}:
            cells[(b, 0.0)] = {**zero, "omega": 0.0, "budget_kimg": b, "delta_vs_0": 0.0}
    return panels


def heatmap_figure(grid: dict):
    """Plotly heat maps like the paper's Fig. 3: FD-digits over (ω, budget), one column per
    (base, S size, augmentation); row 1 overall, row 2 the mean class-matched FD-digits."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _panels(grid)
    keys = sorted(panels, key=lambda k: (str(k[0]), k[1], k[2]))
    titles = []
    for row in ("overall", "class-matched mean"):
        for base, s, aug in keys:
            floor = grid["bases"][base]["omega0"]["floor" if row == "overall" else "mean_class_floor"]
            titles.append(f"{base}, |S|={s}{', aug p=%g' % aug if aug else ''}: {row} (floor {floor:.2f})")
    fig = make_subplots(rows=2, cols=max(len(keys), 1), subplot_titles=titles, vertical_spacing=0.28,
                        horizontal_spacing=0.06)
    for c, key in enumerate(keys, start=1):
        cells = panels[key]
        budgets = sorted({b for b, _ in cells})
        omegas = sorted({w for _, w in cells})
        for r, field_ in ((1, "overall"), (2, "mean_class_fd")):
            z = [[cells.get((b, w), {}).get(field_) for w in omegas] for b in budgets]
            text = [[("" if v is None else f"{v:.2f}") for v in row] for row in z]
            fig.add_trace(go.Heatmap(z=z, x=[f"{w:g}" for w in omegas], y=[f"{b:g} kimg" for b in budgets],
                                     text=text, texttemplate="%{text}", colorscale=[[0, "#b8e186"], [0.5, "#ffffbf"], [1, "#fdae61"]],
                                     textfont={"color": "black"},
                                     showscale=False, hovertemplate="ω %{x}, %{y}: %{z:.3f}<extra></extra>"),
                          row=r, col=c)
            fig.update_xaxes(title_text="ω", row=r, col=c)
    n = grid["settings"]["eval_samples"]
    fig.update_layout(title=f"FD-digits (lower is better; green = lowest of its panel) over guidance ω and "
                            f"auxiliary budget<br><sup>{n} samples a point on the same seeds, "
                            f"{grid['settings']['num_steps']} Heun steps; the base's floor in each title</sup>",
                      height=640, width=max(560, 470 * len(keys)), font={"size": 11})
    fig.update_annotations(font_size=11)
    return fig


def grid_table(grid: dict) -> list[str]:
    """Markdown rows: base, S, budget, ω, FD-digits overall [CI], change from ω = 0 [paired CI], class mean."""
    lines = ["| base | \\|S\\| | budget | ω | FD-digits overall [95% CI] | change vs ω = 0 [paired 95% CI] | "
             "class-matched mean (floor) | class mix TV to real |",
             "|---|---|---|---|---|---|---|---|"]
    panels = _panels(grid)
    for name, b in grid["bases"].items():  # bases with no SIMS point yet: their omega-0 row alone
        if not any(k[0] == name for k in panels):
            panels[(name, "—", 0.0)] = {(0.0, 0.0): {**b["omega0"], "omega": 0.0, "delta_vs_0": 0.0}}
    for key, cells in sorted(panels.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]), kv[0][2])):
        for (b, w), p in sorted(cells.items()):
            if w == 0.0 and b != min(bb for bb, _ in cells):
                continue  # the base row once per panel
            ci = p.get("overall_ci") or [float("nan")] * 2
            d = p.get("delta_vs_0_ci")
            change = "—" if w == 0 else f"{p['delta_vs_0']:+.2f} [{d[0]:+.2f}, {d[1]:+.2f}]"
            lines.append(f"| {key[0]} | {key[1]} | {'—' if w == 0 else f'{b:g} kimg'} | {w:g} | "
                         f"{p['overall']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | {change} | {p['mean_class_fd']:.2f} "
                         f"({p['mean_class_floor']:.2f}) | {p.get('class_tv', float('nan')):.3f} |")
    return lines
