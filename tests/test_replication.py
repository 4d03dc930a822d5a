"""Logical replicas and CDC streams keep streaming through the upgrade and the downgrade.

A real subscriber on a second server replicates the app's database through a publication FOR
ALL TABLES (as CDC tools and hand-made replicas use), which carries the private schema's
tables too, and a second one through Supabase Realtime's `supabase_realtime FOR TABLE
public.meta_assets_cache`. The subscriber gets the DDL that `python -m app.subscriber_ddl`
prints before the first migration runs. After each direction: no apply-worker error, a row
written afterwards arrives, and the subscriber holds exactly the publisher's rows.
"""

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine

from app.names import ARCHIVE, UNIQUE_PAIR_LEDGER
from devtools.logical_replica import PUBLISHER_SETTINGS, Subscription
from devtools.starting_states import SUPABASE_SCHEMA
from devtools.throwaway_postgres import throwaway_postgres
from tests.support import (
    BASELINE,
    HEAD,
    MIGRATOR,
    PROJECT_ROOT,
    MigrationHarness,
    prepare_cluster,
)

pytestmark = pytest.mark.slow

TABLE = "public.meta_assets_cache"
APP_TABLES = ("public.workspaces", TABLE)


@pytest.fixture(scope="module")
def servers():
    """A publisher (wal_level = logical) and the server its subscribers run on."""
    with throwaway_postgres(PUBLISHER_SETTINGS) as publisher, throwaway_postgres() as replica:
        prepare_cluster(publisher)
        prepare_cluster(replica)
        yield publisher, replica


def admin(server, sql: str, database: str = "postgres") -> None:
    engine = create_engine(server.url(database), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection, connection.connection.cursor() as cursor:
            cursor.execute(sql)  # a whole script, as psql runs it: no parameters to fill
    finally:
        engine.dispose()


@pytest.fixture
def replicated(servers, monkeypatch):
    """A drifted app database on the publisher with both publications; its two subscriber
    databases, one prepared with the subscriber DDL, and their subscriptions, synced."""
    publisher, replica = servers
    name = f"r{uuid.uuid4().hex[:10]}"
    admin(publisher, f"CREATE DATABASE {name} OWNER {MIGRATOR}")
    for suffix in ("all", "realtime"):
        admin(replica, f"CREATE DATABASE {name}_{suffix}")
        admin(replica, SUPABASE_SCHEMA.read_text(), f"{name}_{suffix}")
    harness = MigrationHarness(publisher, name)
    monkeypatch.setenv("DATABASE_URL", harness.url)
    harness.build_state("drifted")
    admin(publisher, "CREATE PUBLICATION all_tables FOR ALL TABLES", name)
    harness.execute(f"CREATE PUBLICATION supabase_realtime FOR TABLE {TABLE}")
    ddl = subprocess.run(
        [sys.executable, "-m", "app.subscriber_ddl"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    admin(replica, ddl, f"{name}_all")
    subscriptions = [
        Subscription(replica, f"{name}_all", publisher, name, f"{name}_all", ["all_tables"]),
        Subscription(
            replica, f"{name}_realtime", publisher, name, f"{name}_rt", ["supabase_realtime"]
        ),
    ]
    try:
        for subscription in subscriptions:
            subscription.create()
        for subscription in subscriptions:
            subscription.wait_until_synced()
        yield harness, subscriptions
    finally:
        for subscription in subscriptions:
            subscription.drop()
        harness.close()
        admin(publisher, f"DROP DATABASE IF EXISTS {name}")
        for suffix in ("all", "realtime"):
            admin(replica, f"DROP DATABASE IF EXISTS {name}_{suffix}")


def rows_of(fetch, table: str) -> list:
    return sorted(row[0] for row in fetch(f"SELECT t::text FROM {table} t"))


def write_a_row(harness) -> str:
    return harness.scalar(
        f"INSERT INTO {TABLE} (workspace_id, phone_number_id)"
        " SELECT id, 'after-' || gen_random_uuid() FROM public.workspaces ORDER BY id LIMIT 1"
        " RETURNING id::text"
    )


def assert_streaming(harness, subscriptions, tables_of_all: tuple[str, ...]) -> None:
    """A row written now arrives everywhere; no worker failed; each subscriber holds the
    publisher's rows of the tables it replicates."""
    row_id = write_a_row(harness)
    for subscription in subscriptions:
        subscription.wait_for_row(TABLE, row_id)
        assert subscription.apply_errors() == 0
    everything, realtime = subscriptions
    for table in tables_of_all:
        assert rows_of(everything.sql, table) == rows_of(harness.rows, table), table
    assert rows_of(realtime.sql, TABLE) == rows_of(harness.rows, TABLE)


def test_subscribers_keep_streaming_through_the_upgrade_and_the_downgrade(replicated):
    harness, subscriptions = replicated
    everything, _ = subscriptions

    upgraded = harness.cli("upgrade", "head")

    assert upgraded.returncode == 0, upgraded.output
    assert "publication all_tables (FOR ALL TABLES) carries the tables" in upgraded.output
    assert "python -m app.subscriber_ddl" in upgraded.output
    assert "publication supabase_realtime (" not in upgraded.output
    assert harness.version() == HEAD and harness.count(ARCHIVE) > 0
    assert_streaming(harness, subscriptions, APP_TABLES)
    # From here the private tables replicate too: the downgrade's deletes from the archive
    # reach the subscriber (found by all their columns: the archive has no key).
    everything.refresh()
    everything.wait_until_synced()
    assert_streaming(harness, subscriptions, (*APP_TABLES, ARCHIVE, UNIQUE_PAIR_LEDGER))

    downgraded = harness.cli("downgrade", "-1")

    assert downgraded.returncode == 0, downgraded.output
    assert harness.version() == BASELINE
    assert_streaming(harness, subscriptions, APP_TABLES)
    assert everything.sql(f"SELECT count(*) FROM {ARCHIVE}") == [(0,)]
    version = everything.sql("SELECT version_num FROM meta_assets_migration.alembic_version")
    assert version == [(BASELINE,)]


@pytest.mark.parametrize(
    "publication",
    [
        "FOR ALL TABLES",
        "FOR TABLES IN SCHEMA meta_assets_migration",
        "FOR TABLE meta_assets_migration.alembic_version",
    ],
)
def test_preflight_and_the_upgrade_name_publications_that_carry_the_private_tables(
    harness, publication
):
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    harness.admin(f"CREATE PUBLICATION carrier {publication}")
    harness.admin("CREATE PUBLICATION supabase_realtime FOR TABLE public.meta_assets_cache")

    report = subprocess.run(
        [sys.executable, "-m", "app.preflight", "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**os.environ, "DATABASE_URL": harness.url},
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    [line] = json.loads(report.stdout)["replication"]
    assert line.startswith(f"publication carrier ({publication.split(' meta')[0]}")
    assert "python -m app.subscriber_ddl" in line

    result = harness.cli("upgrade", "head")
    assert result.returncode == 0, result.output
    # Said once, before the run writes a thing to the private schema.
    assert result.output.count("publication carrier (") == 1
    assert result.output.index("publication carrier (") < result.output.index("inspect")
