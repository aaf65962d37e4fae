"""Cached ω scrubs from many browsers at once, through the running studio's HTTP API.

    python bench/scrub_clients.py [--clients 1,5,20] [--scrubs 20] [--seeds 64] [--compare DIR] [--rounds 2]

Builds a throw-away studio (the demo base, a pool marked 'not preferred', a short fine-tune, every
slider position of the ω grid rendered and cached, as bench/scrub.py), starts the app as a user does
(`python app.py --data-dir ... --no-demo`, its own process) and then runs N clients at once
(N = each of --clients). Each client plays one browser tab: it opens the page (its load event; one
session and one event stream for its queued events, as a browser tab), picks the checkpoint, then
clicks ω to a random cached slider position, waits 0-100 ms (a hand on a slider), and clicks again,
--scrubs times. A click fires what the browser fires, read from the app's /config: the slider's
input and release events, then the change events of every component whose value an event changed
(the exact-ω box, hidden request fields), each followed by its `.then` events, with the page's own
input values; events that run in the browser only (a `js` copy of the slider's value) cost no
request; every image an event shows is fetched, as a browser does.
  scrub   — seconds from the click to the cached grid fetched (what the user waits for);
  chain   — seconds until every event of the click, follow-ups included, has finished.
Prints p50 / p95 of both, errors, requests per click (queued / not), the app's CPU time per click
(read from /proc: all its threads, its idle background included), the clicks served per second and
the median time of each event, with the machine's load average. Target: scrub p95 <= 0.2 s on a
quiet 2-core machine.

--compare DIR measures a second checkout of the app (e.g. `git worktree add /tmp/before HEAD~3`) on
the same data, both apps running, side by side: for each N the runs alternate (this checkout, then
DIR, then DIR, then this one with --rounds 2), so a shared machine's changing load hits both alike;
prints the ratio of each statistic, this checkout over DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
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


def start_app(data_dir: Path, log: Path, tries: int = 3, root: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """(the studio in its own process, its port), once it answers and has outlived Gradio's start-up check
    of localhost (which a loaded machine can fail: the app then exits and is started again)."""
    for attempt in range(tries):
        port = free_port()
        try:
            proc = _start_app(data_dir, port, log, root)
        except SystemExit as e:  # exited before its page answered (the same check, failed sooner)
            print(f"the app did not start (attempt {attempt + 1}): {str(e)[-300:]!r}")
            continue
        deadline = time.monotonic() + 15  # the check retries for a few seconds after the page answers
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        if proc.poll() is None:
            return proc, port
        print(f"the app exited during start-up (attempt {attempt + 1}): {log.read_text()[-300:]!r}")
    raise SystemExit("the app did not start")


def _start_app(data_dir: Path, port: int, log: Path, root: Path, timeout_s: float = 300) -> subprocess.Popen:
    """The studio in its own process; returns once its page answers (or raises with the log's tail)."""
    import httpx
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, str(root / "app.py"), "--data-dir", str(data_dir), "--port", str(port),
                             "--no-demo", "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env,
                            cwd=str(root))
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


COPY = re.compile(r"^\s*\(?\s*(\w+)\s*\)?\s*=>\s*\1\s*;?\s*$")  # a js function that returns its input


class Page:
    """What a browser knows of the app: its components' values and which events each trigger fires."""

    def __init__(self, url: str, values: dict[str, object]):
        import httpx
        self.url = url
        cfg = httpx.get(url + "config", timeout=60).json()
        self.value = {c["id"]: c.get("props", {}).get("value") for c in cfg["components"]}
        self.by_elem = {c.get("props", {}).get("elem_id"): c["id"] for c in cfg["components"]}
        self.picks = {self.by_elem[elem]: v for elem, v in values.items()}
        self.slider, self.grid = self.by_elem["omega"], self.by_elem["guide-grid"]
        self.on: dict[tuple[int, str], list[dict]] = {}
        self.after: dict[int, list[dict]] = {}
        for d in cfg["dependencies"]:
            for cid, trigger in d.get("targets", []):
                self.on.setdefault((cid, trigger), []).append(d)
            if d.get("trigger_after") is not None:
                self.after.setdefault(d["trigger_after"], []).append(d)
        self.load = [d for d in cfg["dependencies"] if any(t[1] == "load" for t in d.get("targets", []))]
        self.names = {d["id"]: d.get("api_name") or f"#{d['id']}" for d in cfg["dependencies"]}


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

    def open(self) -> None:
        """The page's load event (the values it shows, the remembered picks restored), then the picks."""
        for dep in self.page.load:
            ok, data = self._request(dep)
            if not ok:
                raise RuntimeError(f"the page's load event failed: {data}")
            self._apply(dep, data)
        self.value.update(self.page.picks)

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

    def _request(self, dep: dict) -> tuple[bool, list | None]:
        """Run one event on the server as the browser does: (succeeded, its final output values)."""
        with self.lock:
            data = [self.value.get(i) for i in dep["inputs"]]
        body = {"data": data, "fn_index": dep["id"], "session_hash": self.session, "event_data": None,
                "trigger_id": None}
        if dep.get("queue") is False:  # an event that skips the queue: one POST answers it, as in the browser
            r = self.http.post(self.page.url + "gradio_api/run/predict", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
            return True, r.json().get("data")
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
            return False, None
        last = w["msgs"][-1]
        return bool(last.get("success", True)), (last.get("output") or {}).get("data")

    def _apply(self, dep: dict, data) -> list[int]:
        """Set the event's outputs as the page does; the components whose value changed."""
        changed = []
        with self.lock:
            for cid, v in zip(dep["outputs"], data or []):
                if isinstance(v, dict) and v.get("__type__") == "update":
                    if "value" not in v:
                        continue  # gr.skip() or a change of choices only
                    v = v["value"]
                if self.value.get(cid) != v:
                    self.value[cid] = v
                    changed.append(cid)
        return changed

    def run_event(self, dep: dict) -> tuple[bool, list[int], bool, bool]:
        """(succeeded, components changed, a request was sent, the main grid was fetched) of one event; a
        browser-only copy (js, no backend) runs here, anything else js-only is refused."""
        if not dep.get("backend_fn", True):
            if not (dep.get("js") and COPY.match(dep["js"]) and len(dep["inputs"]) == len(dep["outputs"]) == 1):
                raise RuntimeError(f"cannot run the browser-only event {self.page.names[dep['id']]}: {dep.get('js')}")
            return True, self._apply(dep, [self.value.get(dep["inputs"][0])]), False, False
        ok, data = self._request(dep)
        grid = False
        for cid, v in zip(dep["outputs"], data or []):
            if isinstance(v, dict) and v.get("url"):  # the browser loads every image it shows
                self.http.get(v["url"]).raise_for_status()
                grid = grid or cid == self.page.grid
        return ok, self._apply(dep, data) if ok else [], True, grid

    def move(self, omega: float) -> dict:
        """Click ω on the slider and run every event that fires (and their follow-ups) concurrently, as a page
        does; an event's changed outputs fire their own change events."""
        with self.lock:
            self.value[self.page.slider] = omega
        t0, result, lock = time.perf_counter(), {"scrub": None, "errors": [], "events": []}, threading.Lock()
        threads: list[threading.Thread] = []

        def start(deps):
            with lock:
                if len(result["events"]) + len(threads) > 100:
                    result["errors"].append("over 100 events: a loop of change events?")
                    return
                for d in deps:
                    t = threading.Thread(target=chain, args=(d,))
                    threads.append(t)
                    t.start()

        def chain(dep):
            name, t1 = self.page.names[dep["id"]], time.perf_counter()
            try:
                ok, changed, sent, grid = self.run_event(dep)
            except Exception as e:  # noqa: BLE001 (counted and reported)
                with lock:
                    result["errors"].append(f"{name}: {type(e).__name__}: {e}")
                return
            with lock:
                if sent:
                    result["events"].append((name, time.perf_counter() - t1, dep.get("queue") is not False))
                if not ok:
                    result["errors"].append(f"{name}: failed")
                if grid and result["scrub"] is None:
                    result["scrub"] = time.perf_counter() - t0
            start([d for cid in changed for d in self.page.on.get((cid, "change"), [])])
            start([d for d in self.page.after.get(dep["id"], []) if ok or not d.get("trigger_only_on_success")])

        start(self.page.on.get((self.page.slider, "input"), []) + self.page.on.get((self.page.slider, "release"), []))
        while True:
            with lock:
                alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            for t in alive:
                t.join()
        result["chain"] = time.perf_counter() - t0
        return result


def run_clients(page: Page, omegas: list[float], n: int, scrubs: int, seed: int, app_pid: int) -> dict:
    """n clients scrubbing at once (each opens its page first); per-click latencies, events and errors, the
    load average and the app's CPU seconds while they scrub."""
    clients = []
    for i in range(n):
        c = Client(page, random.Random(seed * 1000 + i))
        c.open()
        clients.append(c)
    load, cpu, t0 = os.getloadavg()[0], cpu_seconds(app_pid), time.perf_counter()

    def one(c):
        out = []
        for _ in range(scrubs):
            w = c.rng.choice([x for x in omegas if x != c.value[page.slider]])
            out.append(c.move(w))
            time.sleep(c.rng.uniform(0, 0.1))
        c.http.close()
        return out

    with ThreadPoolExecutor(n) as ex:
        moves = [m for ms in ex.map(one, clients) for m in ms]
    return {"load": (load, os.getloadavg()[0]), "cpu": cpu_seconds(app_pid) - cpu, "wall": time.perf_counter() - t0,
            "events": [e for m in moves for e in m["events"]],
            "scrub": [m["scrub"] for m in moves if m["scrub"] is not None],
            "chain": [m["chain"] for m in moves], "errors": [e for m in moves for e in m["errors"]],
            "no_grid": sum(m["scrub"] is None for m in moves), "moves": len(moves)}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(label: str, n: int, r: dict) -> dict:
    """Print one run's line and its events; its statistics."""
    s, c = r["scrub"] or [float("nan")], r["chain"]
    stats = {"scrub p50": statistics.median(s), "scrub p95": pct(s, 95), "chain p50": statistics.median(c),
             "chain p95": pct(c, 95), "app CPU/click": r["cpu"] / r["moves"], "clicks/s": r["moves"] / r["wall"]}
    queued = sum(q for _, _, q in r["events"])
    print(f"{label:>8} clients {n:>3}: scrub p50 {1000 * stats['scrub p50']:6.0f} ms  p95 "
          f"{1000 * stats['scrub p95']:6.0f} ms | chain p50 {1000 * stats['chain p50']:6.0f} ms  p95 "
          f"{1000 * stats['chain p95']:6.0f} ms | moves {r['moves']}, errors {len(r['errors'])}, no grid "
          f"{r['no_grid']} | requests/click {len(r['events']) / r['moves']:.1f} ({queued / r['moves']:.1f} queued)"
          f" | app CPU/click {1000 * stats['app CPU/click']:.0f} ms, {stats['clicks/s']:.1f} clicks/s served"
          f" | load avg {r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)
    per: dict[str, list[float]] = {}
    for name, sec, _ in r["events"]:
        per.setdefault(name, []).append(sec)
    print("      per event (request to answer), p50 ms: " + ", ".join(
        f"{k} {1000 * statistics.median(v):.0f}" for k, v in sorted(per.items(), key=lambda kv: -statistics.median(kv[1]))))
    for e in sorted(set(r["errors"]))[:5]:
        print(f"      error: {e}")
    return stats


def main(argv=None) -> int:
    from pipelines.demo.assets import DEMO_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL), help="base checkpoint (default: the bundled demo)")
    p.add_argument("--clients", default="1,5,20", help="numbers of concurrent clients, comma separated")
    p.add_argument("--scrubs", type=int, default=20, help="ω clicks per client")
    p.add_argument("--seeds", type=int, default=64, help="samples in the preview grid")
    p.add_argument("--preview-steps", type=int, default=12, help="Heun steps of the cached previews")
    p.add_argument("--compare", type=Path, help="another checkout of the app to measure side by side")
    p.add_argument("--rounds", type=int, default=1, help="runs per app and N (alternating order)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from scrub import prepare
    from studio.services import guide
    counts = [int(x) for x in args.clients.split(",")]
    roots = {"this": ROOT, **({"compare": args.compare.resolve()} if args.compare else {})}
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
        apps, pages = {}, {}
        try:
            for label, root in roots.items():
                log = Path(tmp) / f"app-{label}.log"
                apps[label] = (*start_app(data_dir, log, root=root), log)
                url = f"http://127.0.0.1:{apps[label][1]}/"
                pages[label] = page = Page(url, {"guide-ckpt": ck, "guide-psteps": gs.preview_steps,
                                                 "guide-pcount": gs.preview_count, "pick-device": "cpu"})
                warm = Client(page, random.Random(0))
                warm.open()
                first = warm.move(omegas[1])
                print(f"{label} ({root}): a click's requests: "
                      + ", ".join(f"{name}{'' if q else ' (no queue)'}" for name, _, q in first["events"]))
            stats: dict[tuple[str, int], list[dict]] = {}
            for n in counts:
                order = list(roots)
                for k in range(args.rounds):
                    for label in (order if k % 2 == 0 else order[::-1]):
                        proc, _, log = apps[label]
                        r = run_clients(pages[label], omegas, n, args.scrubs, args.seed + k, proc.pid)
                        stats.setdefault((label, n), []).append(report(label, n, r))
                        if proc.poll() is not None:
                            raise SystemExit(f"the {label} app exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if args.compare:
                print("this checkout / compare (median over rounds of each statistic):")
                for n in counts:
                    mid = {label: {k: statistics.median(s[k] for s in stats[(label, n)]) for k in stats[(label, n)][0]}
                           for label in roots}
                    print(f"  clients {n:>3}: " + ", ".join(
                        f"{k} {mid['this'][k] / mid['compare'][k]:.2f}x" for k in mid["this"]))
        finally:
            for proc, _, _ in apps.values():
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
