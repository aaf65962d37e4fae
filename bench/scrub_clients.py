"""Cached ω scrubs from many browsers at once, through the running studio's HTTP queue API.

    python bench/scrub_clients.py [--clients 1,5,20] [--scrubs 20] [--seeds 64]

Builds a throw-away studio (the demo base, a pool marked 'not preferred', a short fine-tune, every
slider position of the ω grid rendered and cached, as bench/scrub.py), starts the app as a user does
(`python app.py --data-dir ... --no-demo`, its own process) and then runs N clients at once
(N = each of --clients). Each client plays one browser tab: it moves ω to a random cached slider
position, waits 0-100 ms (a hand on a slider), and moves again, --scrubs times. A move fires what a
browser fires: every event the page listens to on the exact-ω box (read from the app's /config:
the scrub, the Guide panels, the stored view, the Export tab's plan), each followed by its `.then`
events, with the page's own input values, in one session per client with one event stream (as a
browser tab: a new session per event would rebuild the session's state every time); the image of
the grid is fetched as a browser does.
  scrub   — seconds from the move to the cached grid fetched (what the user waits for);
  chain   — seconds until every event of the move, follow-ups included, has finished.
Prints p50 / p95 of both and the errors per N, with the machine's load average. Target: scrub p95
<= 0.2 s at 5 clients on a quiet 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pct(values, q):
    """q-th percentile (nearest rank) of a list."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(data_dir: Path, log: Path, tries: int = 3) -> tuple[subprocess.Popen, int]:
    """(the studio in its own process, its port), once it answers and has outlived Gradio's start-up check
    of localhost (which a loaded machine can fail: the app then exits and is started again)."""
    for attempt in range(tries):
        port = free_port()
        proc = _start_app(data_dir, port, log)
        deadline = time.monotonic() + 15  # the check retries for a few seconds after the page answers
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        if proc.poll() is None:
            return proc, port
        print(f"the app exited during start-up (attempt {attempt + 1}): {log.read_text()[-300:]!r}")
    raise SystemExit("the app did not start")


def _start_app(data_dir: Path, port: int, log: Path, timeout_s: float = 300) -> subprocess.Popen:
    """The studio in its own process; returns once its page answers (or raises with the log's tail)."""
    import httpx
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(data_dir), "--port", str(port),
                             "--no-demo", "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env,
                            cwd=str(ROOT))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the app did not answer within {timeout_s:.0f} s:\n{log.read_text()[-2000:]}")


class Page:
    """What a browser knows of the app: its components' values and the events on the exact-ω box."""

    def __init__(self, url: str, values: dict[str, object]):
        import httpx
        self.url = url
        cfg = httpx.get(url + "config", timeout=60).json()
        self.value = {c["id"]: c.get("props", {}).get("value") for c in cfg["components"]}
        by_elem = {c.get("props", {}).get("elem_id"): c["id"] for c in cfg["components"]}
        for elem, v in values.items():
            self.value[by_elem[elem]] = v
        self.omega = by_elem["omega-exact"]
        self.grid = by_elem["guide-grid"]
        deps = [d for d in cfg["dependencies"] if d.get("backend_fn", True)]
        self.on_omega = [d for d in deps if [self.omega, "change"] in [list(t) for t in d.get("targets", [])]]
        self.after = {}
        for d in deps:
            if d.get("trigger_after") is not None:
                self.after.setdefault(d["trigger_after"], []).append(d)
        self.names = {d["id"]: d.get("api_name") or f"#{d['id']}" for d in deps}


class Client:
    """One browser tab: one session (a browser's page keeps one: its state is built once, not per event),
    its own HTTP connections, its component values and one event stream for all its queued events."""

    def __init__(self, page: Page, rng: random.Random):
        import httpx
        self.page, self.rng = page, rng
        self.value = dict(page.value)
        self.session = uuid.uuid4().hex
        self.http = httpx.Client(timeout=120)
        self.lock = threading.Lock()
        self.waiting: dict[str, dict] = {}   # event id -> {"done": Event, "msgs": [...]}
        self.early: dict[str, list] = {}     # messages of an event whose join has not answered yet
        self.reader: threading.Thread | None = None

    def _read(self) -> None:
        """The session's event stream, open while events wait (reopened if the server closes it early)."""
        import httpx
        with httpx.Client(timeout=120) as http:
            try:
                self._stream(http)
            except httpx.HTTPError as e:  # the app went away (end of the run): waiting events fail
                with self.lock:
                    self.reader = None
                    for w in self.waiting.values():
                        w["msgs"].append({"msg": "process_completed", "success": False, "error": str(e)})
                        w["done"].set()

    def _stream(self, http) -> None:
        while True:
            with self.lock:
                if not self.waiting:
                    self.reader = None
                    return
            with http.stream("GET", self.page.url + f"gradio_api/queue/data?session_hash={self.session}") as ev:
                for line in ev.iter_lines():
                    msg = json.loads(line[5:]) if line.startswith("data:") else {}
                    if msg.get("msg") == "close_stream":
                        break
                    eid = msg.get("event_id")
                    if eid is None:
                        continue
                    with self.lock:
                        w = self.waiting.get(eid)
                        if w is None:
                            self.early.setdefault(eid, []).append(msg)
                        else:
                            self._take(w, msg)

    @staticmethod
    def _take(w: dict, msg: dict) -> None:
        if msg.get("msg") in ("process_generating", "process_completed"):
            w["msgs"].append(msg)
        if msg.get("msg") == "process_completed":
            w["done"].set()

    def _fetch_grid(self, dep: dict, values) -> bool:
        for cid, v in zip(dep["outputs"], values or []):
            if isinstance(v, dict) and v.get("url") and cid == self.page.grid:
                self.http.get(v["url"]).raise_for_status()
                return True
        return False

    def run_event(self, dep: dict) -> tuple[bool, bool]:
        """Run one event as the browser does; (succeeded, the grid image was fetched)."""
        body = {"data": [self.value.get(i) for i in dep["inputs"]], "fn_index": dep["id"],
                "session_hash": self.session, "event_data": None, "trigger_id": None}
        if dep.get("queue") is False:  # an event that skips the queue: one POST answers it, as in the browser
            r = self.http.post(self.page.url + "gradio_api/run/predict", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
            return True, self._fetch_grid(dep, r.json().get("data"))
        r = self.http.post(self.page.url + "gradio_api/queue/join", json=body)
        r.raise_for_status()
        eid, w = r.json()["event_id"], {"done": threading.Event(), "msgs": []}
        with self.lock:
            self.waiting[eid] = w
            for msg in self.early.pop(eid, []):
                self._take(w, msg)
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, daemon=True)
                self.reader.start()
        finished = w["done"].wait(300)
        with self.lock:
            self.waiting.pop(eid, None)
        if not finished:
            return False, False
        last = w["msgs"][-1]
        return bool(last.get("success", True)), self._fetch_grid(dep, (last.get("output") or {}).get("data"))

    def move(self, omega: float) -> dict:
        """Set ω and run every event it fires (and their follow-ups) concurrently, as a page does."""
        self.value[self.page.omega] = omega
        t0, result, lock = time.perf_counter(), {"scrub": None, "errors": []}, threading.Lock()

        def chain(dep):
            ok, fetched, t1 = False, False, time.perf_counter()
            try:
                ok, fetched = self.run_event(dep)
                with lock:
                    result.setdefault("events", []).append((self.page.names[dep["id"]], time.perf_counter() - t1))
            except Exception as e:  # noqa: BLE001 (counted and reported)
                with lock:
                    result["errors"].append(f"{self.page.names[dep['id']]}: {type(e).__name__}: {e}")
            if not ok:
                with lock:
                    result["errors"].append(f"{self.page.names[dep['id']]}: failed")
            if fetched:
                with lock:
                    result["scrub"] = result["scrub"] or time.perf_counter() - t0
            for nxt in self.page.after.get(dep["id"], []):
                if ok or not nxt.get("trigger_only_on_success"):
                    chain(nxt)

        threads = [threading.Thread(target=chain, args=(d,)) for d in self.page.on_omega]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result["chain"] = time.perf_counter() - t0
        return result


def run_clients(page: Page, omegas: list[float], n: int, scrubs: int, seed: int) -> dict:
    """n clients scrubbing at once; per-move latencies and errors."""
    def one(i):
        rng = random.Random(seed * 1000 + i)
        c = Client(page, rng)
        out = []
        for _ in range(scrubs):
            w = rng.choice([x for x in omegas if x != c.value[page.omega]])
            out.append(c.move(w))
            time.sleep(rng.uniform(0, 0.1))
        c.http.close()
        return out

    with ThreadPoolExecutor(n) as ex:
        moves = [m for ms in ex.map(one, range(n)) for m in ms]
    return {"events": [e for m in moves for e in m.get("events", [])],
            "scrub": [m["scrub"] for m in moves if m["scrub"] is not None],
            "chain": [m["chain"] for m in moves], "errors": [e for m in moves for e in m["errors"]],
            "no_grid": sum(m["scrub"] is None for m in moves), "moves": len(moves)}


def main(argv=None) -> int:
    from pipelines.demo.assets import DEMO_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL), help="base checkpoint (default: the bundled demo)")
    p.add_argument("--clients", default="1,5,20", help="numbers of concurrent clients, comma separated")
    p.add_argument("--scrubs", type=int, default=20, help="ω moves per client")
    p.add_argument("--seeds", type=int, default=64, help="samples in the preview grid")
    p.add_argument("--preview-steps", type=int, default=12, help="Heun steps of the cached previews")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from scrub import prepare
    from studio.services import guide
    counts = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="sims-scrubn-") as tmp:
        t0 = time.perf_counter()
        st, ck = prepare(Path(tmp), Path(args.model), pool_n=64, budget_kimg=0.128)
        gs = guide.GuideSettings(preview_steps=args.preview_steps, preview_count=args.seeds)
        omegas = guide.omega_grid()
        for w in omegas:  # every slider position cached: this bench measures cached scrubs only
            guide.preview(st.db, st.settings, ck, w, gs, "cpu")
        data_dir = st.settings.data_dir
        st.close()
        print(f"setup (pool, S, fine-tune, {len(omegas)} cached previews) {time.perf_counter() - t0:.1f} s")
        log = Path(tmp) / "app.log"
        proc, port = start_app(data_dir, log)
        try:
            url = f"http://127.0.0.1:{port}/"
            page = Page(url, {"guide-ckpt": ck, "omega-exact": 0.0, "guide-psteps": gs.preview_steps,
                              "guide-pcount": gs.preview_count, "pick-device": "cpu"})
            follow, todo = [], list(page.on_omega)
            while todo:
                follow += (nxt := [d for dep in todo for d in page.after.get(dep["id"], [])])
                todo = nxt
            print(f"events on an ω move: {', '.join(page.names[d['id']] for d in page.on_omega)}; follow-ups: "
                  f"{', '.join(page.names[d['id']] for d in follow)}")
            Client(page, random.Random(0)).move(omegas[1])  # warm-up
            for n in counts:
                load = os.getloadavg()[0]
                r = run_clients(page, omegas, n, args.scrubs, args.seed)
                s, c = r["scrub"] or [float("nan")], r["chain"]
                print(f"clients {n:>3}: scrub p50 {1000 * statistics.median(s):7.0f} ms  p95 {1000 * pct(s, 95):7.0f} ms"
                      f" | chain p50 {1000 * statistics.median(c):7.0f} ms  p95 {1000 * pct(c, 95):7.0f} ms"
                      f" | moves {r['moves']}, errors {len(r['errors'])}, no grid {r['no_grid']}"
                      f" | load avg {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
                per: dict[str, list[float]] = {}
                for name, sec in r["events"]:
                    per.setdefault(name, []).append(sec)
                print("    per event (join to completion), p50 ms: " + ", ".join(
                    f"{k} {1000 * statistics.median(v):.0f}" for k, v in sorted(
                        per.items(), key=lambda kv: -statistics.median(kv[1]))))
                for e in sorted(set(r["errors"]))[:5]:
                    print(f"    error: {e}")
                if proc.poll() is not None:
                    raise SystemExit(f"the app exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
