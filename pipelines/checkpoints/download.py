"""Fetch a file by URL into a local cache (once, resumable, sha256 recorded) or pass a local path through.

Cache layout: `<cache_dir>/<host>/<url path>`; the sha256 of each finished download is kept in a
sidecar `<file>.sha256` (sha256sum format). A partial download lives at `<file>.part` and is resumed
with an HTTP Range request on the next call.

URLs whose host is (or resolves to) a loopback, link-local, private, reserved, multicast or
unspecified address are refused unless `allow_private=True`: a studio serving a team must not
become a proxy into its own network (server-side request forgery). The host is checked before
connecting, and every connection's actual peer is checked again, so redirects and DNS answers
that change between the check and the connection are covered too.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
from tqdm import tqdm

from ..errors import UserError

CHUNK = 1 << 16  # small enough that a dropped connection keeps almost all it received
TIMEOUT_S = 30
MAX_REDIRECTS = 5
ALLOW_FLAG = "--allow-private-urls"


def default_cache_dir() -> Path:
    """$SIMS_CACHE_DIR, else ~/.cache/sims-studio."""
    return Path(os.environ.get("SIMS_CACHE_DIR") or Path.home() / ".cache" / "sims-studio")


def is_url(src) -> bool:
    """True for http(s) URLs."""
    return isinstance(src, str) and src.lower().startswith(("http://", "https://"))


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def recorded_sha256(path) -> str:
    """sha256 from the file's sidecar when it is up to date, else computed (and the sidecar written)."""
    path = Path(path)
    sidecar = _sidecar(path)
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        return sidecar.read_text().split()[0]
    digest = sha256_file(path)
    try:
        sidecar.write_text(f"{digest}  {path.name}\n")
    except OSError:
        pass  # read-only location: the hash is still returned, just not cached
    return digest


def cache_path(url: str, cache_dir=None) -> Path:
    """Where `url` is stored in the cache."""
    parts = urlparse(url)
    segments = [s for s in unquote(parts.path).split("/") if s not in ("", ".", "..")]
    if not segments:
        raise UserError(f"URL {url!r} does not name a file; pass the full URL of the .pkl file.")
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", s) for s in [parts.netloc or "host", *segments]]
    return Path(cache_dir or default_cache_dir()).joinpath(*safe)


def fetch(url_or_path, cache_dir=None, expected_sha256: str | None = None, progress: bool = True,
          allow_private: bool = False) -> Path:
    """Local path -> itself (checked); URL -> cached download. Verifies `expected_sha256` if given.

    URLs on loopback/private/link-local/reserved addresses are refused unless `allow_private`
    (a cached copy is served without a network check: nothing is fetched).
    """
    if not is_url(url_or_path):
        path = Path(url_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"File not found: {path}. Check the path, or pass an http(s) URL to download it.")
        _check_sha(path, recorded_sha256(path) if expected_sha256 else None, expected_sha256, delete=False)
        return path
    url = str(url_or_path)
    target = cache_path(url, cache_dir)
    fresh = not target.exists()
    if fresh:
        check_public_url(url, allow_private)
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(url, target, progress, allow_private)
    _check_sha(target, recorded_sha256(target), expected_sha256, delete=fresh)
    return target


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_sha(path: Path, actual: str | None, expected: str | None, delete: bool) -> None:
    if not expected or actual is None or actual.lower() == expected.strip().lower():
        return
    if delete:
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
        what = "The download was deleted; check the hash, then run again to download it afresh."
    else:
        what = f"Delete {path} (and its .sha256) to download it again, or check the expected hash."
    raise UserError(f"sha256 mismatch for {path}: expected {expected.strip().lower()}, got {actual}. {what}")


def _download(url: str, target: Path, progress: bool, allow_private: bool = False) -> None:
    """Stream `url` to `target` via `<target>.part`, resuming a previous partial download."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _get(url, headers, allow_private)
    except requests.RequestException as e:
        raise UserError(f"Could not reach {url} ({type(e).__name__}). Download the file by hand (browser, curl) "
                        f"and pass its local path instead of the URL, or save it as {target} so that this "
                        "URL is found in the cache.") from None
    with resp:
        if resp.status_code == 416 and have:  # nothing left to send: the .part may be complete or stale
            part.unlink()
            return _download(url, target, progress, allow_private)
        if resp.status_code >= 400:
            raise UserError(f"Downloading {url} failed: HTTP {resp.status_code} {resp.reason}. Check the URL, "
                            f"or download the file by hand and pass its local path.")
        resumed = have and resp.status_code == 206
        if not resumed:
            have = 0  # server ignored the Range header: start over
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        got = have
        try:
            with open(part, "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=target.name,
                         disable=not progress) as bar:
                for chunk in resp.iter_content(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except requests.RequestException as e:
            raise UserError(f"Download of {url} was interrupted ({type(e).__name__}) after {got} bytes; "
                            f"run the same command again to resume from {part}.") from None
    if total is not None and got != total:
        raise UserError(f"Download of {url} ended early ({got} of {total} bytes); run the same command "
                        f"again to resume from {part}.")
    digest = sha256_file(part)
    part.replace(target)
    _sidecar(target).write_text(f"{digest}  {target.name}\n")


# ----------------------------------------------------------------------------
# Refusing internal addresses (SSRF).

def _blocked_reason(ip: str) -> str | None:
    """Why an address must not be fetched from ('loopback', 'private', ...), or None if it is public."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    for kind in ("loopback", "link_local", "private", "reserved", "multicast", "unspecified"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    if not addr.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT): not reachable from the internet
        return "non-global"
    return None


def _refusal(url: str, host: str, ip: str, why: str) -> UserError:
    return UserError(f"Refused to download {url}: its host {host} resolves to {ip}, a {why} address. Model "
                     f"import only fetches from public internet addresses, so that a shared studio cannot "
                     f"be used to reach its own network. If this server is yours and trusted, start the "
                     f"studio with {ALLOW_FLAG} (or pass {ALLOW_FLAG} to `import-edm`), or download the "
                     f"file yourself and import its local path.")


def check_public_url(url: str, allow_private: bool = False) -> None:
    """Refuse `url` (UserError) when its host is or resolves to any non-public address."""
    if allow_private:
        return
    parts = urlparse(url)
    host = parts.hostname
    if not host:
        raise UserError(f"URL {url!r} has no host name; pass a full http(s) URL.")
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"Could not resolve the host {host} of {url} ({e}). Check the URL, or download the "
                        "file by hand and pass its local path.") from None
    for *_, sockaddr in infos:  # every address: a name may resolve to one public and one private address
        why = _blocked_reason(sockaddr[0])
        if why:
            raise _refusal(url, host, sockaddr[0], why)


class _PeerCheck:
    """Mixin for urllib3 connections: refuse the socket when its actual peer is not public."""

    def _new_conn(self):
        sock = super()._new_conn()
        ip = sock.getpeername()[0]
        why = _blocked_reason(ip)
        if why:
            sock.close()
            raise _refusal(f"the server {self.host}:{self.port}", self.host, ip, why)
        return sock


class _CheckedHTTPConnection(_PeerCheck, urllib3.connection.HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PeerCheck, urllib3.connection.HTTPSConnection):
    pass


class _CheckedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _PublicOnlyAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose every connection (first request and each redirect) checks its peer address."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def _get(url: str, headers: dict, allow_private: bool) -> requests.Response:
    """GET with redirects followed by hand, each hop's host checked before it is contacted."""
    session = requests.Session()  # not closed here: the streamed response still reads through it
    if not allow_private:
        adapter = _PublicOnlyAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    for _ in range(MAX_REDIRECTS + 1):
        check_public_url(url, allow_private)
        resp = session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S, allow_redirects=False)
        if not resp.is_redirect:
            return resp
        nxt = requests.compat.urljoin(url, resp.headers["Location"])
        resp.close()
        if not is_url(nxt):
            raise UserError(f"{url} redirects to {nxt!r}, which is not an http(s) URL; download the file "
                            "by hand and pass its local path.")
        url = nxt
    raise UserError(f"{url} redirected more than {MAX_REDIRECTS} times; download the file by hand and pass "
                    "its local path.")
