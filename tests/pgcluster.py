"""A throwaway PostgreSQL cluster for the tests: initdb in a temp folder, served on 127.0.0.1:<free port>.

    eval "$(python tests/pgcluster.py start)"   # prints: export SIMS_TEST_PG_URL=... SIMS_TEST_PG_DIR=...
    python tests/pgcluster.py stop DIR          # stops the server and deletes the folder

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user that Debian's
package creates (or as a `sims-pg` system user created here). The cluster trusts local connections and
runs with fsync off: it holds only test data and is deleted at the end.
"""
from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SUPERUSER = "sims"


def find_bin_dir() -> Path | None:
    """Folder of initdb/pg_ctl: $SIMS_PG_BIN, Debian's newest /usr/lib/postgresql/*/bin, or PATH."""
    if os.environ.get("SIMS_PG_BIN"):
        return Path(os.environ["SIMS_PG_BIN"])
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> list[str]:
    """Command prefix that drops root to an unprivileged user ([] when not root)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "sims-pg"):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "sims-pg"],
                   check=True)
    return ["runuser", "-u", "sims-pg", "--"]


def start() -> tuple[str, Path]:
    """Start a cluster; returns (SQLAlchemy URL, folder). Raises RuntimeError saying why it could not."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's "
                           "`postgresql` package or set SIMS_PG_BIN")
    root = Path(tempfile.mkdtemp(prefix="sims-pg-"))
    prefix = _run_as()
    if prefix:  # the unprivileged server user must own its folder
        user = prefix[2]
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, log = root / "data", root / "server.log"
    port = _free_port()
    try:
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, text=True, timeout=120)
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                        "-w", "-t", "60", "start"], check=True, capture_output=True, text=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or ""
        if log.exists():
            detail += log.read_text()[-2000:]
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL from {bin_dir}: {e}\n{detail}") from None
    return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres", root


def stop(root) -> None:
    """Stop the cluster in `root` (immediate shutdown) and delete the folder."""
    root = Path(root)
    bin_dir = find_bin_dir()
    if bin_dir is not None and (root / "data" / "postmaster.pid").exists():
        subprocess.run([*_run_as(), str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["start"]:
        try:
            url, folder = start()
        except RuntimeError as e:
            print("echo " + shlex.quote(f"PostgreSQL tests will be skipped: {str(e).splitlines()[0]}") + " >&2")
            sys.exit(0)
        print(f"export SIMS_TEST_PG_URL={shlex.quote(url)} SIMS_TEST_PG_DIR={shlex.quote(str(folder))}")
    elif sys.argv[1:2] == ["stop"] and len(sys.argv) == 3:
        stop(sys.argv[2])
    else:
        sys.exit("usage: pgcluster.py start | stop DIR")
