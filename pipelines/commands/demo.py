"""CLI: `build-demo` (rebuild the bundled digits world) and `demo-shift` (SIMS shift end to end)."""
from __future__ import annotations

import json
import tempfile

from tqdm import tqdm

from ..demo.assets import DEMO_CLASSIFIER, DEMO_MODEL


def run_build_demo(args) -> int:
    from ..demo.build import build_demo
    bar = tqdm(total=args.budget_kimg + args.cooldown_kimg, unit="kimg", desc="demo base")
    done = [0.0, 0.0]  # kimg of finished stages, last kimg seen

    def progress(p):
        if p["kimg"] < done[1]:  # stage 2 started: its kimg count restarts at 0
            done[0] += done[1]
        done[1] = p["kimg"]
        bar.update(done[0] + p["kimg"] - bar.n)
        bar.set_postfix(loss=f"{p['loss']:.3f}", img_s=f"{p['images_per_s']:.0f}")

    report = build_demo(args.model_out, args.classifier_out, args.budget_kimg, args.cooldown_kimg,
                        args.rebuild_classifier, progress=progress)
    bar.close()
    print(json.dumps(report, indent=1))
    return 0


def run_demo_shift(args) -> int:
    from ..demo.shift import DemoWorld, ShiftSettings, run_demo_shift
    settings = ShiftSettings(target_high=args.target, omega0=args.omega0, pool_size=args.pool, n_s=args.n_s,
                             finetune_kimg=args.budget_kimg, eval_samples=args.eval_samples,
                             omegas=[float(v) for v in args.omegas.split(",")])
    work = args.out or tempfile.mkdtemp(prefix="sims-demo-shift-")
    report = run_demo_shift(settings, work, world=DemoWorld(args.model, args.classifier))
    print(f"report: {work}/report.json")
    return 0 if report else 1


def register(sub) -> None:
    p = sub.add_parser("build-demo", help="retrain the bundled digits classifier and demo base model")
    p.add_argument("--budget-kimg", type=float, default=300.0, help="stage 1 training budget (kimg)")
    p.add_argument("--cooldown-kimg", type=float, default=50.0, help="stage 2 low-lr budget (kimg)")
    p.add_argument("--model-out", default=str(DEMO_MODEL))
    p.add_argument("--classifier-out", default=str(DEMO_CLASSIFIER))
    p.add_argument("--rebuild-classifier", action="store_true", help="retrain the classifier even if present")
    p.set_defaults(run=run_build_demo)

    p = sub.add_parser("demo-shift", help="the whole SIMS shift on the digits world, printed as a report")
    p.add_argument("--target", type=float, default=0.7, help="target share of digits 5-9 (default 0.7)")
    p.add_argument("--omega0", type=float, default=1.0, help="planned omega for the auxiliary-mix guess")
    p.add_argument("--pool", type=int, default=1000, help="initial pool of base samples")
    p.add_argument("--n-s", type=int, default=1000, help="size of the synthetic set S")
    p.add_argument("--budget-kimg", type=float, default=60.0, help="auxiliary fine-tuning budget (kimg)")
    p.add_argument("--omegas", default="-1,0,0.5,1,1.5,2,2.5,3")
    p.add_argument("--eval-samples", type=int, default=500, help="fixed seeds per omega")
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--classifier", default=str(DEMO_CLASSIFIER))
    p.add_argument("--out", default=None, help="work folder (default: a new temp folder)")
    p.set_defaults(run=run_demo_shift)
