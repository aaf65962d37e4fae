"""Shared fixtures: small models built from the engine's own factory, and the database back-ends.

Markers (slow, browser, postgres, sqlite_only) are declared in pyproject.toml.

Database-facing test modules run against SQLite and PostgreSQL: they declare
`pytestmark = pytest.mark.usefixtures("db_backend")` (a module-scoped fixture parametrised over both;
module-scoped fixtures of theirs that open a studio take `db_backend` as an argument). Under
"postgresql" every `Settings` without an explicit `db_url` gets its own database, one per data
directory, just as SQLite keeps one file per data directory. The server is $SIMS_TEST_PG_URL
(scripts/test.sh starts one) or, where PostgreSQL's binaries are installed, a throwaway cluster this
session starts itself; without either the PostgreSQL variants are skipped, saying why.
"""
import hashlib
import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tests.testkit import make_mlp  # noqa: E402


@pytest.fixture
def mlp_pair():
    base, cfg = make_mlp(0)
    aux, _ = make_mlp(1)
    return base, aux, cfg


# ----------------------------------------------------------------------------- PostgreSQL

@pytest.fixture(scope="session")
def pg_server():
    """Admin URL of a PostgreSQL server for tests; skips (with the reason) when there is none."""
    url = os.environ.get("SIMS_TEST_PG_URL")
    if url:
        yield url
        return
    if os.environ.get("SIMS_TEST_PG") == "off":
        pytest.skip("PostgreSQL tests switched off (SIMS_TEST_PG=off)")
    import pgcluster
    try:
        url, folder = pgcluster.start()
    except RuntimeError as e:
        pytest.skip(f"PostgreSQL unavailable: {str(e).splitlines()[0]}")
    try:
        yield url
    finally:
        pgcluster.stop(folder)


class PgDatabases:
    """Creates one database per key on the test server and drops them all at the end."""

    def __init__(self, admin_url: str, prefix: str):
        from sqlalchemy import create_engine
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.base = admin_url.rsplit("/", 1)[0]
        self.prefix = prefix
        self.made: list[str] = []

    def url_for(self, key: str) -> str:
        from sqlalchemy import text
        name = f"{self.prefix}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        if name not in self.made:
            with self.admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                c.execute(text(f'CREATE DATABASE "{name}"'))
            self.made.append(name)
        return f"{self.base}/{name}"

    def drop_all(self) -> None:
        from sqlalchemy import text
        with self.admin.connect() as c:
            for name in self.made:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request):
    """'sqlite' or 'postgresql': under the latter, Settings() default to a fresh database per data dir."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    dbs = PgDatabases(request.getfixturevalue("pg_server"), prefix=f"t{os.getpid()}_{request.module.__name__[-20:]}")
    from studio.settings import Settings
    original = Settings.__post_init__

    def post_init(self):
        if not self.db_url:
            object.__setattr__(self, "db_url", dbs.url_for(str(Path(self.data_dir).expanduser().resolve())))
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Settings, "__post_init__", post_init)
        yield "postgresql"
    dbs.drop_all()


@pytest.fixture(autouse=True)
def _sqlite_only(request):
    if request.node.get_closest_marker("sqlite_only") and "postgresql" in request.node.name:
        pytest.skip("checks a SQLite-only property")


@pytest.fixture
def pg_url(pg_server, request):
    """URL of a fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    dbs = PgDatabases(pg_server, prefix=f"t{os.getpid()}_fn")
    yield dbs.url_for(request.node.nodeid)
    dbs.drop_all()


@pytest.fixture
def serve_http():
    """start(handler, **attrs) -> (server, base URL): a threaded HTTP server on a free loopback port whose
    `attrs` the handler reads as self.server.<name>; every server started is shut down after the test."""
    servers = []

    def start(handler, **attrs):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for name, value in attrs.items():
            setattr(srv, name, value)
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv, f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
