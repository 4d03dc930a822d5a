"""Logical replicas and CDC streams keep streaming through the upgrade and the downgrade.

A real subscriber on a second server replicates the app's database through a publication FOR
ALL TABLES (as CDC tools and hand-made replicas use), which carries the private schema's
tables too, and a second one through Supabase Realtime's `supabase_realtime FOR TABLE
public.meta_assets_cache`. A plain upgrade refuses before it writes anything, naming the
publication, the command that prints the subscriber's DDL and the setting that declares it run;
the subscriber gets that DDL, and the declared upgrade runs. After each step: no apply-worker
error, a row written afterwards arrives, and the subscriber holds exactly the publisher's rows.
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
from tests.offline_support import apply_script, offline_script, run_psql, schema_dump
from tests.support import (
    BASELINE,
    HEAD,
    MIGRATOR,
    PROJECT_ROOT,
    MigrationHarness,
    failed_lines,
    prepare_cluster,
    succeed,
)

pytestmark = pytest.mark.slow

TABLE = "public.meta_assets_cache"
APP_TABLES = ("public.workspaces", TABLE)
PRIVATE_SCHEMA_EXISTS = "SELECT count(*) FROM pg_namespace WHERE nspname = 'meta_assets_migration'"


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
    databases and their subscriptions, synced; and what runs the subscriber DDL on the one
    subscribing FOR ALL TABLES."""
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
        yield harness, subscriptions, lambda: admin(replica, ddl, f"{name}_all")
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
    harness, subscriptions, run_subscriber_ddl = replicated
    everything, _ = subscriptions
    before = schema_dump(harness)

    refused = harness.cli("upgrade", "head")

    assert refused.returncode != 0
    [line] = failed_lines(refused)
    assert "publication all_tables (FOR ALL TABLES) would carry the tables" in line
    assert "`python -m app.subscriber_ddl`" in line and "-x subscribers_ready=all_tables" in line
    assert "CDC stream" in line and "supabase_realtime" not in line
    assert schema_dump(harness) == before and harness.scalar(PRIVATE_SCHEMA_EXISTS) == 0
    assert_streaming(harness, subscriptions, APP_TABLES)

    run_subscriber_ddl()
    upgraded = harness.cli("-x", "subscribers_ready=all_tables", "upgrade", "head")

    succeed(upgraded)
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


def preflight_replication(harness) -> list[str]:
    report = subprocess.run(
        [sys.executable, "-m", "app.preflight", "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**os.environ, "DATABASE_URL": harness.url},
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    return json.loads(report.stdout)["replication"]


@pytest.mark.parametrize(
    "publication",
    [
        "FOR ALL TABLES",
        "FOR TABLES IN SCHEMA meta_assets_migration",
        "FOR TABLE meta_assets_migration.alembic_version",
    ],
)
def test_a_publication_that_would_carry_the_new_private_tables_refuses_until_declared(
    harness, publication
):
    """At the baseline the version table exists; the upgrade creates the ledger and archive.
    A publication that would carry them refuses the upgrade, online and offline, before it
    writes anything, as preflight says; declared, it runs. One that names only existing tables
    (its subscribers have had them since they subscribed) is no reason to refuse."""
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    harness.admin(f"CREATE PUBLICATION carrier {publication}")
    harness.admin("CREATE PUBLICATION supabase_realtime FOR TABLE public.meta_assets_cache")
    if publication.startswith("FOR TABLE "):
        assert preflight_replication(harness) == []
        succeed(harness.cli("upgrade", "head"))
        return
    [line] = preflight_replication(harness)
    assert line.startswith("the upgrade refuses unless declared ready: publication carrier (")
    before = schema_dump(harness)

    online = harness.cli("upgrade", "head")
    offline = run_psql(harness, offline_script("upgrade", "head"))

    [failed] = failed_lines(online)
    assert failed.removeprefix("FAILED: ") == line.split("declared ready: ", 1)[1]
    assert "supabase_realtime" not in failed and "-x subscribers_ready=carrier" in failed
    assert offline.returncode != 0 and "-x subscribers_ready=carrier" in offline.stderr
    assert schema_dump(harness) == before and harness.version() == BASELINE
    succeed(harness.cli("upgrade", "head", env={"MIGRATION_SUBSCRIBERS_READY": "carrier"}))
    assert harness.version() == HEAD


def test_the_offline_script_refuses_at_its_top_until_declared(harness):
    """A fresh database: the script's first statement refuses, before its preamble creates the
    private schema; generated with the declaration, the same script runs."""
    harness.build_state("drifted")
    harness.admin("CREATE PUBLICATION carrier FOR ALL TABLES")
    before = schema_dump(harness)

    refused = run_psql(harness, offline_script("upgrade", "head"))

    assert refused.returncode != 0
    assert "publication carrier (FOR ALL TABLES) would carry" in refused.stderr
    assert "`python -m app.subscriber_ddl`" in refused.stderr
    assert schema_dump(harness) == before and harness.scalar(PRIVATE_SCHEMA_EXISTS) == 0
    apply_script(harness, offline_script("-x", "subscribers_ready=all", "upgrade", "head"))
    assert harness.version() == HEAD
