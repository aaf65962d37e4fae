"""First start: the bundled example (aux for 70% of 5–9) and its 17 preview grids are registered, the Guide's
cache answers every slider position without rendering, registration is idempotent, and the shipped grids are
the pixels the studio renders from the registered checkpoint."""
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from pipelines.demo import aux as demo_aux
from studio.core import open_studio
from studio.models import Job, Render
from studio.services import demo, evaluate, guide
from studio.settings import Settings

pytestmark = pytest.mark.skipif(not (demo_aux.DEMO_AUX.is_file() and demo_aux.DEMO_PREVIEWS.is_file()),
                                reason="bundled example not built (python -m pipelines build-demo-aux)")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    st = open_studio(Settings(data_dir=tmp_path_factory.mktemp("first-run"), precision="fp32"), start_runner=False)
    yield st
    st.close()


def test_first_start_registers_the_example_and_the_guide_scrubs_from_the_cache(studio, monkeypatch):
    assert not studio.notes, studio.notes
    job_id, ck = demo.bundled_run(studio.db)
    assert ck in [c for _, c in guide.run_checkpoints(studio.db)]
    gs = guide.GuideSettings()  # the Guide's defaults: 64 seeds, 12 steps, whole trajectory guided
    assert guide.ensure_previews(studio.db, studio.settings, ck, gs) is None  # nothing left to render

    def no_render(*a, **k):
        raise AssertionError("the cache should have answered")
    monkeypatch.setattr(evaluate, "render", no_render)
    shipped = demo_aux.load_previews()
    for i, w in enumerate(guide.omega_grid()):
        out = guide.preview(studio.db, studio.settings, ck, w, gs)
        assert out["cached"]
        with np.load(out["npz"]) as z:  # the render cache's own format: images, seeds, omega
            assert np.array_equal(z["images"], shipped["images"][shipped["omegas"].index(w)])
            assert list(z["seeds"]) == list(range(64)) and float(z["omega"]) == w
    assert shipped["omegas"] == guide.omega_grid()


def test_registration_is_idempotent_and_repairs_a_missing_file(studio):
    def counts():
        with studio.db.session(read_only=True) as s:
            return (s.scalar(select(func.count()).select_from(Job).where(Job.title == demo.BUNDLED_TITLE)),
                    s.scalar(select(func.count()).select_from(Render)))
    before = counts()
    t0 = time.perf_counter()
    assert demo.bootstrap_demo(studio.db, studio.settings) == []
    print(f"second registration: {1000 * (time.perf_counter() - t0):.0f} ms")
    assert counts() == before and before[0] == 1
    _, ck = demo.bundled_run(studio.db)
    grid = guide.nearest_cached(studio.db, studio.settings, ck, 1.0, guide.GuideSettings())["grid"]
    import pathlib
    pathlib.Path(grid).unlink()
    assert demo.cache_previews(studio.db, studio.settings, ck) == 1 and pathlib.Path(grid).exists()
    assert counts() == before


def test_banner_says_what_it_is_and_how_to_make_ones_own(studio):
    text = demo.guide_banner(studio.db)
    assert "Bundled example" in text and "Make your own" in text and "build-demo-aux" in text
    assert "1000" in text and "70% of 5–9" in text


def test_shipped_previews_are_what_the_studio_renders(studio):
    # a live render (as for an uncached omega) from the registered checkpoint gives the shipped pixels
    _, ck = demo.bundled_run(studio.db)
    _, base_path, aux_path = evaluate.pair_paths(studio.db, studio.settings, ck)
    shipped = demo_aux.load_previews()
    for w in (-1.0, 1.5):
        parts, done = [], 0
        for size in evaluate.preview_chunks(64):
            parts.append(evaluate.render(base_path, aux_path, w, range(done, done + size), 12))
            done += size
        live = np.concatenate(parts)
        delta = np.abs(live.astype(int) - shipped["images"][shipped["omegas"].index(w)].astype(int))
        print(f"omega {w}: max |Δ| {delta.max()}, {100 * (delta > 0).mean():.3f}% of pixels differ")
        assert delta.max() <= 1 and (delta > 0).mean() < 0.01
