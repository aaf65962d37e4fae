"""Walk the studio on the bundled digits demo in chromium and save the README's screenshots.

    python tests/browser/demo_walk.py [--budget-kimg 40] [--out docs/screenshots]

Not a test (the browser tests use a tiny untrained model to stay fast): this drives the real
demo end to end — pool, labels, target 70% of 5-9, suggested mix, S, auxiliary fine-tune,
omega grid, find omega, export — on a fresh data directory, and writes demo-*.png. On 2 CPU
cores it takes about half an hour, mostly the fine-tune and the omega grid.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from walk import (DOC_SHOTS, browser_page, fill, fill_slider, finetune, run_job, serving, settle, shot, tab,  # noqa: E402
                  wait_text)


def demo_studio(data_dir: Path):
    """The real first run on `data_dir`: demo registered, job runner started (serve it with walk.serving)."""
    from studio.core import open_studio
    from studio.settings import Settings
    st = open_studio(Settings(data_dir=data_dir))
    if st.notes:
        st.close()
        raise SystemExit("demo assets missing: " + "; ".join(st.notes))
    return st


def walk(pg, args, out: Path) -> None:
    """Flows 1-7 on the demo, one screenshot each."""
    t0 = time.time()
    step = lambda msg: print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)  # noqa: E731
    tab(pg, "Models")
    run_job(pg, "card-render", "import_model", timeout=300)
    wait_text(pg, "model-card", "16 samples")
    shot(pg, "demo-01-models.png", out)
    step("models")
    tab(pg, "Generate & label")
    fill(pg, "gen-n", args.pool)
    fill_slider(pg, "gen-steps", 12)
    assert run_job(pg, "gen-btn", "generate", timeout=1200)[0] == "succeeded"
    assert run_job(pg, "label-btn", "generate", timeout=600)[0] == "succeeded"
    wait_text(pg, "page-info", f"{args.pool + 16:,}")
    pg.get_by_role("button", name=re.compile(r"^Thumbnail 1 of")).click()
    pg.locator("#detail-probs .js-plotly-plot").wait_for(timeout=30_000)
    shot(pg, "demo-02-generate-label.png", out)
    step("pool generated and labelled")
    tab(pg, "Target")
    pg.locator("#target-refresh").click()
    wait_text(pg, "base-fractions", "5-9")
    fill_slider(pg, "target-1", 70)
    wait_text(pg, "target-sum", "Target sum: 100.0%")
    pg.locator("#mix-suggest").click()
    settle(pg)
    shot(pg, "demo-03-target.png", out)
    step("target set")
    tab(pg, "Build set")
    fill(pg, "ns", args.ns)
    fill_slider(pg, "build-steps", 12)
    pg.locator("#plan-check").click()
    wait_text(pg, "plan-md", "needed")
    assert run_job(pg, "build-btn", "build_set", timeout=1800)[0] == "succeeded"
    wait_text(pg, "sets-table", "ready")
    settle(pg)
    shot(pg, "demo-04-build-set.png", out)
    step("S built")
    finetune(pg, args.budget_kimg, args.budget_kimg / 4, timeout=7200)
    pg.locator("#ft-loss .js-plotly-plot").wait_for(timeout=60_000)
    shot(pg, "demo-05-finetune.png", out)
    step("fine-tuned")
    tab(pg, "Guide")
    pg.get_by_text("Sampling and measurement").click()
    fill(pg, "guide-psteps", 12)
    fill(pg, "guide-msteps", 12)
    fill(pg, "guide-n", args.n)
    assert run_job(pg, "guide-sweep", "sweep", timeout=7200)[0] == "succeeded"
    fill(pg, "find-target", 70)
    assert run_job(pg, "find-btn", "sweep", timeout=3600)[0] == "succeeded"
    wait_text(pg, "find-result", "omega =")
    settle(pg)  # the slider moves to the found omega and its grid loads
    shot(pg, "demo-06-guide.png", out)
    step("guided: " + pg.locator("#find-result").inner_text())
    tab(pg, "Export")
    pg.locator("#bundle-btn").click()
    pg.locator("#bundle-file a").first.wait_for(timeout=120_000)
    fill(pg, "dataset-n", 1000)
    assert run_job(pg, "dataset-btn", "export_dataset", timeout=1800)[0] == "succeeded"
    pg.locator("#dataset-file a").first.wait_for(timeout=60_000)
    shot(pg, "demo-07-export.png", out)
    tab(pg, "Jobs")
    shot(pg, "demo-08-jobs.png", out)
    step("exported")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=512, help="samples generated before labelling")
    p.add_argument("--ns", type=int, default=1000, help="size of S")
    p.add_argument("--budget-kimg", type=float, default=40.0, help="auxiliary fine-tune budget")
    p.add_argument("--n", type=int, default=256, help="samples per omega in the omega grid")
    p.add_argument("--out", default=str(DOC_SHOTS), help="folder for the screenshots")
    p.add_argument("--data-dir", default=None, help="data directory (default: a new temp folder)")
    args = p.parse_args(argv)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="sims-demo-walk-")) / "data"
    with serving(demo_studio(data_dir)) as url, browser_page(url) as pg:
        print(f"studio on {url}, data in {data_dir}", flush=True)
        walk(pg, args, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
