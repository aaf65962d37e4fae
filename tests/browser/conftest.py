"""What every browser test module shares: the skip (with its reason) where chromium or Playwright is missing, the
served studio and one page on it.

A module's `world` fixture (a dict holding the studio as "st") says where its tests start; the default is a tiny
studio. `server` serves it with a job runner (the dict plus its "url"), `page` is one chromium page on it for the
whole module (the flows build on each other).
"""
import importlib.util
from pathlib import Path

import pytest

if importlib.util.find_spec("playwright") is None:
    MISSING = "playwright is not installed (pip install -e '.[dev]')"
else:
    from walk import CHROMIUM, browser_page, serving
    MISSING = None if Path(CHROMIUM).exists() else "chromium is not installed (apt-get install -y chromium)"


class _Unavailable(pytest.Module):
    """A browser test module that cannot run here: one skip saying why, without importing it."""

    def collect(self):
        pytest.skip(MISSING)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    if MISSING:
        return _Unavailable.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny studio: tiny model, digits classifier and groupings, no pool."""
    from studio.testing import tiny_studio
    st, mid = tiny_studio(tmp_path_factory.mktemp("browser") / "data")
    return {"st": st, "model": mid}


@pytest.fixture(scope="module")
def server(world):
    """The module's world served (job runner + UI): the world's dict plus "url"."""
    with serving(world["st"]) as url:
        yield {**world, "url": url}


@pytest.fixture(scope="module")
def page(server):
    """One chromium page on the served studio; its JavaScript errors collect in page.page_errors."""
    with browser_page(server["url"]) as pg:
        yield pg
