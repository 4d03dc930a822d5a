"""Every driver SQLAlchemy speaks to PostgreSQL with behaves the same: psycopg 3
(`postgresql+psycopg://`), asyncpg and psycopg's async mode (run through `run_sync`, as
Alembic's async env.py template runs them), each against the real server.

psycopg2 is what the rest of the suite runs on (this repository's requirements.txt installs
it); each test here is the psycopg2 test it names, run with DATABASE_URL naming another driver:

- a drifted table upgraded online: the index built CONCURRENTLY (the server says so while it
  builds), an insert passing while it builds, build progress naming whom the build waits for,
  the promotion retried under its lock timeout naming the holder, the downgrade exact
  (test_online_safety);
- behind a transaction-mode PgBouncer: refused in one line, nothing changed, nothing left on the
  pooled server connections (test_hardened);
- a wrong password, a closed port, an unknown database: one FAILED: line, no password
  (test_bad_input).

The attacker's schema on the role's search_path, where the driver's own connect-time queries
must not run its code either, is tested for every driver in test_hardened.
"""

import time

import pytest

from app.names import CANONICAL_UNIQUE_NAME
from devtools.pgbouncer import DEFAULT_POOL_SIZE
from devtools.throwaway_postgres import free_port
from tests.hardened_support import (
    DEFAULT_SESSION,
    advisory_locks,
    database_state,
    pooled_sessions_state,
    private_schema_exists,
    server_connections_of,
    version_tables,
)
from tests.online_support import (
    APPLICATION_NAME,
    SURVIVORS,
    Session,
    assert_canonical,
    build_phase,
    holding,
    libpq_dsn,
    migrator_waiting_on_lock,
    start_alembic,
    wait_until,
)
from tests.support import BASELINE, MIGRATOR, OTHER_DRIVERS, failed_lines, succeed, through
from tests.test_bad_input import SECRET, assert_failed_cleanly
from tests.test_preflight import preflight


@pytest.fixture(params=OTHER_DRIVERS)
def driver(request) -> str:
    return request.param


def build_command(harness) -> list[str]:
    """What pg_stat_progress_create_index says the migrator's build is."""
    return [
        row[0]
        for row in harness.rows(
            "SELECT p.command FROM pg_stat_progress_create_index p"
            " JOIN pg_stat_activity a ON a.pid = p.pid WHERE a.application_name = :name",
            name=APPLICATION_NAME,
        )
    ]


def insert_new_key(harness, key: str) -> str:
    """An app's insert of a key nobody has, bounded so that a stalled write fails the test."""
    app = Session(libpq_dsn(harness.url), options="-c statement_timeout=20s")
    try:
        return app.run(
            "INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id)"
            " SELECT id, %s FROM public.workspaces ORDER BY id LIMIT 1 RETURNING id::text",
            key,
        )[0][0]
    finally:
        app.close()


@pytest.mark.any_major  # what differs between drivers, not between servers
def test_drifted_upgrade_is_online_and_the_downgrade_exact(harness, driver):
    """While an old snapshot holds the concurrent build and a reader holds the table, the
    upgrade through `driver` builds CONCURRENTLY (an insert passes meanwhile), reports the
    build's progress naming the snapshot's backend, retries the promotion naming the reader,
    and converges; the downgrade gives back every row and the schema exactly."""
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    rows_before, schema_before = harness.table_rows(), harness.schema_dump()
    survivors = {row[0] for row in harness.rows(SURVIVORS)}
    url = through(harness.url, driver)
    snapshot = holding(
        harness,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SELECT count(*) FROM public.meta_assets_cache",
    )
    reader = holding(harness, "LOCK TABLE public.meta_assets_cache IN ACCESS SHARE MODE")
    snapshot_pid, reader_pid = snapshot.pid(), reader.pid()
    running = start_alembic(
        "-x", "progress_interval=0.2", "-x", "lock_timeout=200ms", "-x", "lock_retries=1000",
        "-x", "lock_retry_wait=50ms", "-x", "lock_retry_max_wait=50ms",
        "upgrade", "head",
        env={"DATABASE_URL": url},
    )  # fmt: skip
    try:
        wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots"),
            migrator=running,
        )
        commands = build_command(harness)
        during_build = insert_new_key(harness, "pn-during-build")
        time.sleep(0.6)  # a few progress intervals: the report is periodic by design
        snapshot.rollback()
        wait_until(
            "the promotion to queue for its lock",
            lambda: migrator_waiting_on_lock(harness, "ALTER TABLE%"),
            migrator=running,
        )
        # Queued behind the promotion's lock request until that attempt gives up.
        during_retries = insert_new_key(harness, "pn-during-retries")
        wait_until(
            "the promotion to try again",
            lambda: migrator_waiting_on_lock(harness, "ALTER TABLE%"),
            migrator=running,
        )
    finally:
        for held in (snapshot, reader):
            held.rollback()
            held.close()
    result = running.wait()

    succeed(result)
    assert commands == ["CREATE INDEX CONCURRENTLY"]
    assert [
        line
        for line in result.stderr.splitlines()
        if f"building {CANONICAL_UNIQUE_NAME}: waiting for old snapshots" in line
        and f"waiting for pid {snapshot_pid} (idle in transaction for " in line
    ]
    assert f"is busy (lock not granted within 200 ms; held by pid {reader_pid} (" in result.stderr
    new_rows = {row_id: harness.table_rows()[row_id] for row_id in (during_build, during_retries)}
    assert_canonical(harness, {**rows_before, **new_rows}, survivors | set(new_rows))

    succeed(harness.cli("downgrade", "-1", env={"DATABASE_URL": url}))
    assert harness.version() == BASELINE
    assert harness.table_rows() == {**rows_before, **new_rows}
    assert harness.schema_dump() == schema_before


# What differs between drivers, not between servers: each runs on one major.
@pytest.mark.any_major
@pytest.mark.parametrize("driver", ("psycopg2", *OTHER_DRIVERS))
def test_transaction_pooler_is_refused_and_leaves_nothing_behind(
    harness, driver, pgbouncer_transaction
):
    """Through PgBouncer in transaction mode (Supabase's port 6543), `upgrade head` and
    preflight refuse in one line pointing to the direct connection or the session pooler, port
    5432; nothing in the database changed; and the pooled server connections the probe used,
    handed to other clients, carry PostgreSQL's defaults, no advisory lock and no prepared
    statement (asyncpg prepares every statement it sends through SQLAlchemy)."""
    harness.build_state("drifted")
    before = database_state(harness)
    pooled = pgbouncer_transaction.url_string(harness.dbname, MIGRATOR, harness.server.password)
    url = through(pooled, driver)
    direct = server_connections_of(harness, MIGRATOR)

    result = harness.cli("upgrade", "head", env={"DATABASE_URL": url})
    used_by_the_probe = server_connections_of(harness, MIGRATOR) - direct
    report = preflight("--json", url=url)

    assert_failed_cleanly(
        result,
        "transaction-mode connection pooler",
        "direct connection or the session pooler",
        "5432",
        secrets=(harness.server.password,),
    )
    assert (report.returncode, report.stdout) == (1, "")
    assert report.stderr.strip() == failed_lines(result)[0], report.stderr
    assert database_state(harness) == before
    assert not private_schema_exists(harness)
    assert version_tables(harness) == []
    assert advisory_locks(harness) == []
    states, backends = pooled_sessions_state(pooled, DEFAULT_POOL_SIZE)
    assert used_by_the_probe and used_by_the_probe <= backends
    assert states == [{**DEFAULT_SESSION, "advisory locks held": 0}] * DEFAULT_POOL_SIZE
    assert prepared_statements_on(pooled, DEFAULT_POOL_SIZE) == [0] * DEFAULT_POOL_SIZE


def prepared_statements_on(url: str, clients: int) -> list[int]:
    """How many statements are prepared on each of `clients` pooled server connections (each
    client inside a transaction holds one of its own)."""
    sessions = [Session(libpq_dsn(url), autocommit=False) for _ in range(clients)]
    try:
        return [each.run("SELECT count(*) FROM pg_prepared_statements")[0][0] for each in sessions]
    finally:
        for each in sessions:
            each.rollback()
            each.close()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (lambda h: {"password": SECRET}, "password authentication failed"),
        (lambda h: {"port": free_port(), "password": SECRET}, "database error: "),
        (lambda h: {"database": "no_such_database"}, 'database "no_such_database"'),
    ],
    ids=["wrong-password", "closed-port", "unknown-database"],
)
def test_a_connection_failure_is_one_line_without_the_password(harness, driver, changes, expected):
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    before = database_state(harness)
    url = through(harness.url, driver, **changes(harness))

    result = harness.cli("upgrade", "head", env={"DATABASE_URL": url})

    assert_failed_cleanly(result, expected, secrets=(SECRET, harness.server.password))
    assert database_state(harness) == before
