"""Find ω in score space and for the weight-space merge on the demo, through the studio's own Guide jobs.

Opens (or creates) a studio data folder with the demo registered (the bundled 70% auxiliary), runs
the find-ω job in each mode with the SIMS auxiliary as the guide on the same measurement seeds, and
writes each mode's answer, time and stored curves (5-9 fraction with its Wilson interval, FD-digits
per group) as JSON. The two ω scales differ: compare what each answer reaches, not its ω.

    python bench/guide_find_omega.py --data /tmp/guide-find --out docs/results/merge_vs_sims/find_omega_studio.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="studio data folder (created with the demo if new)")
    ap.add_argument("--out", required=True, help="JSON result")
    ap.add_argument("--n", type=int, default=256, help="samples per ω (default 256, the Guide's)")
    ap.add_argument("--steps", type=int, default=12, help="Heun steps (default 12)")
    ap.add_argument("--target", type=float, default=0.7, help="target fraction of 5-9 (default 0.7)")
    args = ap.parse_args()
    from studio.core import open_studio
    from studio.services import attributes, guide, guide_model, merge_guide
    from studio.settings import Settings
    from studio.testing import run_now
    st = open_studio(Settings(data_dir=Path(args.data)), start_runner=False, demo=True)
    g = next(x for x in attributes.list_groupings(st.db, "digits") if x["name"] == "digits 0-4 vs 5-9")
    ck = guide.run_checkpoints(st.db)[0][1]
    gs = guide.GuideSettings(steps=args.steps, n=args.n)
    out = {"checkpoint": ck, "n": gs.n, "steps": gs.steps, "target": args.target,
           "seeds": f"{guide.METRIC_SEED0}-{guide.METRIC_SEED0 + gs.n - 1}", "guide": "SIMS auxiliary (bundled)"}
    for mode in guide_model.MODES:
        t0 = time.perf_counter()
        view = run_now(st, merge_guide.submit_find(st.db, st.settings, ck, g["id"], "5-9", args.target, gs, mode))
        c = merge_guide.curves(st.db, ck, g["id"], guide_model.measurement_key(gs, None, mode))
        out[mode] = {"state": view.state, "message": view.message, "result": view.result,
                     "seconds": time.perf_counter() - t0,
                     "fraction_5_9": {w: c["fraction"]["5-9"][w] for w in sorted(c["fraction"].get("5-9", {}))},
                     "fd_group": {grp: {w: pts[w] for w in sorted(pts)} for grp, pts in c["fd_group"].items()}}
        print(f"{mode}: {view.state}: {view.message} ({out[mode]['seconds']:.0f} s)", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    st.close()


if __name__ == "__main__":
    main()
