"""Helpers for tests, benchmarks and browser walks: tiny models, a tiny classifier, waiting on jobs."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from pipelines.errors import UserError


def make_tiny_model(path, seed: int = 0, resolution: int = 8, channels: int = 1, model_channels: int = 8) -> Path:
    """Save an untrained, CPU-cheap SongUNet checkpoint (our format) to `path`."""
    import torch
    from pipelines.checkpoints.native import save_model
    from pipelines.models import ModelConfig, build_model
    from pipelines.networks.songunet import songunet_config
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="songunet", network=songunet_config(
        "tiny", img_resolution=resolution, img_channels=channels, model_channels=model_channels,
        channel_mult=[1], num_blocks=1))
    model = build_model(cfg)
    return save_model(path, model, cfg, dataset={"name": f"digits:{resolution}", "note": "untrained test model"},
                      provenance={"name": f"tiny test model (seed {seed})"})


def make_tiny_classifier(path, seed: int = 0) -> Path:
    """Save an untrained digits classifier (valid file, arbitrary but deterministic predictions)."""
    import torch
    from pipelines.attributes.digits import DigitsNet, save_digits_classifier
    torch.manual_seed(seed)
    save_digits_classifier(path, DigitsNet(), {"note": "untrained test classifier"})
    return Path(path)


def wait_until(condition, timeout: float, what: str, poll_s: float = 0.05):
    """Poll `condition()` until it returns something truthy (returned); after `timeout` s raise, naming `what`.

    Tests wait on a condition, never for a fixed time: a fixed sleep is either too short on a loaded
    machine (flaky) or wastes time on a quiet one, and a loop without a deadline hangs the suite."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= end:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(poll_s)


def wait_for_job(db, job_id: int, timeout: float = 120.0, states=("succeeded", "failed", "cancelled",
                                                                    "interrupted")):
    """Poll until the job reaches one of `states`; returns its JobView."""
    from .services import jobs
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        view = jobs.get(db, job_id)
        if view.state in states:
            return view
        time.sleep(0.2)
    view = jobs.get(db, job_id)
    raise TimeoutError(f"job #{job_id} still {view.state} after {timeout} s: {view.message}\n{view.log_tail}")


def expect_success(db, job_id: int, timeout: float = 120.0):
    """Wait for a job and raise with its log if it did not succeed."""
    view = wait_for_job(db, job_id, timeout)
    if view.state != "succeeded":
        raise AssertionError(f"job #{job_id} {view.state}: {view.message}\n{view.traceback or view.log_tail}")
    return view


__all__ = ["make_tiny_model", "make_tiny_classifier", "wait_until", "wait_for_job", "expect_success", "UserError"]


def run_now(studio, job_id: int):
    """Run a queued job in this process (tests: no worker start-up cost); returns its JobView."""
    from .jobs.worker import run_job
    from .services import jobs
    run_job(job_id, str(studio.settings.data_dir), studio.db.url)
    return jobs.get(studio.db, job_id)


def tiny_studio(data_dir, n_pool: int = 0, steps: int = 2, label: bool = True):
    """A studio (no runner) with a tiny model, a tiny digits classifier and the digits groupings.

    Returns (studio, model_id). With n_pool > 0 the pool is generated (and labelled) in-process.
    """
    from .core import open_studio
    from .services import attributes, pool, registry
    from .settings import Settings
    data_dir = Path(data_dir)
    st = open_studio(Settings(data_dir=data_dir), start_runner=False, demo=False)
    clf = make_tiny_classifier(data_dir.parent / "tiny_digits.safetensors")
    attributes.register_classifier(st.db, "digits", {"weights": str(clf)})
    attributes.register_builtin_groupings(st.db, "digits")
    mid = registry.register_checkpoint(st.db, st.settings, make_tiny_model(data_dir.parent / "tiny.safetensors"))
    if n_pool:
        assert run_now(st, pool.submit_generate(st.db, mid, n_pool, steps=steps)).state == "succeeded"
        if label:
            assert run_now(st, pool.submit_label(st.db, mid, "digits")).state == "succeeded"
    return st, mid



def tiny_finetuned_world(data_dir, total_kimg: float = 0.032):
    """tiny_studio with a labelled pool of 40, a 50/50 S of 16 and a fine-tune on it (checkpoints every 16 images).

    Returns (studio, model_id, the 0-4 vs 5-9 grouping, the fine-tune's checkpoints).
    """
    from .services import attributes, finetune, sets
    st, mid = tiny_studio(data_dir, n_pool=40)
    g = next(g for g in attributes.list_groupings(st.db, "digits") if g["name"] == "digits 0-4 vs 5-9")
    sid, job = sets.submit_build(st.db, mid, g["id"], {"0-4": 0.5, "5-9": 0.5}, n_s=16, steps=2)
    assert run_now(st, job).state == "succeeded"
    ft = finetune.submit(st.db, sid, total_kimg=total_kimg, checkpoint_kimg=0.016, lr=1e-3, batch_size=8,
                         previews=False)
    assert run_now(st, ft).state == "succeeded"
    return st, mid, g, finetune.checkpoints(st.db, ft)

class QueueClient:
    """Gradio's queue protocol as a browser speaks it: join, read the event stream, GET each image shown.

    gradio_client adds its own polling (about 140 ms a call), so latency is measured through this.
    """

    def __init__(self, url: str):
        import httpx
        self.url, self.http = url, httpx.Client(timeout=300)
        deps = self.http.get(url + "config").json()["dependencies"]
        self.fn = {d["api_name"]: d["id"] for d in deps if d.get("api_name")}

    def call(self, api_name: str, data: list) -> list[tuple[float, list]]:
        """(seconds since the request, output values) of every frame whose image was fetched.

        Streamed frames after the first arrive as diffs and are skipped; the final frame is always there.
        """
        session, t0, frames = uuid.uuid4().hex, time.perf_counter(), []
        self.http.post(self.url + "gradio_api/queue/join", json={
            "data": data, "fn_index": self.fn[api_name], "session_hash": session, "event_data": None,
            "trigger_id": None}).raise_for_status()
        with self.http.stream("GET", self.url + f"gradio_api/queue/data?session_hash={session}") as events:
            for line in events.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                values = (msg.get("output") or {}).get("data") or [None]
                if isinstance(values[0], dict) and values[0].get("url"):
                    self.http.get(values[0]["url"]).raise_for_status()
                    frames.append((time.perf_counter() - t0, values))
                if msg.get("msg") == "process_completed":
                    if not msg.get("success", True):
                        raise RuntimeError(f"{api_name} failed: {msg.get('output')}")
                    return frames
        raise RuntimeError(f"{api_name}: the event stream ended before the result")

    def close(self) -> None:
        self.http.close()


class PageOpener:
    """Opens a browser session as the page does: its load event under a new session hash (raw HTTP).

    Used by the session-expiry test and bench/sessions_soak.py; `open(session)` returns the hash."""

    def __init__(self, http, url: str):
        self.http, self.url = http, url
        cfg = http.get(url + "config").json()
        values = {c["id"]: (c.get("props") or {}).get("value") for c in cfg["components"]}
        load = [d for d in cfg["dependencies"] if any(t[1] == "load" for t in d["targets"])]
        if not load:
            raise RuntimeError("the page has no load event")
        self.fn, self.data = load[0]["id"], [values.get(i) for i in load[0]["inputs"]]

    def open(self, session: str | None = None) -> str:
        session = session or uuid.uuid4().hex
        self.http.post(self.url + "gradio_api/queue/join", json={
            "data": self.data, "fn_index": self.fn, "session_hash": session, "event_data": None,
            "trigger_id": None}).raise_for_status()
        with self.http.stream("GET", self.url + f"gradio_api/queue/data?session_hash={session}") as events:
            for line in events.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                if msg.get("msg") == "process_completed":
                    if not msg.get("success", True):
                        raise RuntimeError(f"page load failed: {msg.get('output')}")
                    return session
        raise RuntimeError("the event stream ended before the page load completed")
