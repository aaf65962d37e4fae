"""SIGTERM stops the studio even when the process that started it ignores SIGTERM (and the child inherits that):
once seen as a studio that outlived `terminate()` by 30 s in the test suite."""
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.testing import wait_until

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_sigterm_stops_a_studio_started_with_sigterm_ignored(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(tmp_path / "data"), "--port", str(port),
                             "--no-demo"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    try:
        wait_until(lambda: _answers(port) or proc.poll() is not None, timeout=180, what="the studio to listen")
        assert proc.poll() is None, f"the studio exited at start with {proc.returncode}"
        t0 = time.monotonic()
        proc.terminate()
        proc.wait(timeout=20)  # a deadline, not a pause: it returns as soon as the studio is gone
        print(f"studio exited {time.monotonic() - t0:.2f} s after SIGTERM (code {proc.returncode})")
        assert proc.returncode == 0 and not _answers(port)  # it shut down (server closed, database released)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
