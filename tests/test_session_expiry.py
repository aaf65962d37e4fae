"""Browser sessions are bounded: Gradio keeps at most max_sessions of them, and one left idle for the time
to live is dropped (its state freed); a page reopened after that simply starts a new session."""
import datetime

import httpx
import pytest

from studio.testing import PageOpener, tiny_studio, wait_until
from studio.ui.sessions import expire_idle_sessions


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    st, _ = tiny_studio(tmp_path_factory.mktemp("sessions") / "data")
    yield st
    st.close()


def test_expire_idle_sessions_drops_only_the_idle_ones(studio):
    from gradio.state_holder import StateHolder
    from studio.ui.app import build_ui
    demo = build_ui(studio, session_idle_s=3600)
    holder = StateHolder()
    holder.set_blocks(demo)
    for sid in ("old", "recent"):
        holder[sid]  # creates the session, as the first event of a page does
    now = datetime.datetime.now()
    holder.time_last_used["old"] = now - datetime.timedelta(seconds=61)
    holder.time_last_used["recent"] = now - datetime.timedelta(seconds=59)
    assert expire_idle_sessions(holder, 60, now) == 1
    assert list(holder.session_data) == ["recent"] and list(holder.time_last_used) == ["recent"]


def test_served_studio_caps_sessions_and_expires_idle_ones(studio):
    from studio.ui.app import build_ui, launch_kwargs
    ttl = 2.0  # the reaper looks every max(1, ttl / 10) s
    demo = build_ui(studio, session_idle_s=ttl)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                            **launch_kwargs(studio, max_sessions=3, session_idle_s=ttl))
    http = httpx.Client(timeout=120)
    try:
        assert "location.reload" in http.get(url).text  # an idle page reloads before its next click acts
        holder = demo.state_holder
        opener = PageOpener(http, url)
        sessions = [opener.open() for _ in range(5)]
        assert len(holder.session_data) <= 3 and sessions[-1] in holder.session_data  # the cap holds
        wait_until(lambda: len(holder.session_data) == 0, timeout=60, what="idle sessions to expire")
        again = opener.open(sessions[-1])  # the same page coming back gets a fresh session
        assert again in holder.session_data
    finally:
        http.close()
        demo.close()
