"""Guide and export: cached previews, the omega grid job, curves, heat map, find omega, bundle and dataset."""
import subprocess
import sys

import numpy as np
import pytest

from pipelines.errors import UserError
from studio.services import evaluate, export, guide, pool
from studio.storage import read_png
from studio.testing import run_now, tiny_finetuned_world

GS = guide.GuideSettings(preview_steps=2, preview_count=4, steps=2, n=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    st, mid, g, cks = tiny_finetuned_world(tmp_path_factory.mktemp("guide") / "data", total_kimg=0.032)
    yield st, mid, g, cks
    st.close()


def test_preview_is_cached_and_omega_zero_is_the_base_model(world):
    st, mid, g, cks = world
    first = guide.preview(st.db, st.settings, cks[-1]["id"], 1.5, GS)
    again = guide.preview(st.db, st.settings, cks[-1]["id"], 1.5, GS)
    assert not first["cached"] and again["cached"] and again["grid"] == first["grid"]
    zero = np.load(guide.preview(st.db, st.settings, cks[-1]["id"], 0.0, GS)["npz"])["images"]
    seed0 = next(r for r in pool.gallery_page(st.db, mid, per_page=5).rows if r["seed"] == 0)
    assert (zero[0] == read_png(st.settings.abs(seed0["path"]))).all()  # same noise, same sampler
    moved = np.load(first["npz"])["images"]
    assert moved.shape == zero.shape
    with pytest.raises(UserError, match="between -1.0 and 3.0"):
        guide.preview(st.db, st.settings, cks[-1]["id"], 5, GS)


def test_preview_chunks_start_small_then_fill_batches():
    assert evaluate.preview_chunks(64) == [16, 48]
    assert evaluate.preview_chunks(10) == [10]
    assert evaluate.preview_chunks(200) == [16, 64, 64, 56]


def test_streamed_preview_shows_final_pixels_early_then_caches(world):
    st, mid, g, cks = world
    gs = guide.GuideSettings(preview_steps=2, preview_count=20, steps=2, n=16)  # chunks 16 + 4
    items = list(guide.preview_stream(st.db, st.settings, cks[-1]["id"], 0.75, gs))
    assert [i[0] for i in items] == ["partial", "done"]
    _, partial, done, total = items[0]
    assert (done, total) == (16, 20)
    final = read_png(items[1][1]["grid"])
    assert partial.shape == final.shape  # the whole grid laid out, missing cells empty
    rows_done = final.shape[0] * 3 // 5  # 5x5 cells, first three rows (15 samples) complete in the partial grid
    assert (partial[:rows_done] == final[:rows_done]).all()  # streamed rows are the final samples, not a draft
    assert not (partial == final).all()
    again = list(guide.preview_stream(st.db, st.settings, cks[-1]["id"], 0.75, gs))
    assert [i[0] for i in again] == ["done"] and again[0][1]["cached"]


def test_app_streams_an_uncached_grid_then_answers_from_the_cache(world):
    import uuid
    from studio.testing import QueueClient
    from studio.ui.app import build_ui, launch_kwargs
    from studio.ui.target_tab import MAX_GROUPS
    st, mid, g, cks = world
    demo = build_ui(st)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(st))

    def request(name, data):  # an event without the queue: one POST, as the page sends it
        r = client.http.post(url + "gradio_api/run/predict", json={
            "data": data, "fn_index": client.fn[name], "session_hash": uuid.uuid4().hex, "event_data": None,
            "trigger_id": None})
        r.raise_for_status()
        return r.json()["data"]

    try:
        client = QueueClient(url)
        values = [cks[-1]["id"], 2.25, "cpu", 2, 20, 2, 16, 0, False]  # 20 preview seeds: chunks of 16 + 4
        # the scrub request also carries: the remembered picks (restored, model, every budget, find group and
        # target; this page has restored nothing, so nothing is stored), the guide-model panel's pick and
        # whether the score-vs-merge panel is open
        more = [None, mid, True, None, 70, "aux", 0]
        out = request("scrub", values + more)
        grid, caption, shown, render, gm_grid, gm_caption, _ = out[:7]
        assert "render" in caption and shown == "" and isinstance(render, int)  # a render is requested
        assert "not rendered it yet" in gm_caption
        frames = client.call("render_exact", values)
        assert len(frames) == 2  # the first 16 samples, then the whole grid
        assert "16 of 20 samples" in frames[0][1][1] and "rendered now" in frames[1][1][1]
        out = request("scrub", values + more)
        grid, caption, shown, render, gm_grid, gm_caption, gm_render = out[:7]
        assert "cached" in caption and grid["url"] and shown and "value" not in render  # no render requested
        assert gm_grid["path"] == grid["path"] and "same grid as the main preview" in gm_caption
        assert out[7:] == [{"__type__": "update"}]  # the closed score-vs-merge panel: nothing
        assert isinstance(request("scrub", values + more[:-1] + [1])[7], int)  # open: its own events redraw it
        after = request("reshow", [shown, *values, "aux"])
        assert after[:3] == [{"__type__": "update"}] * 3 and "same grid" in after[4]  # the grid is on screen
        assert "cached" in request("reshow", ["", *values, "aux"])[1]  # the page moved on meanwhile
        # the curves and the fairness panel drawn with them: one request
        targets = [50, 50] + [0] * (MAX_GROUPS - 2)
        curves = request("draw_curves", [cks[-1]["id"], g["id"], 2.25, list(g["groups"]), mid, *values[3:],
                                         *targets, "aux"])
        assert len(curves) == 6 and curves[0]["plot"] and curves[4]["plot"] and "measure" in curves[5].lower()
        client.close()
    finally:
        demo.close()


def test_sweep_fills_the_cache_and_the_curves(world):
    st, mid, g, cks = world
    job = guide.submit_sweep(st.db, cks[-1]["id"], g["id"], GS, metric_omegas=[-1, 0, 1])
    view = run_now(st, job)
    assert view.state == "succeeded", view.traceback
    assert all(guide.preview(st.db, st.settings, cks[-1]["id"], w, GS)["cached"] for w in guide.omega_grid())
    c = guide.curves(st.db, cks[-1]["id"], g["id"], GS)
    assert sorted(c["fraction"]["0-4"]) == [-1, 0, 1]
    for w in (-1, 0, 1):
        assert c["fraction"]["0-4"][w][0] + c["fraction"]["5-9"][w][0] == pytest.approx(1) or \
            np.isnan(c["fraction"]["0-4"][w][0])
    assert set(c["fd"]) == {-1, 0, 1}  # FD-digits against the real digits
    h = guide.heatmap(st.db, cks[-1]["id"], g["id"], "5-9", GS)
    assert h["kimgs"] == [0.016, 0.032] and h["omegas"] == [-1, 0, 1] and np.isfinite(h["fraction"]).all()
    # a second sweep finds everything cached
    view = run_now(st, guide.submit_sweep(st.db, cks[-1]["id"], g["id"], GS, metric_omegas=[-1, 0, 1]))
    assert "0 measurements (6 cached)" in view.message


def test_a_checkpoint_without_previews_gets_them_queued_once(world):
    st, mid, g, cks = world
    gs = guide.GuideSettings(preview_steps=3, preview_count=4, steps=2, n=16, skip_steps=1)  # own interval
    first = cks[0]["id"]
    job = guide.ensure_previews(st.db, st.settings, first, gs)
    assert job is not None
    assert guide.ensure_previews(st.db, st.settings, first, gs) is None  # already on its way
    assert run_now(st, job).state == "succeeded"
    # cached under the preview's own interval, i.e. exactly what the slider asks for
    assert all(guide.preview(st.db, st.settings, first, w, gs)["cached"] for w in guide.omega_grid())
    assert guide.ensure_previews(st.db, st.settings, first, gs) is None  # all cached


def test_find_omega_reports_the_closest_fraction(world):
    st, mid, g, cks = world
    view = run_now(st, guide.submit_find_omega(st.db, cks[-1]["id"], g["id"], "5-9", 0.7, GS, iterations=2))
    assert view.state == "succeeded", view.traceback
    assert -1 <= view.result["omega"] <= 3 and 0 <= view.result["fraction"] <= 1
    assert "omega =" in view.message and "FD-digits" in view.result["metric"]
    # its extra points exist for one budget only: the curve shows them, the heat map keeps whole columns
    assert len(guide.curves(st.db, cks[-1]["id"], g["id"], GS)["fraction"]["5-9"]) > 3
    h = guide.heatmap(st.db, cks[-1]["id"], g["id"], "5-9", GS)
    assert h["omegas"] == [-1, 0, 1] and np.isfinite(h["fraction"]).all()


def test_exported_bundle_samples_from_the_cli(world, tmp_path):
    st, mid, g, cks = world
    out = export.export_bundle(st.db, st.settings, cks[-1]["id"], 1.0, steps=2, name="demo", classifier="digits")
    card = out["card_data"]
    assert card["provenance_chain"]["synthetic_set"]["counts"] == {"0-4": 8, "5-9": 8}
    assert card["measured"]  # the sweep's numbers at omega = 1
    r = subprocess.run([sys.executable, "-m", "pipelines", "sample-sims", "--bundle", out["bundle"], "--seeds", "0-3",
                        "--out", str(tmp_path / "s.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "s.npz")["images"].shape[0] == 4


def test_export_into_an_unwritable_folder_says_which_and_why_before_rendering(world, monkeypatch):
    # Tests run as root, where chmod stops no write: a regular file where the exports folder belongs
    # makes it unwritable for every user.
    import shutil
    st, mid, g, cks = world
    folder = st.settings.path("exports")
    shutil.rmtree(folder, ignore_errors=True)
    folder.write_text("not a folder")
    try:
        for attempt in (
                lambda: export.export_bundle(st.db, st.settings, cks[-1]["id"], 1.0, steps=2, name="nope"),
                lambda: export.submit_dataset_export(st.db, cks[-1]["id"], 1.0, 10, "digits", GS,
                                                     settings=st.settings)):
            with pytest.raises(UserError, match="Cannot write the export into .*exports: .*a file is in the way"):
                attempt()
        # a job queued before the folder broke fails before it renders a single image
        rendered = []
        monkeypatch.setattr("studio.jobs.tasks.export_dataset.render", lambda *a, **k: rendered.append(1))
        view = run_now(st, export.submit_dataset_export(st.db, cks[-1]["id"], 1.0, 10, "digits", GS))
        assert view.state == "failed" and "Cannot write the export into" in view.message and str(folder) in view.message
        assert rendered == []
    finally:
        folder.unlink()
        folder.mkdir()
    # a folder the user may not write (os.access says no): named too
    monkeypatch.setattr("studio.services.export.os.access", lambda path, mode: False)
    with pytest.raises(UserError, match=f"into {folder}: no write permission"):
        export.check_writable(folder)


def test_exported_dataset_zip_has_images_and_labels(world):
    from pipelines.imageio import read_images
    st, mid, g, cks = world
    view = run_now(st, export.submit_dataset_export(st.db, cks[-1]["id"], 1.0, 10, "digits", GS))
    assert view.state == "succeeded", view.traceback
    images, labels = read_images(st.settings.abs(view.result["file"]))
    assert images.shape == (10, 8, 8, 1) and labels.shape == (10,)
    assert sum(view.result["label_counts"].values()) == 10


def test_export_plan_states_the_exact_omega_before_exporting(world):
    st, mid, g, cks = world
    gs = guide.GuideSettings(preview_steps=2, preview_count=4, steps=4, n=16, skip_steps=1)
    p = export.plan(st.db, cks[-1]["id"], 0.375, gs, "digits")
    assert p["omega"] == 0.375 and p["steps"] == 4 and p["skip_steps"] == 1 and p["interval"][0] == 0.0
    assert "first 1 of 4 steps unguided" in export.interval_text(p["skip_steps"], p["steps"], p["interval"])
    assert guide.fmt_omega(0.375) == "+0.375" and guide.fmt_omega(1.5) == "+1.50"
    out = export.export_bundle(st.db, st.settings, cks[-1]["id"], 0.375, steps=4, skip_steps=1, name="exact")
    assert out["card_data"]["omega"] == 0.375  # not snapped to a slider step
    from pipelines.checkpoints.bundle import read_bundle_metadata
    assert read_bundle_metadata(out["bundle"])["omega"] == 0.375


def test_guide_view_is_remembered_per_model(tmp_path):
    from studio.settings import Settings
    st = Settings(data_dir=tmp_path)
    assert guide.load_views(st) == {}
    guide.save_view(st, 3, {"checkpoint_id": 7, "omega": 0.375, "n": 64, "junk": 1})
    guide.save_view(st, 4, {"checkpoint_id": 9, "omega": 1.0})
    assert guide.load_views(st)["3"] == {"checkpoint_id": 7, "omega": 0.375, "n": 64}
    st.path("ui", "guide.json").write_text("{half")
    assert guide.load_views(st) == {}  # unreadable: start from the defaults, never fail the page


def test_two_proportion_test_flags_the_issue_s_disagreeing_reading():
    from studio.services import honesty
    # 65.6% of 64 measurement samples against a pool at 48.4% of 1000: beyond chance
    assert honesty.two_proportion_p(42, 64, 484, 1000) < 0.01
    assert honesty.two_proportion_p(33, 64, 484, 1000) > 0.5
    pool_ = {"assigned": 1000, "groups": {"0-4": {"fraction": 0.516, "lo": 0.485, "hi": 0.547, "count": 516},
                                          "5-9": {"fraction": 0.484, "lo": 0.453, "hi": 0.515, "count": 484}}}
    warn = honesty.base_disagreement({"0-4": (22 / 64, 0.24, 0.47, 22), "5-9": (42 / 64, 0.53, 0.76, 42)}, pool_)
    assert "reading of" in warn and "(n = 64)" in warn and "(n = 1000)" in warn
    assert honesty.base_disagreement({"0-4": (31 / 64, 0.36, 0.61, 31), "5-9": (33 / 64, 0.39, 0.64, 33)},
                                     pool_) is None
    assert "only 64 samples" in honesty.small_n(64) and honesty.small_n(honesty.MIN_MEASURE_N) is None
    assert "128 feature dimensions" in honesty.small_fd("FD-digits", 100) and honesty.small_fd("FID", 4096) is None


def test_card_and_plan_warn_on_a_small_measurement_with_floors_drawn(world):
    st, mid, g, cks = world
    run_now(st, guide.submit_sweep(st.db, cks[-1]["id"], g["id"], GS, metric_omegas=[-1, 0, 1]))
    c = guide.curves(st.db, cks[-1]["id"], g["id"], GS)
    assert set(c["fd_floor"]) and all(v[0] > 0 for pts in c["fd_floor"].values() for v in pts.values())
    p = export.plan(st.db, cks[-1]["id"], 1.0, GS, "digits")
    assert any("only 16 samples" in w for w in p["warnings"])  # GS measures 16 samples per ω
    assert any("feature dimensions" in w for w in p["warnings"])
    card = export.export_bundle(st.db, st.settings, cks[-1]["id"], 1.0, steps=2, name="warned")["card_data"]
    assert card["measurement_warnings"] == p["warnings"]
    assert "only 16 samples" in (st.settings.path("exports", "warned.md")).read_text()


def test_dataset_export_reports_its_realised_mix_beside_the_plan(world):
    st, mid, g, cks = world
    run_now(st, guide.submit_sweep(st.db, cks[-1]["id"], g["id"], GS, metric_omegas=[1]))
    view = run_now(st, export.submit_dataset_export(st.db, cks[-1]["id"], 1.0, 12, "digits", GS, grouping_id=g["id"]))
    assert view.state == "succeeded", view.traceback
    mix = view.result["realised_mix"]
    assert sum(v[3] for v in mix.values()) <= 12 and set(mix) == {"0-4", "5-9"}
    assert "realised mix by its own labels" in view.message and "vs planned" in view.message
    assert view.result["planned"]["n"] > 0
