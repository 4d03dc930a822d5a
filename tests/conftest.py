"""A real PostgreSQL for every test: one throwaway server per session, a fresh database per test.

The server is started by devtools.throwaway_postgres (which works as root by running PostgreSQL
as an unprivileged user); pytest-postgresql creates and drops the per-test databases on it.
"""

import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import create_engine

from devtools.throwaway_postgres import throwaway_postgres
from tests.support import MigrationHarness


@pytest.fixture(scope="session")
def pg_server():
    with throwaway_postgres() as server:
        yield server


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
def harness(postgresql, pg_server, monkeypatch):
    """Alembic and SQL against this test's own database."""
    harness = MigrationHarness(pg_server, postgresql.info.dbname)
    monkeypatch.setenv("DATABASE_URL", harness.url)
    yield harness
    harness.close()


# pytest-alembic's fixtures: its built-in tests run against this test's own database.
@pytest.fixture
def alembic_engine(postgresql, pg_server):
    engine = create_engine(pg_server.url(postgresql.info.dbname))
    yield engine
    engine.dispose()


@pytest.fixture
def alembic_config():
    from pytest_alembic.config import Config as PytestAlembicConfig

    return PytestAlembicConfig(config_options={"file": "alembic.ini"}, at_revision_data={})
