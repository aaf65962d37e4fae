"""CLI for the SIMS distribution shift, step by step: `suggest-mix`, `build-set`, `find-omega`, `sweep`.

The same steps as the studio's Target, Build set and Guide tabs, on files: a pool of samples written
by `generate` (.npz or folder, with its seeds), labelled by a classifier (or by a `label` output),
-> the suggested auxiliary mix -> S (growing the pool from the base model when a group runs short)
-> after `finetune`, the omega that meets the target and the (omega, budget) grid.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from .attributes import _add_common, _classifier, _label

METRIC_SEED0 = 1_000_000  # measurement seeds, apart from a pool's (which start at 0), as in the studio


# -- labelled pool ---------------------------------------------------------------------------------

class Pool:
    """Images, names, seeds and groups of a labelled pool (grown in memory when S needs more)."""

    def __init__(self, args):
        from ..attributes.groupings import resolve_grouping
        from ..attributes.labels import source_seeds
        from ..image_source import ImageSource
        self.src = ImageSource(args.pool)
        self.images = self.src.read()
        self.names = list(self.src.names)
        self.seeds = source_seeds(args.pool)
        self.clf = _classifier(args)
        self.threshold = args.threshold
        self.grouping = resolve_grouping(args.grouping, args.classifier, self.clf.classes)
        if getattr(args, "labels", None):
            self.groups = _groups_from_file(args.labels, self.names)
            self.label_source = str(args.labels)
        else:
            self.groups = [str(g) for g in _label(args, self.clf, args.pool).assigned]
            self.label_source = f"{self.clf.name} (threshold {args.threshold})"
        self.steps = _recorded_steps(args.pool)

    def label(self, images) -> list[str]:
        assigned, _ = self.grouping.assign(self.clf.predict_proba(images), self.clf.classes, self.threshold)
        return [str(g) for g in assigned]

    def base_fractions(self) -> dict[str, tuple[float, float, float, int]]:
        """{group: (fraction, lo, hi, count)} among decided samples (Wilson 95%)."""
        from ..attributes.groupings import wilson_interval
        groups = self.grouping.group_names
        decided = [g for g in self.groups if g in groups]
        n = len(decided)
        if n == 0:
            raise UserError(f"None of the {len(self.groups)} pool samples has a group under "
                            f"'{self.grouping.name}'; check --classifier/--grouping or lower --threshold.")
        return {g: (decided.count(g) / n, *wilson_interval(decided.count(g), n), decided.count(g)) for g in groups}


def _groups_from_file(path, names: list[str]) -> list[str]:
    """The 'group' of every pool image from a `label` output (CSV or JSON); manual edits of that file count."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    if path.suffix.lower() == ".json":
        rows = json.loads(path.read_text()).get("items", [])
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    if rows and "group" not in rows[0]:
        raise UserError(f"{path} has no 'group' column; write it with "
                        f"`python -m pipelines label ... --out {path.name}`")
    by_name = {str(r["name"]): str(r["group"]) for r in rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{len(missing)} pool images have no label in {path}, e.g. {missing[:3]}; "
                        "label the same pool (or leave out --labels to classify it now).")
    return [by_name[n] for n in names]


def _recorded_steps(src) -> int | None:
    """Heun steps the pool was generated with (generate records them), or None."""
    src = Path(src)
    try:
        if src.suffix.lower() == ".npz":
            with np.load(src, allow_pickle=False) as z:
                info = json.loads(str(z["info"])) if "info" in z else {}
        else:
            info = json.loads((src / "generation.json").read_text())
    except (OSError, ValueError):
        return None
    return (info.get("sampler") or {}).get("num_steps")


def _print_fractions(fr: dict, what: str) -> None:
    n = sum(v[3] for v in fr.values())
    print(f"{what} ({n} samples with a group):")
    for g, (f, lo, hi, k) in fr.items():
        print(f"  {g:>12}: {100 * f:5.1f}%  [95% CI {100 * lo:.1f}-{100 * hi:.1f}], n={k}")
    if n < 100:
        print(f"WARNING: only {n} labelled samples: the intervals are wide; label a larger pool for a firmer plan")


def _shares(spec: str, groups: list[str], what: str) -> dict[str, float]:
    from ..fairness import parse_target
    try:
        return parse_target(spec, groups)
    except UserError as e:
        raise UserError(f"{what}: {e}") from None


# -- suggest-mix -----------------------------------------------------------------------------------

def run_suggest_mix(args) -> int:
    """Base fractions of the pool, the target, and the auxiliary mix a = p - (q - p)/omega0."""
    from ..shift import mix_counts, suggest_aux_mix
    pool = Pool(args)
    fr = pool.base_fractions()
    _print_fractions(fr, f"base fractions of {args.pool} under '{pool.grouping.name}'")
    base = {g: v[0] for g, v in fr.items()}
    target = _shares(args.target, pool.grouping.group_names, "--target")
    mix = suggest_aux_mix(base, target, args.omega0)
    counts = mix_counts(mix, args.n_s) if args.n_s else None
    print("target: " + ", ".join(f"{g} {100 * v:.1f}%" for g, v in target.items()))
    print(f"suggested auxiliary mix (omega0 = {args.omega0:g}): " + ", ".join(
        f"{g} {100 * v:.1f}%" + (f" ({counts[g]} of {args.n_s})" if counts else "") for g, v in mix.items()))
    doc = {"pool": str(args.pool), "grouping": pool.grouping.to_dict(), "labels": pool.label_source,
           "base_fractions": {g: {"fraction": f, "ci95": [lo, hi], "count": k} for g, (f, lo, hi, k) in fr.items()},
           "target": target, "omega0": args.omega0, "mix": mix, "counts": counts,
           "mix_spec": ",".join(f"{g}={v:.4f}" for g, v in mix.items())}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    return 0


# -- build-set -------------------------------------------------------------------------------------

def run_build_set(args) -> int:
    """S from the labelled pool: a group mix (growing the pool from --model when short) or a not-preferred list."""
    from ..imageio import write_image_folder
    from ..shift import mix_counts, suggest_aux_mix
    from ..synthetic_set import check_counts, fill_set
    if sum(x is not None for x in (args.mix, args.target, args.not_preferred)) != 1:
        raise UserError("Give exactly one of --mix SPEC, --target SPEC (the suggested mix is used) or "
                        "--not-preferred FILE.")
    pool = Pool(args)
    n0 = len(pool.names)
    info: dict = {"pool": str(args.pool), "grouping": pool.grouping.to_dict(), "labels": pool.label_source,
                  "classifier": pool.clf.name, "threshold": pool.threshold}
    if args.not_preferred:
        chosen = _not_preferred(args.not_preferred, pool.names)
        info.update(kind="not_preferred", n_s=len(chosen), counts=None)
        groups_of_s = [pool.groups[i] for i in chosen]
    else:
        fr = pool.base_fractions()
        _print_fractions(fr, "base fractions of the pool")
        base = {g: v[0] for g, v in fr.items()}
        if args.mix:
            mix = _shares(args.mix, pool.grouping.group_names, "--mix")
            target = None
        else:
            target = _shares(args.target, pool.grouping.group_names, "--target")
            mix = suggest_aux_mix(base, target, args.omega0)
        if args.n_s is None or args.n_s <= 0:
            raise UserError(f"--n-s (size of S) must be a positive number of samples (got {args.n_s}).")
        counts = mix_counts(mix, args.n_s)
        grow = _grower(args, pool) if args.model else None
        check_counts(pool.groups, counts, can_grow=grow is not None,
                     grow_hint="pass --model BASE.safetensors to generate more when a group runs short")
        members, grown = fill_set(pool.groups, counts, grow, max_pool=args.max_pool, chunk=256,
                                  progress=lambda p: print(f"pool {p['pool']}: " + ", ".join(
                                      f"{g} {p['have'][g]}/{c}" for g, c in p["counts"].items()), flush=True))
        pool.groups = grown
        chosen = [i for g in counts for i in members[g]]  # group by group, pool order inside: S's fixed order
        groups_of_s = [pool.groups[i] for i in chosen]
        info.update(kind="mix", base_fractions=base, target=target, omega0=args.omega0 if target else None,
                    mix=mix, n_s=args.n_s, counts={g: len(members[g]) for g in counts})
    info.update(pool_size=len(pool.names), pool_grown_by=len(pool.names) - n0,
                names=[pool.names[i] for i in chosen],
                seeds=[pool.seeds[i] for i in chosen] if pool.seeds is not None else None)
    images = pool.images[chosen]
    out = Path(args.out)
    if out.suffix.lower() == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, images=images, names=np.asarray(info["names"]), groups=np.asarray(groups_of_s),
                 **({"seeds": np.asarray(info["seeds"])} if info["seeds"] is not None else {}),
                 set=json.dumps(info))
    else:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not empty; pick a new folder (nothing was overwritten).")
        write_image_folder(out, images)
        (out / "set.json").write_text(json.dumps({**info, "groups": groups_of_s}, indent=1))
    print(f"S: {len(chosen)} images" + (f" ({', '.join(f'{g} {n}' for g, n in info['counts'].items())})"
                                        if info.get("counts") else " (not preferred)") + f" -> {out}")
    if len(pool.names) > n0:
        pool_out = Path(args.pool_out or out.with_name(out.stem + ".pool.npz"))
        np.savez(pool_out, images=pool.images, names=np.asarray(pool.names), groups=np.asarray(pool.groups),
                 **({"seeds": np.asarray(pool.seeds)} if pool.seeds is not None else {}),
                 info=json.dumps({"sampler": {"num_steps": pool.steps}, "model": args.model}))
        print(f"the pool grew by {len(pool.names) - n0} samples to {len(pool.names)}: {pool_out}")
    return 0


def _not_preferred(path, names: list[str]) -> list[int]:
    """Pool indices of the names listed in FILE (one per line, or a CSV with a 'name' column)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"not-preferred list not found: {path}")
    text = path.read_text().splitlines()
    if text and text[0].split(",")[0].strip() == "name":
        listed = [row["name"] for row in csv.DictReader(text)]
    else:
        listed = [line.strip() for line in text if line.strip() and not line.startswith("#")]
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in listed if n not in index]
    if unknown:
        raise UserError(f"{len(unknown)} listed names are not pool images, e.g. {unknown[:3]}")
    if not listed:
        raise UserError(f"{path} lists no samples; mark at least one sample not preferred.")
    return sorted({index[n] for n in listed})


def _grower(args, pool: Pool):
    """grow(n): n new base samples on fresh seeds (after the pool's last), labelled; appended to the pool."""
    from ..checkpoints.native import load_model
    from ..generate import generate_images
    from ..sampler import SamplerConfig
    if pool.seeds is None and len(pool.names):
        raise UserError(f"{args.pool} records no seeds, so new samples could repeat its images; generate the pool "
                        "with `python -m pipelines generate` (it stores seeds) or leave out --model.")
    model, _ = load_model(args.model, device=args.device or "cpu")
    steps = args.steps or pool.steps or 18
    sampler = SamplerConfig(num_steps=int(steps))

    def grow(n: int) -> list[str]:
        start = (max(pool.seeds) + 1) if pool.seeds else 0
        seeds = list(range(start, start + n))
        images = generate_images(model, seeds, sampler, batch_size=args.batch_size, device=args.device or "cpu")
        pool.images = np.concatenate([pool.images, images]) if len(pool.images) else images
        pool.seeds = (pool.seeds or []) + seeds
        pool.names += [f"seed{s:08d}" for s in seeds]
        return pool.label(images)
    return grow


# -- measuring fractions at omega --------------------------------------------------------------------

class Measure:
    """Group fractions (Wilson 95%) and images of the guided model at omega on fixed seeds."""

    def __init__(self, args, aux_path):
        from ..attributes.groupings import resolve_grouping
        from ..checkpoints.native import load_model
        from ..sampler import SamplerConfig
        self.device = args.device or "cpu"
        self.base, _ = load_model(args.base, device=self.device)
        self.aux, _ = load_model(aux_path, device=self.device)
        self.clf = _classifier(args)
        self.grouping = resolve_grouping(args.grouping, args.classifier, self.clf.classes)
        self.threshold = args.threshold
        self.seeds = list(range(args.seed0, args.seed0 + args.n))
        self.sampler = SamplerConfig(num_steps=args.steps)
        self.interval = _interval(args)
        self.batch = args.batch_size

    def images(self, omega: float) -> np.ndarray:
        from ..generate import generate_images, generate_sims
        if float(omega) == 0.0:
            return generate_images(self.base, self.seeds, self.sampler, batch_size=self.batch, device=self.device)
        return generate_sims(self.base, self.aux, float(omega), self.seeds, self.sampler, interval=self.interval,
                             batch_size=self.batch, device=self.device)[0]

    def fractions(self, images) -> tuple[dict, np.ndarray]:
        from ..attributes.groupings import group_fractions
        assigned, _ = self.grouping.assign(self.clf.predict_proba(images), self.clf.classes, self.threshold)
        fr = group_fractions(assigned, self.grouping)
        return {g: (f, lo, hi, int((assigned == g).sum())) for g, (f, lo, hi) in fr.items()}, assigned


def _interval(args):
    from ..guidance import parse_interval
    return parse_interval(getattr(args, "interval", None))  # not every verb has --interval


def _target_of(args, groups) -> float:
    if args.group not in groups:
        raise UserError(f"'{args.group}' is not a group of this grouping (its groups: {groups}).")
    from ..fairness import parse_share
    return parse_share(args.target, "--target")


# -- find-omega -------------------------------------------------------------------------------------

def run_find_omega(args) -> int:
    """The omega whose measured group fraction is closest to the target (coarse grid, then bisection)."""
    from ..shift import find_omega
    m = Measure(args, args.aux)
    target = _target_of(args, m.grouping.group_names)

    def measure(w):
        fr, _ = m.fractions(m.images(w))
        f, lo, hi, k = fr[args.group]
        print(f"  omega {w:+.3f}: {args.group} {100 * f:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] "
              f"({k} of {args.n})", flush=True)
        return f, (lo, hi)

    print(f"find omega for {args.group} = {100 * target:.1f}% on {args.n} seeds from {args.seed0} "
          f"({args.steps} steps)")
    r = find_omega(measure, target, omega_range=(args.omega_min, args.omega_max), iterations=args.iterations)
    print(r.describe(args.group))
    if args.out:
        doc = {"omega": r.omega, "fraction": r.fraction, "interval": r.interval, "reached": r.reached,
               "status": r.status, "target": target, "group": args.group, "message": r.describe(args.group),
               "points": {str(w): {"fraction": f, "ci95": ci} for w, (f, ci) in r.points.items()},
               "measured": r.measured, "settings": {"n": args.n, "seed0": args.seed0, "steps": args.steps,
                                                    "interval": _interval(args), "base": args.base, "aux": args.aux,
                                                    "classifier": args.classifier, "grouping": m.grouping.to_dict()}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    return 0


# -- sweep ----------------------------------------------------------------------------------------

def _budgets(args) -> list[tuple[float, str]]:
    """(kimg, checkpoint path) of every budget to measure: --aux files, or every checkpoint of --run-dir."""
    from ..checkpoints.native import read_metadata
    from ..training import list_checkpoints
    if bool(args.aux) == bool(args.run_dir):
        raise UserError("Give the auxiliary checkpoints with --aux CKPT [CKPT ...] or a fine-tune's --run-dir.")
    if args.run_dir:
        found = list_checkpoints(args.run_dir)
        if not found:
            raise UserError(f"no checkpoints in {args.run_dir}; fine-tune with --checkpoint-kimg to keep budgets.")
        return [(nimg / 1000, str(p)) for nimg, p in found]
    out = []
    for p in args.aux:
        training = read_metadata(p).get("training") or {}
        kimg = training.get("kimg") or (training.get("nimg") or 0) / 1000
        out.append((float(kimg), str(p)))
    return sorted(out)


def _omegas(spec: str) -> list[float]:
    try:
        ws = sorted({round(float(v), 4) for v in spec.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--omegas must be comma-separated numbers, e.g. -1,0,0.5,1 (got {spec!r})") from None
    if not ws:
        raise UserError("--omegas is empty")
    return ws


def run_sweep(args) -> int:
    """Group fractions and Fréchet distances over the (omega, budget) grid -> grid.json + plotly figures."""
    from ..metrics.fid import compute_features, fd_report
    from .attributes import _extractor, _reference
    omegas, budgets = _omegas(args.omegas), _budgets(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = extractor = None
    if args.ref:
        extractor = _extractor(args)
        m0 = Measure(args, budgets[0][1])
        ref = _reference(args, extractor, m0.clf)
    rows = []
    for kimg, path in budgets:
        m = Measure(args, path)
        for w in omegas:
            images = m.images(w)
            fr, assigned = m.fractions(images)
            row = {"kimg": kimg, "checkpoint": path, "omega": w, "n": args.n,
                   "fractions": {g: {"fraction": f, "ci95": [lo, hi], "count": k} for g, (f, lo, hi, k) in fr.items()}}
            if ref is not None:
                rep = fd_report(compute_features(images, extractor, None), ref, assigned, feature=extractor.feature_id)
                row.update(metric=rep["metric"], fd=rep["overall"], fd_per_group=rep.get("per_group", {}),
                           fd_warnings=rep.get("warnings", []))
            rows.append(row)
            print(f"{kimg:g} kimg, omega {w:+.2f}: " + ", ".join(
                f"{g} {100 * v['fraction']:.1f}%" for g, v in row["fractions"].items())
                + (f"; {row['metric']} {row['fd']:.2f}" if "fd" in row else ""), flush=True)
    doc = {"settings": {"base": args.base, "omegas": omegas, "budgets_kimg": [k for k, _ in budgets], "n": args.n,
                        "seed0": args.seed0, "steps": args.steps, "interval": _interval(args),
                        "classifier": args.classifier, "grouping": m.grouping.to_dict(), "threshold": args.threshold,
                        "ref": args.ref, "note": "fractions among samples with a group; Wilson 95% intervals"},
           "points": rows}
    (out / "grid.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {out / 'grid.json'}")
    focus = args.group or m.grouping.group_names[-1]
    for name in _figures(doc, focus, out):
        print(f"wrote {out / name}")
    return 0


def _figures(doc: dict, focus: str, out: Path) -> list[str]:
    """Fraction vs omega (one line per budget, 95% band), distance vs omega, and the (omega, budget) heat map."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        print("note: figures need plotly (pip install plotly); grid.json holds every number")
        return []
    pts = doc["points"]
    kimgs, omegas = doc["settings"]["budgets_kimg"], doc["settings"]["omegas"]
    at = {(p["kimg"], p["omega"]): p for p in pts}
    n = doc["settings"]["n"]
    fig = go.Figure()
    for k in kimgs:
        f = [at[(k, w)]["fractions"][focus] for w in omegas]
        fig.add_scatter(x=omegas, y=[v["fraction"] for v in f], name=f"{k:g} kimg", mode="lines+markers",
                        error_y={"type": "data", "symmetric": False,
                                 "array": [v["ci95"][1] - v["fraction"] for v in f],
                                 "arrayminus": [v["fraction"] - v["ci95"][0] for v in f]})
    fig.update_layout(title=f"Fraction of {focus} vs ω ({n} samples a point, 95% Wilson intervals)",
                      xaxis_title="ω", yaxis_title=f"fraction {focus}", yaxis_range=[0, 1])
    written = ["fraction_vs_omega.html"]
    fig.write_html(out / written[0], include_plotlyjs="directory")
    if "fd" in pts[0]:
        fig = go.Figure()
        for k in kimgs:
            fig.add_scatter(x=omegas, y=[at[(k, w)]["fd"] for w in omegas], name=f"{k:g} kimg overall",
                            mode="lines+markers")
            fig.add_scatter(x=omegas, y=[at[(k, w)]["fd_per_group"].get(focus) for w in omegas],
                            name=f"{k:g} kimg {focus}", mode="lines+markers", line={"dash": "dot"})
        metric = pts[0]["metric"]
        fig.update_layout(title=f"{metric} vs ω ({n} samples a point; below ~{n} samples per group it is "
                                "dominated by small-sample bias)", xaxis_title="ω", yaxis_title=metric)
        written.append("fd_vs_omega.html")
        fig.write_html(out / written[-1], include_plotlyjs="directory")
    z = [[at[(k, w)]["fractions"][focus]["fraction"] for w in omegas] for k in kimgs]
    fig = go.Figure(go.Heatmap(z=z, x=omegas, y=[f"{k:g} kimg" for k in kimgs], colorscale="RdBu",
                               colorbar={"title": focus}))
    fig.update_layout(title=f"Fraction of {focus} over (ω, budget)", xaxis_title="ω", yaxis_title="budget")
    written.append("heatmap.html")
    fig.write_html(out / written[-1], include_plotlyjs="directory")
    return written


# -- parsers ---------------------------------------------------------------------------------------

def _add_pool(p) -> None:
    p.add_argument("pool", help="pool of base samples: .npz or folder written by `generate` (seeds kept)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="groups from a `label` output (CSV/JSON, edited or not); default: classify the pool now")
    _add_common(p, classifier_required=True)


def _add_measure(p, aux_required: bool) -> None:
    p.add_argument("--base", required=True, help="base model (.safetensors)")
    if aux_required:
        p.add_argument("--aux", required=True, help="auxiliary checkpoint (.safetensors)")
    p.add_argument("--n", type=int, default=256, help="samples per omega (default 256, the studio's)")
    p.add_argument("--seed0", type=int, default=METRIC_SEED0, help=f"first measurement seed (default {METRIC_SEED0})")
    p.add_argument("--steps", type=int, default=18, help="Heun steps (default 18; the demo numbers use 12)")
    p.add_argument("--interval", default=None, metavar="LO,HI", help="guidance interval in sigma (default: all)")
    _add_common(p, classifier_required=True)


def register(sub) -> None:
    """Add suggest-mix, build-set, find-omega and sweep."""
    p = sub.add_parser("suggest-mix", help="base fractions of a labelled pool and the auxiliary mix for a target")
    _add_pool(p)
    p.add_argument("--target", required=True, metavar="SPEC", help="target mix, e.g. '5-9=0.7' or '5-9=70%%'")
    p.add_argument("--omega0", type=float, default=1.0, help="planned omega of the guess (default 1)")
    p.add_argument("--n-s", type=int, default=None, help="also the counts for an S of this size")
    p.add_argument("--out", default=None, help="write the plan as JSON")
    p.set_defaults(run=run_suggest_mix)

    p = sub.add_parser("build-set", help="S from a labelled pool: a group mix (growing the pool when short) "
                                         "or a not-preferred list")
    _add_pool(p)
    p.add_argument("--mix", default=None, metavar="SPEC", help="S's group mix, e.g. '0-4=0.71,5-9=0.29'")
    p.add_argument("--target", default=None, metavar="SPEC", help="or a target: S gets the suggested mix")
    p.add_argument("--omega0", type=float, default=1.0, help="planned omega for --target (default 1)")
    p.add_argument("--not-preferred", default=None, metavar="FILE",
                   help="or S = the pool images listed in FILE (one name a line, or a CSV with a 'name' column)")
    p.add_argument("--n-s", type=int, default=1000, help="size of S for a mix (default 1000)")
    p.add_argument("--model", default=None, help="base model: generate and label more samples when a group is short")
    p.add_argument("--max-pool", type=int, default=200_000, help="refuse a mix that needs a larger pool (default "
                                                                 "200000, the studio's)")
    p.add_argument("--out", required=True, help="S as .npz (images, seeds, groups, set) or a new folder")
    p.add_argument("--pool-out", default=None, help="where the grown pool goes (default: OUT.pool.npz)")
    p.add_argument("--steps", type=int, default=None, help="Heun steps of new samples (default: the pool's recorded "
                                                           "steps, else 18)")
    p.set_defaults(run=run_build_set)

    p = sub.add_parser("find-omega", help="the omega at which a group's measured fraction meets a target")
    _add_measure(p, aux_required=True)
    p.add_argument("--group", required=True, help="the group whose fraction to steer, e.g. 5-9")
    p.add_argument("--target", required=True, help="target fraction: 0.7 or 70%%")
    p.add_argument("--iterations", type=int, default=4, help="bisection points after the coarse grid (default 4)")
    p.add_argument("--omega-min", type=float, default=-1.0)
    p.add_argument("--omega-max", type=float, default=3.0)
    p.add_argument("--out", default=None, help="write the result and every measured point as JSON")
    p.set_defaults(run=run_find_omega)

    p = sub.add_parser("sweep", help="fractions and FD over the (omega, budget) grid -> grid.json + figures")
    _add_measure(p, aux_required=False)
    p.add_argument("--aux", nargs="+", default=None, help="auxiliary checkpoints (one per budget)")
    p.add_argument("--run-dir", default=None, help="or a fine-tune run folder: every budget checkpoint in it")
    p.add_argument("--omegas", default="-1,0,0.5,1,1.5,2,2.5,3", help="omega grid (default -1..3 step 0.5)")
    p.add_argument("--group", default=None, help="group drawn in the figures (default: the grouping's last)")
    p.add_argument("--ref", default=None, help="real reference for FD: 'digits', images, or a statistics .npz "
                                               "(per-group statistics need images or 'digits')")
    p.add_argument("--feature", choices=["inception", "digits"], default="digits",
                   help="digits = FD-digits (offline, default); inception = FID")
    p.add_argument("--digits-weights", default=None, metavar="PATH")
    p.add_argument("--out", required=True, help="output folder (grid.json, *.html)")
    p.set_defaults(run=run_sweep)
