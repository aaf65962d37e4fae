"""Latency of an omega change in the Guide tab: uncached (render now) vs cached, on the demo model.

    python bench/scrub.py [--model assets/demo/digits_base.safetensors] [--seeds 64] [--steps 12]

Builds a throw-away studio: registers the model, generates and labels a small pool, marks it
'not preferred', fine-tunes a short auxiliary model on it (all through the studio's services,
in this process), then changes omega over the slider grid (-1 .. 3, step 0.25):
  uncached  — the first visit of each omega (sampling 64 seeds with SIMS guidance + writing the cache);
  cached    — the second visit (database lookup of the render key);
  http      — the second visit through the running Gradio app (gradio_client, /scrub endpoint),
              i.e. what a browser waits for, image transfer included.
Prints median and p95 of each, measured side by side in one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pct(values, q):
    """q-th percentile (nearest rank) of a list."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))]


def summary(name, values):
    return (f"{name:<10} n={len(values):>3}  median {1000 * statistics.median(values):8.1f} ms   "
            f"p95 {1000 * pct(values, 95):8.1f} ms")


def prepare(work: Path, model: Path, pool_n: int, budget_kimg: float):
    """Studio with the model, a not-preferred S from its pool and a short fine-tune; returns (studio, checkpoint id)."""
    from studio.core import open_studio
    from studio.services import attributes, finetune, labels, pool, registry, sets
    from studio.settings import Settings
    from studio.testing import run_now
    st = open_studio(Settings(data_dir=work / "data"), start_runner=False, demo=False)
    attributes.register_classifier(st.db, "digits")
    attributes.register_builtin_groupings(st.db, "digits")
    mid = registry.register_checkpoint(st.db, st.settings, model)
    assert run_now(st, pool.submit_generate(st.db, mid, pool_n, steps=12)).state == "succeeded"
    labels.set_not_preferred(st.db, [r["id"] for r in pool.gallery_page(st.db, mid, per_page=pool_n).rows])
    sid = sets.build_not_preferred(st.db, mid)
    job = finetune.submit(st.db, sid, total_kimg=budget_kimg, checkpoint_kimg=budget_kimg, lr=1e-3, batch_size=32,
                          previews=False)
    view = run_now(st, job)
    if view.state != "succeeded":
        raise SystemExit(f"fine-tune failed: {view.message}")
    return st, finetune.checkpoints(st.db, job)[-1]["id"]


def main(argv=None) -> int:
    from pipelines.demo.assets import DEMO_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL), help="base checkpoint (default: the bundled demo)")
    p.add_argument("--seeds", type=int, default=64, help="samples in the preview grid")
    p.add_argument("--steps", type=int, default=12, help="Heun steps of the preview")
    p.add_argument("--budget-kimg", type=float, default=0.128, help="auxiliary fine-tune budget")
    p.add_argument("--no-http", action="store_true", help="skip the measurement through the Gradio app")
    args = p.parse_args(argv)
    model = Path(args.model)
    if not model.is_file():
        print(f"error: no model at {model}; build the demo with `python -m pipelines build-demo` "
              "or pass --model PATH", file=sys.stderr)
        return 2
    import torch
    from studio.services import guide
    threads = torch.get_num_threads()  # what the web process uses (jobs run in their own processes)
    with tempfile.TemporaryDirectory(prefix="sims-scrub-") as tmp:
        t0 = time.perf_counter()
        st, ck = prepare(Path(tmp), model, pool_n=64, budget_kimg=args.budget_kimg)
        print(f"setup (pool, S, fine-tune) {time.perf_counter() - t0:.1f} s")
        torch.set_num_threads(threads)  # the in-process jobs above lowered it
        print(f"model {model}, {args.seeds} seeds, {args.steps} Heun steps, torch threads {torch.get_num_threads()}, "
              f"cpus {len(os.sched_getaffinity(0))}, load avg {os.getloadavg()[0]:.1f}")
        gs = guide.GuideSettings(preview_steps=args.steps, preview_count=args.seeds)
        omegas = [w for w in guide.omega_grid() if w != 0.0]  # omega 0 samples the base alone (half the work)
        guide.preview(st.db, st.settings, ck, 0.0, gs)  # warm-up: model loading, allocator
        uncached, cached = [], []
        for w in omegas:
            out = guide.preview(st.db, st.settings, ck, w, gs)
            assert not out["cached"]
            uncached.append(out["seconds"])
        for w in omegas:
            t = time.perf_counter()
            out = guide.preview(st.db, st.settings, ck, w, gs)
            cached.append(time.perf_counter() - t)
            assert out["cached"]
        print(summary("uncached", uncached))
        print(summary("cached", cached))
        if not args.no_http:
            print(summary("http", http_latency(st, ck, omegas, gs)))
        print(f"uncached/cached median ratio: {statistics.median(uncached) / statistics.median(cached):.0f}x")
        st.close()
    return 0


def http_latency(st, ck, omegas, gs) -> list[float]:
    """Cached omega changes through the Gradio app, as a browser would make them."""
    from gradio_client import Client
    from studio.ui.app import build_ui, launch_kwargs
    demo = build_ui(st)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(st))
    try:
        client = Client(url, verbose=False)
        gs_vals = [gs.preview_steps, gs.preview_count, gs.steps, gs.n, gs.skip_steps, gs.shared_encoder]
        out = []
        for w in omegas:
            t = time.perf_counter()
            client.predict(ck, w, "cpu", *gs_vals, api_name="/scrub")
            out.append(time.perf_counter() - t)
        return out
    finally:
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
