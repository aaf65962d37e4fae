"""Model import by URL refuses loopback/private/link-local/reserved addresses unless explicitly allowed.

A local HTTP server counts the requests it receives: a refused import must not reach it at all.
"""
import http.server
import socket

import pytest

from pipelines.checkpoints import download
from pipelines.cli import main
from pipelines.errors import UserError
from studio.core import open_studio
from studio.services import registry
from studio.settings import Settings
from studio.testing import run_now

PAYLOAD = b"\x80\x04not a real network pickle"


class CountingHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /net.pkl, redirects /hop to the server's `redirect_to`, counts every request."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(serve_http):
    return serve_http(CountingHandler, hits=[], redirect_to="")


@pytest.mark.parametrize("ip,why", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("192.168.0.10", "private"), ("172.16.5.5", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"), ("0.0.0.0", "private"),
    ("224.0.0.1", "multicast"), ("100.64.0.1", "non-global"), ("8.8.8.8", None), ("2606:4700::1111", None),
])
def test_address_classes(ip, why):
    assert download._blocked_reason(ip) == why


def test_loopback_url_is_refused_before_any_request(server, tmp_path):
    srv, base = server
    with pytest.raises(UserError) as e:
        download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "127.0.0.1" in msg and "loopback" in msg and "--allow-private-urls" in msg
    assert srv.hits == [] and not any(tmp_path.rglob("*.part"))
    # explicitly allowed: the same URL downloads
    assert download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, progress=False,
                          allow_private=True).read_bytes() == PAYLOAD


def test_every_resolved_address_is_checked(monkeypatch):
    # a name with one public and one private answer is refused: the client might connect to either
    def fake_getaddrinfo(host, port, *a, **k):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]
    monkeypatch.setattr(download.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(UserError, match=r"resolves to 10\.0\.0\.7, a private address"):
        download.check_public_url("https://models.example.org/net.pkl")


def test_connection_peer_is_checked_even_when_the_name_looked_public(server, tmp_path, monkeypatch):
    # DNS rebinding: the pre-check saw a public address, the connection lands on loopback
    srv, base = server
    monkeypatch.setattr(download, "check_public_url", lambda url, allow_private=False: None)
    with pytest.raises(UserError, match="loopback address.*--allow-private-urls"):
        download.fetch(f"{base}/net.pkl", cache_dir=tmp_path, progress=False)
    assert srv.hits == []


def test_redirect_to_a_private_host_is_refused(server, tmp_path, monkeypatch):
    srv, base = server
    srv.redirect_to = "http://intranet.test/secret.pkl"
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *a, **k):  # intranet.test is a private host
        if host == "intranet.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.20", port))]
        return real_getaddrinfo(host, port, *a, **k)
    monkeypatch.setattr(download.socket, "getaddrinfo", fake_getaddrinfo)
    # let the first hop (the loopback test server) count as public, only for this test
    real_reason = download._blocked_reason
    monkeypatch.setattr(download, "_blocked_reason", lambda ip: None if ip == "127.0.0.1" else real_reason(ip))
    with pytest.raises(UserError, match=r"intranet\.test resolves to 192\.168\.1\.20, a private address"):
        download.fetch(f"{base}/hop", cache_dir=tmp_path, progress=False)
    assert srv.hits == ["/hop"]


def test_cli_import_refuses_loopback_and_names_the_flag(server, tmp_path, capsys):
    srv, base = server
    code = main(["import-edm", f"{base}/net.pkl", str(tmp_path / "o.safetensors"), "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "loopback" in err and "--allow-private-urls" in err and srv.hits == []
    # with the flag the file is fetched (and then refused as a pickle: it is not an EDM network)
    code = main(["import-edm", f"{base}/net.pkl", str(tmp_path / "o.safetensors"), "--cache-dir", str(tmp_path),
                 "--allow-private-urls"])
    assert code == 2 and srv.hits == ["/net.pkl"] and "loopback" not in capsys.readouterr().err


@pytest.mark.parametrize("allow", [False, True])
def test_studio_import_job_follows_the_setting(server, tmp_path, allow):
    srv, base = server
    st = open_studio(Settings(data_dir=tmp_path / "data", allow_private_urls=allow), start_runner=False, demo=False)
    try:
        view = run_now(st, registry.submit_import(st.db, st.settings, f"{base}/net.pkl"))
    finally:
        st.close()
    assert view.state == "failed"
    if allow:  # fetched, then refused by the importer as not an EDM pickle
        assert srv.hits == ["/net.pkl"] and "loopback" not in view.message
    else:
        assert srv.hits == []
        assert "loopback" in view.message and "--allow-private-urls" in view.message
