"""CLI: `build-demo-aux` — rebuild the bundled example auxiliary model and its preview grid."""
from __future__ import annotations

import json

from ..demo.assets import DEMO_CLASSIFIER, DEMO_MODEL


def run(args) -> int:
    from ..demo.aux import AUX_REPORT, DEMO_AUX, DEMO_PREVIEWS, AuxRecipe, build_demo_aux
    recipe = AuxRecipe(target_high=args.target, pool_size=args.pool, n_s=args.n_s, budget_kimg=args.budget_kimg)
    report = build_demo_aux(recipe, args.model, args.classifier, args.out_aux or DEMO_AUX,
                            args.out_previews or DEMO_PREVIEWS, args.report or AUX_REPORT, work_dir=args.work)
    print(json.dumps({k: report[k] for k in ("counts", "finetune", "shipped", "wall_seconds")}, indent=1))
    return 0


def register(sub) -> None:
    p = sub.add_parser("build-demo-aux", help="rebuild the studio's bundled example: an auxiliary model for "
                                              "70%% of digits 5-9 and its 17 precomputed omega previews")
    p.add_argument("--target", type=float, default=0.7, help="target share of digits 5-9 (default 0.7)")
    p.add_argument("--pool", type=int, default=1000, help="base samples labelled first (default 1000)")
    p.add_argument("--n-s", type=int, default=1000, help="size of the synthetic set S (default 1000)")
    p.add_argument("--budget-kimg", type=float, default=40.0, help="auxiliary fine-tune budget (default 40 kimg)")
    p.add_argument("--model", default=str(DEMO_MODEL), help="demo base model")
    p.add_argument("--classifier", default=str(DEMO_CLASSIFIER), help="digits classifier")
    p.add_argument("--out-aux", default=None, help="difference file (default: the bundled asset)")
    p.add_argument("--out-previews", default=None, help="preview grid .npz (default: the bundled asset)")
    p.add_argument("--report", default=None, help="build report .json (default: assets/demo/aux_build_report.json)")
    p.add_argument("--work", default=None, help="keep the fine-tune's run folder here (a rerun resumes it)")
    p.set_defaults(run=run)
