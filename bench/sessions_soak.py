"""Memory of the studio as browser sessions come and go: RSS growth per 100 new sessions.

    python bench/sessions_soak.py [--sessions 1000] [--max-sessions 256] [--session-idle-minutes 60]
    python bench/sessions_soak.py --max-sessions 10000 --session-idle-minutes 100000   # Gradio's defaults

Starts `app.py` on a throw-away data folder (the bundled demo registered, as a user gets it) in a
child process, then opens sessions one after another the way a browser opening the page does: a
fresh session hash joins the queue with the page's load event (the values the page would send) and
reads the event stream to the end. Every 100 sessions it samples the server's resident memory
(VmRSS of its process, after a short wait for the reaper) and prints the growth per 100 sessions,
overall and over the second half (after the session cap is reached, flat means bounded).
`--url URL --pid PID` measures a studio already running instead.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(http, url: str, proc, timeout: float) -> None:
    """Until the studio answers (deadline: `timeout` s; the first start registers the demo)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the studio exited with {proc.returncode} before answering")
        try:
            if http.get(url + "config").status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    raise SystemExit(f"the studio did not answer at {url} within {timeout} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=20, help="sessions opened before the first RSS sample")
    ap.add_argument("--max-sessions", type=int, default=256, help="passed to the studio")
    ap.add_argument("--session-idle-minutes", type=float, default=60.0, help="passed to the studio")
    ap.add_argument("--url", default=None, help="measure a running studio (with --pid) instead of starting one")
    ap.add_argument("--pid", type=int, default=None)
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    import httpx
    sys.path.insert(0, str(ROOT))
    from studio.testing import PageOpener

    proc, tmp = None, None
    if args.url:
        if args.pid is None:
            raise SystemExit("--url needs --pid (the process whose memory to sample)")
        url, pid = args.url.rstrip("/") + "/", args.pid
    else:
        tmp = tempfile.TemporaryDirectory(prefix="sims-soak-")
        port = free_port()
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", f"{tmp.name}/data",
                                 "--port", str(port), "--device", "cpu", "--max-sessions", str(args.max_sessions),
                                 "--session-idle-minutes", str(args.session_idle_minutes)],
                                cwd=ROOT, env=env, stdout=open(f"{tmp.name}/studio.log", "w"),
                                stderr=subprocess.STDOUT)
        url, pid = f"http://127.0.0.1:{port}/", proc.pid
    http = httpx.Client(timeout=120)
    try:
        wait_up(http, url, proc, args.startup_timeout)
        opener = PageOpener(http, url)
        for _ in range(args.warmup):
            opener.open()
        samples, t0 = [(0, rss_mb(pid))], time.perf_counter()
        print(f"studio pid {pid}: max sessions {args.max_sessions}, idle expiry {args.session_idle_minutes} min; "
              f"RSS after {args.warmup} warm-up sessions {samples[0][1]:.1f} MB", flush=True)
        loads = []
        for i in range(1, args.sessions + 1):
            t = time.perf_counter()
            opener.open()
            loads.append(time.perf_counter() - t)
            if i % 100 == 0:
                samples.append((i, rss_mb(pid)))
                print(f"{i:>6} sessions  RSS {samples[-1][1]:8.1f} MB  (+{samples[-1][1] - samples[-2][1]:6.2f} MB "
                      f"for these 100; page load median {1000 * statistics.median(loads[-100:]):.0f} ms)",
                      flush=True)
        n, total = samples[-1][0], samples[-1][1] - samples[0][1]
        half = [s for s in samples if s[0] >= n // 2]
        late = (half[-1][1] - half[0][1]) / max(1, (half[-1][0] - half[0][0]) / 100)
        print(f"RSS growth: {100 * total / n:.2f} MB per 100 sessions over {n} sessions "
              f"({total:+.1f} MB in all); second half {late:.2f} MB per 100 sessions; "
              f"{time.perf_counter() - t0:.0f} s")
    finally:
        http.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
