"""Score-space SIMS vs the weight-space merge (Neon) on the digits demo, same guides, omegas and seeds.

For each guide (a SIMS auxiliary, a no-shift control auxiliary, an earlier checkpoint for
autoguidance) and each omega: the fraction of digits 5-9 (Wilson 95% interval), FD-digits per group
(against that group's real digits), the fairness discrepancy (L2) to the target, and the sampling
time of the base alone, score-space SIMS and the merged model, run alternately on the same seeds
(median of --repeats timings each). Writes JSON and prints a Markdown table.

    python bench/merge_vs_sims.py --guide shift70=AUX70.safetensors --guide control=AUXCTL.safetensors \
        --guide early20k=EARLY.safetensors --omegas=-1,0,0.5,1,1.5,2,3 --samples 500 --out docs/results/merge_vs_sims.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.attributes.groupings import wilson_interval  # noqa: E402
from pipelines.checkpoints.native import load_model, load_state_file, read_metadata  # noqa: E402
from pipelines.demo.assets import DEMO_MODEL, DEMO_SAMPLER, HIGH, LOW  # noqa: E402
from pipelines.demo.shift import DemoWorld  # noqa: E402
from pipelines.fairness import fairness_discrepancy  # noqa: E402
from pipelines.generate import generate_images, generate_sims  # noqa: E402
from pipelines.merge import merge_state_dicts  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402


def _merged(base_state, base_cfg, guide_path, omega):
    model = build_model(ModelConfig.from_dict(base_cfg))
    model.load_state_dict(merge_state_dicts(base_state, load_state_file(guide_path), omega))
    return model.eval().requires_grad_(False)


def _timing(base, guide, merged, seeds, args) -> dict:
    """Sampling seconds of base, merged and score-space SIMS, run in turn (A B C, C B A, ...) on the same seeds."""
    runs = {"base": lambda: generate_images(base, seeds, DEMO_SAMPLER, args.batch),
            "score_space": lambda: generate_sims(base, guide, 1.0, seeds, DEMO_SAMPLER, batch_size=args.batch)}
    if merged is not None:
        runs["merged"] = lambda: generate_images(merged, seeds, DEMO_SAMPLER, args.batch)
    times = {k: [] for k in runs}
    order = list(runs)
    for rep in range(args.repeats):
        for k in (order if rep % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds_median": med, "seconds_all": times,
            "ratio_to_base": {k: v / med["base"] for k, v in med.items()}}


def _row(world, images, target):
    m = world.measure(images)
    groups, _ = world.label(images)
    k, n = int((groups == HIGH).sum()), int((groups != "uncertain").sum())
    lo, hi = wilson_interval(k, n)
    return {"fraction_high": m["fraction_high"], "ci95": [lo, hi], "uncertain": m["uncertain"],
            f"fd_digits_{LOW}": m[f"fd_digits_{LOW}"], f"fd_digits_{HIGH}": m[f"fd_digits_{HIGH}"],
            "fd_digits": m["fd_digits"],
            "fairness_discrepancy_l2": fairness_discrepancy([1 - m["fraction_high"], m["fraction_high"]],
                                                            [1 - target, target])}


def combine(paths) -> dict:
    """Several result files (e.g. extra omegas run later) as one, rows of each guide sorted by omega."""
    out = None
    for path in paths:
        r = json.loads(Path(path).read_text())
        if out is None:
            out = r
            continue
        for name, g in r["guides"].items():
            mine = out["guides"].setdefault(name, g)
            if mine is not g:
                have = {row["omega"] for row in mine["rows"]}
                mine["rows"] += [row for row in g["rows"] if row["omega"] not in have]
                mine["timing_at_omega_1"] = mine["timing_at_omega_1"] or g["timing_at_omega_1"]
    for g in out["guides"].values():
        g["rows"].sort(key=lambda row: row["omega"])
    return out


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--tables":  # print combined results, run nothing
        print(markdown(combine(sys.argv[2:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] + " (--tables A.json B.json ... prints "
                                 "the combined tables of earlier runs)")
    ap.add_argument("--base", default=str(DEMO_MODEL))
    ap.add_argument("--guide", action="append", required=True, metavar="NAME=CKPT")
    ap.add_argument("--omegas", default="-1,0,0.5,1,1.5,2,3")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed0", type=int, default=10_000_000, help="first seed (demo-shift's evaluation seeds)")
    ap.add_argument("--target", type=float, default=0.7, help="target share of 5-9 for the discrepancy column")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median), alternating order; 0 = no timing")
    ap.add_argument("--timing-samples", type=int, default=128, help="seeds per timing run")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = DemoWorld(args.base)
    seeds = range(args.seed0, args.seed0 + args.samples)
    omegas = [float(v) for v in args.omegas.split(",")]
    base_state, base_cfg = load_state_file(args.base), read_metadata(args.base)["model"]
    result = {"settings": {**vars(args), "sampler_steps": DEMO_SAMPLER.num_steps, "torch_threads": args.threads,
                           "timing": "at omega 1: median of --repeats runs, base / merged / score-space run "
                                     "in alternating order on the same seeds, sampling only (labelling excluded)"},
              "guides": {}}
    base_imgs = generate_images(world.base, seeds, DEMO_SAMPLER, args.batch)
    base_row = _row(world, base_imgs, args.target)
    for spec in args.guide:
        name, path = spec.split("=", 1)
        guide, _ = load_model(path)
        same_arch = read_metadata(path)["model"] == base_cfg
        rows = []
        for omega in omegas:
            # omega 0 is the base and omega -1 the guide for both methods (bit for bit, tests/test_merge.py):
            # sampled once and shown in both columns.
            if omega == 0:
                sims = dict(base_row)
            else:
                imgs, nfe = generate_sims(world.base, guide, omega, seeds, DEMO_SAMPLER, batch_size=args.batch)
                sims = {**_row(world, imgs, args.target), "network_passes_per_sample": nfe}
            row = {"omega": omega, "score_space": sims}
            if same_arch:
                if omega in (0, -1):
                    row["merged"] = {**sims, "same_as_score_space": True}
                else:
                    row["merged"] = _row(world, generate_images(_merged(base_state, base_cfg, path, omega), seeds,
                                                                DEMO_SAMPLER, args.batch), args.target)
            rows.append(row)
            print(f"{name} omega {omega:+.2f}: score-space {sims['fraction_high']:.3f}, merged "
                  f"{row.get('merged', {}).get('fraction_high', float('nan')):.3f}", flush=True)
        timing = None if args.repeats == 0 else _timing(
            world.base, guide, _merged(base_state, base_cfg, path, 1.0) if same_arch else None,
            range(args.seed0, args.seed0 + args.timing_samples), args)
        result["guides"][name] = {"checkpoint": path, "same_architecture": same_arch, "rows": rows,
                                  "timing_at_omega_1": timing}
        print(f"{name} timing (omega 1, {args.timing_samples} seeds, median of {args.repeats}): {timing}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    """One Markdown table per guide: fraction, per-group FD-digits, L2 discrepancy; then the timing."""
    out = []

    def frac(d):
        return f"{d['fraction_high']:.3f} ({d['ci95'][0]:.2f}–{d['ci95'][1]:.2f})" if d else "—"

    def fd(d):
        return f"{d['fd_digits_0-4']:.1f} / {d['fd_digits_5-9']:.1f}" if d else "—"

    for name, g in result["guides"].items():
        out += [f"\n**{name}** (`{g['checkpoint']}`)\n",
                "| ω | 5–9 score-space (95% CI) | 5–9 merged (95% CI) | FD-digits 0–4 / 5–9 score-space "
                "| FD-digits 0–4 / 5–9 merged | L2 discrepancy to target score / merged |",
                "|---|---|---|---|---|---|"]
        for r in g["rows"]:
            s, m = r["score_space"], r.get("merged")
            disc = f"{s['fairness_discrepancy_l2']:.3f} / " + (f"{m['fairness_discrepancy_l2']:.3f}" if m else "—")
            out.append(f"| {r['omega']:+g} | {frac(s)} | {frac(m)} | {fd(s)} | {fd(m)} | {disc} |")
        t = g["timing_at_omega_1"]
        if t is None:
            continue
        out.append("\nsampling time at ω = 1 (median s; ratio to base): " + ", ".join(
            f"{k} {v:.2f} s ({t['ratio_to_base'][k]:.2f}×)" for k, v in t["seconds_median"].items()))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
