"""A real PostgreSQL for every test: one throwaway server per session, a fresh database per test.

The server is started by devtools.throwaway_postgres (which works as root by running PostgreSQL
as an unprivileged user); pytest-postgresql creates and drops the per-test databases on it.
PG_MAJOR=17 picks the server's major (scripts/test.sh runs the suite on 15 and on 17; the header
says which), and PgBouncer in either pool mode stands in front of it for the tests that ask.

PostgreSQL 18 runs only the tests marked `pg18` (scripts/test.sh, beside the version matrix: the
whole suite on a third major would not fit CI's budget). Mark a test, or a module with
`pytestmark = pytest.mark.pg18`, when what it proves rests on the server's catalogs or DDL and a
new major could change it: each starting state's upgrade and exact downgrade, the unique index
form, the constraint's options, writers during the upgrade, upserts racing a concurrent
rebuild (the docs name 18), partitioned tables, the client tools. Run them alone with
`PG_MAJOR=18 pytest -m pg18`; `PG_MAJORS="15 17 18" bash scripts/test.sh` runs everything on 18
too (all of it passed on 18.4 when the subset was chosen).
"""

import os
import zlib

import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import create_engine

from devtools.pgbouncer import PgBouncerUnavailable, pgbouncer, pgbouncer_binary
from devtools.postgres_binaries import binary_major
from devtools.throwaway_postgres import ThrowawayPostgresError, find_bin_dir, throwaway_postgres
from tests.support import MigrationHarness, prepare_cluster


def pytest_report_header():
    """Which PostgreSQL this run is against, at the top of pytest's output."""
    try:
        bin_dir = find_bin_dir()
    except ThrowawayPostgresError as error:
        return f"postgresql: none ({error})"
    return f"postgresql: {binary_major(bin_dir)} from {bin_dir}"


def pytest_collection_modifyitems(config, items):
    """scripts/test.sh runs the suite once per major, side by side: each test marked any_major
    (what it proves does not depend on the server's major) runs in one of those runs only,
    shared out between them by a stable hash of its id so that each run carries about half."""
    majors = os.environ.get("ANY_MAJOR_SPLIT_OVER", "").split()
    this_major = os.environ.get("PG_MAJOR")
    if len(majors) < 2 or this_major not in majors:
        return
    for item in items:
        if item.get_closest_marker("any_major"):
            runs_on = majors[zlib.crc32(item.nodeid.encode()) % len(majors)]
            if runs_on != this_major:
                reason = f"independent of the server's major: runs on {runs_on} only"
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pg_server():
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_major(pg_server) -> int:
    """The PostgreSQL major the session's server runs (15, 17, ...)."""
    return pg_server.major


def _running_pgbouncer(server, pool_mode: str):
    try:
        pgbouncer_binary()
    except PgBouncerUnavailable as error:
        pytest.skip(str(error))
    with pgbouncer(server, pool_mode) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def pgbouncer_session(pg_server):
    """PgBouncer in session mode in front of pg_server: a client keeps its server connection."""
    yield from _running_pgbouncer(pg_server, "session")


@pytest.fixture(scope="session")
def pgbouncer_transaction(pg_server):
    """PgBouncer in transaction mode in front of pg_server, as Supabase's pooler on port 6543:
    the server connection goes back to the pool after every transaction."""
    yield from _running_pgbouncer(pg_server, "transaction")


@pytest.fixture(scope="session")
def pg_executor(pg_server):
    executor = NoopExecutor(
        host=pg_server.host,
        port=pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        options="",
        dbname="tests",
    )
    # Every test's database is cloned from this empty template.
    template = DatabaseJanitor(
        user=executor.user,
        host=executor.host,
        port=executor.port,
        password=executor.password,
        dbname=executor.template_dbname,
        as_template=True,
    )
    with template:
        yield executor


postgresql = factories.postgresql("pg_executor")


@pytest.fixture
def harness(postgresql, pg_server, cluster_roles, monkeypatch):
    """Alembic and SQL against this test's own database, as the (non-superuser) owner role."""
    harness = MigrationHarness(pg_server, postgresql.info.dbname)
    monkeypatch.setenv("DATABASE_URL", harness.url)
    yield harness
    harness.close()


# pytest-alembic's fixtures: its built-in tests run against this test's own database.
@pytest.fixture
def alembic_engine(harness):
    engine = create_engine(harness.url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def cluster_roles(pg_server):
    """Supabase's API roles and the migrating owner role, once per server."""
    prepare_cluster(pg_server)


@pytest.fixture
def alembic_config():
    from pytest_alembic.config import Config as PytestAlembicConfig

    return PytestAlembicConfig(config_options={"file": "alembic.ini"}, at_revision_data={})
