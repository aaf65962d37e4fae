"""`python app.py`: help, argument errors, a served page bound to 127.0.0.1, files only from the data dir."""
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--host", "--port", "--share", "--auth", "--data-dir", "--db"):
        assert flag in out.stdout


def test_bad_auth_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "app.py", "--auth", "nocolon", "--data-dir", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "user:password" in out.stderr


@pytest.mark.slow
def test_serves_locally_and_only_data_dir_files(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            pytest.fail("studio did not start: " + proc.stdout.read() if proc.poll() is not None else "timeout")
        assert (tmp_path / "data" / "studio.db").exists()  # created on first run, migrations applied
        # bound to loopback only
        conns = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in conns and f"0.0.0.0:{port}" not in conns
        # files inside the data directory are served (sample grids, exports) ...
        (tmp_path / "data" / "exports" / "hello.txt").write_text("hi")
        with urllib.request.urlopen(f"{url}/gradio_api/file={tmp_path / 'data' / 'exports' / 'hello.txt'}") as r:
            assert r.read() == b"hi"
        # ... files outside it are not
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/gradio_api/file=/etc/passwd", timeout=5)
        assert e.value.code in (403, 404)
        # ... nor the database inside it
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/gradio_api/file={tmp_path / 'data' / 'studio.db'}", timeout=5)
        assert e.value.code in (403, 404)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # seen once in a CI run: stop it rather than leak it
            proc.kill()
            proc.wait(10)
