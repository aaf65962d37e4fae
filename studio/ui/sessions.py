"""Bounded per-browser session state: a cap on live sessions and expiry of idle ones.

Gradio keeps one SessionState per browser session in `app.state_holder`: a copy of the page's block
configuration plus every component update sent to that page, about 0.9 MB for the studio (measured by
bench/sessions_soak.py). It drops one only when more than `state_session_capacity` sessions exist
(default 10,000, i.e. ~9 GB for the studio's page), and it notices a closed tab only through the
heartbeat of a page holding gr.State (which the studio avoids, see common.hidden_value), and even then
it frees only the State values, not the session. So the studio caps the count at launch and a reaper
thread removes sessions idle for longer than a time to live. A page left open past that time reloads
itself before the next click acts (idle_reload_js): its server-side state is gone, and a dropdown whose
choices were updated would otherwise reject its own value.
"""
from __future__ import annotations

import datetime
import threading
import weakref

MAX_SESSIONS = 256          # ~100 MB of session state at most
SESSION_IDLE_S = 3600.0     # a session unused for an hour is dropped


def expire_idle_sessions(holder, ttl_s: float, now: datetime.datetime | None = None) -> int:
    """Remove sessions of a Gradio StateHolder not used for `ttl_s` seconds; returns how many.

    gr.State values of a removed session get their delete_callback first, as Gradio's own expiry does."""
    now = now or datetime.datetime.now()
    cutoff = now - datetime.timedelta(seconds=float(ttl_s))
    with holder.lock:
        stale = [sid for sid, used in list(holder.time_last_used.items()) if used < cutoff]
    for sid in stale:
        holder.delete_state(sid)  # gr.State delete callbacks (none in the studio today)
        with holder.lock:
            holder.session_data.pop(sid, None)
            holder.time_last_used.pop(sid, None)
    return len(stale)


def start_reaper(demo, ttl_s: float = SESSION_IDLE_S, period_s: float | None = None) -> threading.Thread:
    """A daemon thread expiring idle sessions of `demo` every `period_s` (default ttl/10, 1-60 s).

    The state holder exists once the app is launched; the thread waits for it and ends with the Blocks."""
    period = period_s if period_s is not None else min(60.0, max(1.0, ttl_s / 10))
    ref, stop = weakref.ref(demo), threading.Event()

    def loop():
        while not stop.wait(period):
            blocks = ref()
            if blocks is None:
                return
            holder = getattr(blocks, "state_holder", None)
            if holder is not None:
                expire_idle_sessions(holder, ttl_s)
            del blocks  # hold no reference between rounds: the Blocks may be collected

    thread = threading.Thread(target=loop, name="session-reaper", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread


def idle_reload_js(ttl_s: float) -> str:
    """A <script> for the page head: after 90% of the time to live without a click or key, the next click or
    key reloads the page instead of acting (the server may have dropped the session by then; the server-side
    idle time is never shorter than the page's, since every request the page makes refreshes it)."""
    limit_ms = int(0.9 * float(ttl_s) * 1000)
    return ("<script>(() => { let last = Date.now(); const guard = (e) => {"
            f" if (Date.now() - last > {limit_ms}) {{ e.stopImmediatePropagation(); e.preventDefault();"
            " location.reload(); return; } last = Date.now(); };"
            " for (const t of ['pointerdown', 'keydown']) window.addEventListener(t, guard, true); })();</script>")
