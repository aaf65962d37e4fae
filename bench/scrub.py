"""Latency of an omega change in the Guide tab: uncached (render now) vs cached, on the demo model.

    python bench/scrub.py [--model assets/demo/digits_base.safetensors] [--seeds 64] [--steps 12]

Builds a throw-away studio: registers the model, generates and labels a small pool, marks it
'not preferred', fine-tunes a short auxiliary model on it (all through the studio's services,
in this process), then changes omega over the slider grid (-1 .. 3, step 0.25, omega 0 left out):
  uncached  — the first visit of each omega: SIMS sampling of the seeds, streamed in chunks
              (first = the first 16 samples on screen, full = the whole grid rendered and cached);
  cached    — the second visit (database lookup of the render key).
Each is measured in the service (no network) and through the running Gradio app the way a browser
talks to it (join the queue, read the event stream, then GET the image the event points to), the
render cache cleared in between. gradio_client is not used for timing: its own polling adds
about 140 ms per call that a browser does not wait for.
Each ω is rendered in the service and through the app back to back (the app already running in
both cases), so a shared machine's changing load hits both sides of a pair alike; prints median
and p95 of each, the app/service ratio per pair (median and range), the process CPU time per
uncached render on each side (extra work in the app shows there even on a loaded machine) and
the load average at the start and the end. Target: app within 1.3x of the service, uncached full.
    python bench/scrub.py --omegas 6      # a quicker run over 6 positions
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
    return (f"{name:<20} n={len(values):>3}  median {1000 * statistics.median(values):8.1f} ms   "
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


def timed_stream(stream) -> tuple[float, float]:
    """(seconds to the first grid on screen, seconds to the final grid) of a preview stream."""
    t0 = time.perf_counter()
    first = None
    for item in stream:
        if item[0] != "waiting":  # ("waiting", holders): the device slot is busy, nothing on screen yet
            first = first if first is not None else time.perf_counter() - t0
    return first, time.perf_counter() - t0


def main(argv=None) -> int:
    from pipelines.demo.assets import DEMO_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL), help="base checkpoint (default: the bundled demo)")
    p.add_argument("--seeds", type=int, default=64, help="samples in the preview grid")
    p.add_argument("--steps", type=int, default=12, help="Heun steps of the preview")
    p.add_argument("--budget-kimg", type=float, default=0.128, help="auxiliary fine-tune budget")
    p.add_argument("--omegas", type=int, default=0, help="measure this many slider positions, spread over the "
                                                          "grid (default 0: all 16 besides ω = 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of a live render (SIMS_RENDER_THREADS; "
                                                          "default: the studio's, one core fewer than the machine)")
    p.add_argument("--no-http", action="store_true", help="skip the measurement through the Gradio app")
    p.add_argument("--device", default="auto", help="where previews render: auto (cuda if available), cpu, cuda")
    args = p.parse_args(argv)
    from pipelines.training.distributed import resolve_device
    from pipelines.errors import UserError
    try:
        device = str(resolve_device(args.device))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = Path(args.model)
    if not model.is_file():
        print(f"error: no model at {model}; build the demo with `python -m pipelines build-demo` "
              "or pass --model PATH", file=sys.stderr)
        return 2
    import torch
    from studio.services import guide
    from studio.services.evaluate import render_threads
    if args.threads:
        os.environ["SIMS_RENDER_THREADS"] = str(args.threads)
    threads = render_threads()  # what a live render in the web process uses (jobs run in their own processes)
    with tempfile.TemporaryDirectory(prefix="sims-scrub-") as tmp:
        t0 = time.perf_counter()
        st, ck = prepare(Path(tmp), model, pool_n=64, budget_kimg=args.budget_kimg)
        print(f"setup (pool, S, fine-tune) {time.perf_counter() - t0:.1f} s")
        torch.set_num_threads(threads)  # the in-process jobs above lowered it
        gs = guide.GuideSettings(preview_steps=args.steps, preview_count=args.seeds)
        omegas = [w for w in guide.omega_grid() if w != 0.0]  # omega 0 samples the base alone (half the work)
        if args.omegas:
            omegas = [omegas[round(i * (len(omegas) - 1) / max(args.omegas - 1, 1))] for i in range(args.omegas)]
        load0 = os.getloadavg()
        print(f"model {model} on {device}, {args.seeds} seeds, {args.steps} Heun steps, "
              f"torch threads {torch.get_num_threads()}, cpus {len(os.sched_getaffinity(0))}, "
              f"load avg {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}")
        guide.preview(st.db, st.settings, ck, 0.0, gs, device)  # warm-up: model loading, allocator
        rows = measure(st, ck, omegas, gs, device, http=not args.no_http)
        for name, values in rows.items():
            if not name.startswith("cpu "):
                print(summary(name, values))
        for path in ("service", "http"):
            if rows.get(f"cpu {path}"):
                print(f"{path + ' uncached cpu':<20} n={len(rows[f'cpu {path}']):>3}  median "
                      f"{statistics.median(rows[f'cpu {path}']):8.2f} s of process CPU per render (all threads)")
        print(f"uncached full / cached median ratio: "
              f"{statistics.median(rows['uncached full']) / statistics.median(rows['cached']):.0f}x")
        if "http uncached full" in rows:
            for what in ("first", "full"):
                pairs = [h / s for h, s in zip(rows[f"http uncached {what}"], rows[f"uncached {what}"])]
                print(f"app / service, uncached {what}: median {statistics.median(pairs):.2f}x "
                      f"(range {min(pairs):.2f}-{max(pairs):.2f}x over {len(pairs)} ω, each pair measured back to "
                      f"back); ratio of medians {statistics.median(rows[f'http uncached {what}']) / statistics.median(rows[f'uncached {what}']):.2f}x")
        load1 = os.getloadavg()
        print(f"load avg at the end {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")
        st.close()
    return 0


def measure(st, ck, omegas, gs, device: str, http: bool = True) -> dict[str, list[float]]:
    """Uncached then cached latency per ω, in the service and (with `http`) through the app, interleaved:
    each ω is rendered in the service and then through the app, back to back, so a change in the machine's
    load affects both sides of a pair alike."""
    from studio.services import guide
    rows: dict[str, list[float]] = {}
    add = lambda k, v: rows.setdefault(k, []).append(v)  # noqa: E731
    app = open_app(st) if http else None
    try:
        if app is not None:
            browser = app[1]
            values = lambda w: [ck, w, device, gs.preview_steps, gs.preview_count, gs.steps, gs.n,  # noqa: E731
                                gs.skip_steps, gs.shared_encoder]
            browser.call("render_exact", values(0.0))  # warm-up (cached by the service's warm-up)
        for w in omegas:
            clear_renders(st)
            c0 = time.process_time()
            first, full = timed_stream(guide.preview_stream(st.db, st.settings, ck, w, gs, device))
            add("cpu service", time.process_time() - c0)
            add("uncached first", first)
            add("uncached full", full)
            add("cached", timed_stream(guide.preview_stream(st.db, st.settings, ck, w, gs, device))[1])
            if app is not None:
                clear_renders(st)
                c0 = time.process_time()
                frames = [t for t, _ in browser.call("render_exact", values(w))]
                add("cpu http", time.process_time() - c0)
                add("http uncached first", frames[0])
                add("http uncached full", frames[-1])
                # the page's scrub request also carries: restored, model, every budget, find group and target
                # (nothing is remembered: this page restored nothing), the guide-model pick, compare panel open
                more = [None, None, True, None, 70, "aux", 0]
                add("http cached", browser.call("scrub", values(w) + more)[-1][0])
    finally:
        if app is not None:
            app[1].close()
            app[0].close()
    return rows


def open_app(st):
    """(the running Gradio app, a client speaking its queue protocol as a browser does)."""
    from studio.testing import QueueClient
    from studio.ui.app import build_ui, launch_kwargs
    demo = build_ui(st)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(st))
    return demo, QueueClient(url)


def clear_renders(st) -> None:
    """Forget every cached preview (rows and files), so omega changes render again."""
    import shutil
    from sqlalchemy import delete
    from studio.models import Render
    with st.db.session() as s:
        s.execute(delete(Render))
    shutil.rmtree(st.settings.abs("cache/renders"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
