"""A newcomer's first start: a fresh data folder, the Guide scrubbing the bundled example; the README's first screenshot.

    python tests/browser/first_run_shot.py [--out docs/screenshots]

Not a test: starts the studio as `./scripts/studio.sh` does (demo registered) on a temp data folder,
opens the Guide, moves ω to 0.5, 1.5 and 2.5 like a user dragging the slider, prints how long each
cached grid took to show, and saves first-run-guide.png.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_walk import demo_studio  # noqa: E402
from walk import DOC_SHOTS, browser_page, fill_slider, serving, settle, shot, tab, wait_text  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DOC_SHOTS), help="folder for first-run-guide.png")
    args = p.parse_args()
    t0 = time.perf_counter()
    st = demo_studio(Path(tempfile.mkdtemp(prefix="sims-first-run-")) / "data")
    with serving(st) as url:
        print(f"studio up (demo and bundled example registered) in {time.perf_counter() - t0:.1f} s: {url}")
        with browser_page(url, viewport={"width": 1400, "height": 1000}) as pg:
            t1 = time.perf_counter() - pg.open_s  # from the page's navigation on (chromium's start not counted)
            tab(pg, "Guide")
            wait_text(pg, "guide-banner", "Bundled example")
            for w in (0.5, 2.5, 1.5):
                t = time.perf_counter()
                fill_slider(pg, "omega", w, wait=False)
                wait_text(pg, "guide-caption", f"ω = {w:+.2f} · cached")
                print(f"ω = {w:+.2f}: cached grid shown {1000 * (time.perf_counter() - t):.0f} ms after the move")
            print(f"page load to the third scrubbed grid: {time.perf_counter() - t1:.1f} s")
            settle(pg)  # the curves redrawn after the release
            shot(pg, "first-run-guide.png", Path(args.out))
            print(f"wrote {Path(args.out) / 'first-run-guide.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
