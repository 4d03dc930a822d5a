"""The operation on a table of another shape, through the invariants meta_assets_cache is held
to, driven by a small Alembic project of its own (tests/projects/inventory) run as a user runs
it: `python -m alembic ...` in a child process, DATABASE_URL pointing at the test's database.

inventory.stock_counts is not public.meta_assets_cache: another schema, a bigint
`GENERATED ALWAYS AS IDENTITY` primary key, a three-column key of an integer, a text and a
column with a quoted name ("Batch Code"), a generated column, array and numeric columns, and
another order for the row kept (keep_newest_by=("revision", "recorded_at"), NULL oldest, then
id). Its revision 0002 calls op.ensure_unique_constraint / op.undo_unique_constraint with the
private schema `inventory_private`, where its env.py also keeps the version table.
"""

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from psycopg2.errors import UniqueViolation
from psycopg2.extras import execute_values

from alembic_lossless_unique.operations import convergence
from alembic_lossless_unique.operations.ops import target_from_arguments
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.settings import MigrationSettings
from tests.offline_support import apply_script
from tests.online_support import (
    Migrator,
    Session,
    build_phase,
    crash_migrator,
    holding,
    libpq_dsn,
    migrator_waiting_on_lock,
    start_alembic,
    wait_until,
)
from tests.support import AlembicResult, MigrationHarness, failed_lines, run_child

TEMPLATE = Path(__file__).resolve().parent / "projects" / "inventory"
UNIQUE_REVISION = TEMPLATE / "migrations" / "versions" / "0002_stock_counts_unique.py"
# The env.py of the inventory project names its sessions so; the crash tests find them by it.
APPLICATION_NAME = "alembic inventory"
TABLE = "inventory.stock_counts"
VERSION_TABLE = "inventory_private.alembic_version"
KEY = ("warehouse_id", "sku", "Batch Code")
# Every column of the table, in its order; the archive holds them too, plus its bookkeeping.
COLUMNS = (
    "id",
    "warehouse_id",
    "sku",
    "Batch Code",
    "quantity",
    "unit_cost",
    "total_value",
    "revision",
    "recorded_at",
    "tags",
    "note",
)
INSERTED = tuple(c for c in COLUMNS if c not in ("id", "total_value"))
ROW_TEXT = "ROW(" + ", ".join(f'"{c}"' for c in COLUMNS) + ")::text"


def load_unique_count() -> dict:
    """The arguments revision 0002 passes to ensure_unique_constraint: one source of truth."""
    spec = importlib.util.spec_from_file_location("inventory_unique_revision", UNIQUE_REVISION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNIQUE_COUNT


UNIQUE_COUNT = load_unique_count()
TARGET = target_from_arguments(**UNIQUE_COUNT)
CONSTRAINT = TARGET.constraint_name


# The project, run as a user runs it.


@dataclass
class InventoryProject:
    directory: Path
    harness: MigrationHarness

    def environment(self, *, database: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        if database:
            env["DATABASE_URL"] = self.harness.url
        return env

    def alembic(self, *args: str, database: bool = True) -> AlembicResult:
        return run_child(
            [sys.executable, "-m", "alembic", *args],
            cwd=self.directory,
            env=self.environment(database=database),
            timeout=120,
        )

    def succeed(self, *args: str) -> AlembicResult:
        result = self.alembic(*args)
        assert result.returncode == 0, result.output
        return result

    def start(self, *args: str) -> Migrator:
        return start_alembic(*args, env=self.environment(), cwd=self.directory)

    def offline_script(self, *args: str) -> str:
        """`alembic ARGS --sql`, with no DATABASE_URL: offline needs no database."""
        result = self.alembic(*args, "--sql", database=False)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def project(tmp_path, harness) -> InventoryProject:
    directory = tmp_path / "inventory"
    shutil.copytree(TEMPLATE, directory, ignore=shutil.ignore_patterns("__pycache__"))
    return InventoryProject(directory, harness)


# Rows: duplicates, ties, NULLs in the key and in the ordering, awkward values.

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WAREHOUSES = (1, 2, 3)
SKUS = tuple(f"SKU-{n}" for n in range(6))
# Different keys to the unique index: case, spacing and quotes matter.
BATCHES = ("B-1", "b-1", "B 1", "O'Neil")


def generated_rows(seed: int = 20261125) -> list[tuple]:
    """About 190 rows in INSERTED's column order, in a shuffled order (so ids are not sorted by
    key): 1 to 4 rows per key, revision and recorded_at often NULL or tied, and rows with a NULL
    in one key column, up to three alike (they never conflict)."""
    rng = random.Random(seed)
    keys = [(w, s, b) for w in WAREHOUSES for s in SKUS for b in BATCHES]
    rows = []

    def row(warehouse, sku, batch) -> tuple:
        return (
            warehouse,
            sku,
            batch,
            rng.randrange(0, 50),
            rng.choice([None, Decimal("1.25"), Decimal("10.00")]),
            rng.choice([None, 1, 2, 3, 3]),
            rng.choice([None, T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1)]),
            rng.choice([None, [], ["a", "b"], ['x"y', "z,w"]]),
            rng.choice([None, "", "it's", "line\nbreak"]),
        )

    for key in keys:
        rows += [row(*key) for _ in range(rng.choice([1, 1, 2, 3, 4]))]
    for warehouse, sku, batch in rng.sample(keys, 24):
        nulled = rng.randrange(3)
        key = [warehouse, sku, batch]
        key[nulled] = None
        rows += [row(*key) for _ in range(rng.choice([1, 2, 3]))]
    rng.shuffle(rows)
    return rows


def insert_rows(harness: MigrationHarness, rows: list[tuple]) -> None:
    columns = ", ".join(f'"{c}"' for c in INSERTED)
    with harness.engine.connect() as connection, connection.connection.cursor() as cursor:
        execute_values(cursor, f"INSERT INTO {TABLE} ({columns}) VALUES %s", rows)


def keyed(row) -> bool:
    return all(row[c] is not None for c in KEY)


def newest_first(row) -> tuple:
    """The kept row's order, computed here: revision, then recorded_at (NULL oldest), then id."""
    return (
        row["revision"] is not None,
        row["revision"] or 0,
        row["recorded_at"] is not None,
        row["recorded_at"] or T0,
        row["id"],
    )


def ranking_rows(harness: MigrationHarness) -> list[dict]:
    return [
        dict(row._mapping)
        for row in harness.rows(
            f'SELECT id, warehouse_id, sku, "Batch Code", revision, recorded_at FROM {TABLE}'
        )
    ]


def survivors_by_key(rows: list[dict]) -> dict[tuple, int]:
    groups = defaultdict(list)
    for row in rows:
        if keyed(row):
            groups[tuple(row[c] for c in KEY)].append(row)
    return {key: max(group, key=newest_first)["id"] for key, group in groups.items()}


@dataclass
class Stocked:
    """The table at revision 0001 with its rows, and what the upgrade must make of them."""

    rows: dict[int, str]  # every row by id, in PostgreSQL's text form
    survivors: dict[tuple, int]  # per key, the id of the row that must stay
    null_key_ids: set[int]
    schema: str


@pytest.fixture
def stocked(project, harness) -> Stocked:
    project.succeed("upgrade", "0001")
    insert_rows(harness, generated_rows())
    rows = ranking_rows(harness)
    stock = Stocked(
        rows=table_rows(harness),
        survivors=survivors_by_key(rows),
        null_key_ids={row["id"] for row in rows if not keyed(row)},
        schema=harness.schema_dump(),
    )
    assert len(stock.rows) > len(stock.survivors) + len(stock.null_key_ids)  # duplicates exist
    return stock


# What the database holds.


def table_rows(harness: MigrationHarness) -> dict[int, str]:
    return {row[0]: row[1] for row in harness.rows(f"SELECT id, {ROW_TEXT} FROM {TABLE}")}


def archived_rows(harness: MigrationHarness) -> dict[int, tuple[str, int]]:
    """Archived rows by id: the row's text (the table's columns only) and the kept row's id."""
    if not harness.scalar("SELECT to_regclass(:name) IS NOT NULL", name=TARGET.archive):
        return {}
    return {
        row[0]: (row[1], row[2])
        for row in harness.rows(f"SELECT id, {ROW_TEXT}, kept_id FROM {TARGET.archive}")
    }


def uniques_on_the_key(harness: MigrationHarness) -> list[tuple]:
    """Every unique index whose columns are the key's, with its constraint and validity."""
    return [
        tuple(row)
        for row in harness.rows(
            """
            SELECT c.relname::text, con.conname::text, i.indisvalid
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid
                                          AND con.conrelid = i.indrelid
             WHERE i.indrelid = CAST(:table AS regclass) AND i.indisunique
               AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                     WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))
                   = (SELECT array_agg(k ORDER BY k) FROM unnest(CAST(:key AS text[])) AS k)
             ORDER BY 1
            """,
            table=TABLE,
            key=list(KEY),
        )
    ]


def constraint_columns(harness: MigrationHarness) -> list[str]:
    return [
        row[0]
        for row in harness.rows(
            """
            SELECT a.attname::text FROM pg_constraint con,
                   unnest(con.conkey) WITH ORDINALITY AS k(attnum, position)
              JOIN pg_attribute a ON a.attnum = k.attnum
             WHERE con.conname = :name AND con.conrelid = CAST(:table AS regclass)
               AND a.attrelid = con.conrelid
             ORDER BY k.position
            """,
            name=CONSTRAINT,
            table=TABLE,
        )
    ]


def version(harness: MigrationHarness) -> str:
    return harness.scalar(f"SELECT string_agg(version_num, ',') FROM {VERSION_TABLE}")


def ledger_actions(harness: MigrationHarness) -> list[str]:
    if not harness.scalar("SELECT to_regclass(:name) IS NOT NULL", name=TARGET.ledger):
        return []
    return [row[0] for row in harness.rows(f"SELECT action FROM {TARGET.ledger} ORDER BY seq")]


def user_triggers(harness: MigrationHarness) -> list[str]:
    return [
        row[0]
        for row in harness.rows(
            "SELECT tgname::text FROM pg_trigger"
            " WHERE tgrelid = CAST(:table AS regclass) AND NOT tgisinternal",
            table=TABLE,
        )
    ]


def assert_rows_conserved(harness: MigrationHarness, stock: Stocked) -> None:
    """Nothing lost, nothing invented, nothing changed: the table plus the archive hold exactly
    the original rows, each once, byte for byte."""
    in_table, archived = table_rows(harness), archived_rows(harness)
    assert in_table.keys().isdisjoint(archived.keys())
    assert {**in_table, **{i: text for i, (text, _) in archived.items()}} == stock.rows


def assert_converged(harness: MigrationHarness, stock: Stocked) -> None:
    """Exactly one unique on the key, the constraint, over the key's columns in order; the row
    kept of each key is the one the ordering picks; NULL-key rows untouched; every archived row
    names the row kept for its key; no guard, work table or INVALID index left."""
    assert uniques_on_the_key(harness) == [(CONSTRAINT, CONSTRAINT, True)]
    assert constraint_columns(harness) == list(KEY)
    assert harness.invalid_indexes() == []
    assert_rows_conserved(harness, stock)
    in_table = table_rows(harness)
    assert stock.null_key_ids <= in_table.keys()
    kept = {tuple(r[c] for c in KEY): r["id"] for r in ranking_rows(harness) if keyed(r)}
    assert kept == stock.survivors
    archived = archived_rows(harness)
    assert archived, "the generated rows held duplicates: some must have been archived"
    survivor_ids = set(stock.survivors.values())
    assert all(kept_id in survivor_ids for _, kept_id in archived.values())
    assert user_triggers(harness) == []  # the duplicate guard is gone
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=TARGET.work)


def assert_restored(harness: MigrationHarness, stock: Stocked) -> None:
    """Every row back byte for byte, and the schema exactly as before the upgrade."""
    assert table_rows(harness) == stock.rows
    assert harness.schema_dump() == stock.schema


# 1. Online: converges, serves ON CONFLICT, and the downgrade restores exactly.


def test_upgrade_converges_and_downgrade_restores_exactly(project, harness, stocked):
    """On another schema, key and ordering: exactly one unique (the constraint), the newest row
    of each key kept as computed here, NULL-key rows untouched, table + archive = the original
    rows, `alembic check` clean against the project's model, upserts on the key work and plain
    duplicates are rejected; `downgrade -1` gives back every row byte for byte and a pg_dump -s
    identical to before; upgrading again keeps the same rows."""
    project.succeed("upgrade", "head")

    assert version(harness) == "0002"
    assert_converged(harness, stocked)
    assert ledger_actions(harness).count("found") == 1
    checked = project.succeed("check")
    assert "No new upgrade operations detected." in checked.output
    app = Session(libpq_dsn(harness.url), autocommit=False)
    try:
        key = next(iter(stocked.survivors))
        upsert = (
            f'INSERT INTO {TABLE} (warehouse_id, sku, "Batch Code", quantity)'
            ' VALUES (%s, %s, %s, 7) ON CONFLICT (warehouse_id, sku, "Batch Code")'
            " DO UPDATE SET quantity = EXCLUDED.quantity RETURNING id"
        )
        assert app.run(upsert, *key) == [(stocked.survivors[key],)]
        insert = f'INSERT INTO {TABLE} (warehouse_id, sku, "Batch Code") VALUES (%s, %s, %s)'
        app.run(insert, 9, None, "x")
        app.run(insert, 9, None, "x")  # a NULL in the key never conflicts
        with pytest.raises(UniqueViolation, match=CONSTRAINT):
            app.run(insert, *key)
    finally:
        app.rollback()
        app.close()

    project.succeed("downgrade", "-1")

    assert version(harness) == "0001"
    assert_restored(harness, stocked)
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=TARGET.archive)

    project.succeed("upgrade", "head")

    assert_converged(harness, stocked)


# 2. A crash anywhere converges on re-run (SIGKILL of the migrator, its backends ended).


def crash_while_held(project, harness, held: str, waiting_in: str, what: str, *args: str) -> None:
    """`alembic ARGS` in the project, SIGKILLed once it waits, in a statement like
    `waiting_in`, for the row lock `held` (a SELECT ... FOR UPDATE) holds."""
    row_lock = holding(harness, held)
    try:
        running = project.start(*args)
        wait_until(
            what,
            lambda: migrator_waiting_on_lock(harness, waiting_in, APPLICATION_NAME),
            migrator=running,
        )
        crash_migrator(harness, running, APPLICATION_NAME)
    finally:
        row_lock.rollback()
        row_lock.close()


def rerun_converges_and_downgrades_exactly(project, harness, stock: Stocked) -> None:
    project.succeed("upgrade", "head")
    assert_converged(harness, stock)
    assert ledger_actions(harness).count("found") == 1
    project.succeed("downgrade", "-1")
    assert_restored(harness, stock)


def test_crash_during_dedupe_then_rerun_converges(project, harness, stocked):
    """Killed while the dedupe waits for a row the app holds: its transaction rolls back (no row
    archived, no work table, version still 0001), and a re-run converges on the same rows and
    still downgrades exactly."""
    survivor_ids = set(stocked.survivors.values())
    loser = min(
        row["id"] for row in ranking_rows(harness) if keyed(row) and row["id"] not in survivor_ids
    )
    crash_while_held(
        project,
        harness,
        f"SELECT 1 FROM {TABLE} WHERE id = {loser} FOR UPDATE",
        "DO $move$%",
        "the dedupe to wait for the locked row",
        "upgrade",
        "head",
    )

    assert version(harness) == "0001"
    assert archived_rows(harness) == {}
    assert harness.scalar("SELECT to_regclass(:name) IS NULL", name=TARGET.work)
    assert table_rows(harness) == stocked.rows

    rerun_converges_and_downgrades_exactly(project, harness, stocked)


def test_crash_between_batches_then_rerun_converges(project, harness, stocked):
    """One key per batch (-x move_batch_keys=1), killed while the last batch waits for rows the
    app holds: every batch before it stays archived (each is its own transaction, its child
    rows re-pointed), the waiting one rolls back, and a re-run moves the rest, converges on the
    same rows and still downgrades exactly."""
    last_key = harness.rows(
        f'SELECT warehouse_id, sku, "Batch Code" FROM {TABLE}'
        ' WHERE warehouse_id IS NOT NULL AND sku IS NOT NULL AND "Batch Code" IS NOT NULL'
        " GROUP BY 1, 2, 3 HAVING count(*) > 1 ORDER BY 1 DESC, 2 DESC, 3 DESC LIMIT 1"
    )[0]
    in_last_key = 'warehouse_id = {} AND sku = {} AND "Batch Code" = {}'.format(
        *(harness.scalar("SELECT quote_literal(:v)", v=str(value)) for value in last_key)
    )
    crash_while_held(
        project,
        harness,
        f"SELECT 1 FROM {TABLE} WHERE {in_last_key} FOR UPDATE",
        "DO $move$%",
        "the last batch to wait for the locked rows",
        *("-x", "move_batch_keys=1", "upgrade", "head"),
    )

    assert version(harness) == "0001"
    archived = archived_rows(harness)
    assert archived, "the batches before the last one stay archived"
    assert harness.count(TABLE, in_last_key) > 1, "the last batch rolled back"
    assert harness.count(TARGET.ledger, "action = 'archived'") == len(
        {kept for _, kept in archived.values()}
    ), "a ledger record per batch moved: one key each"
    assert_rows_conserved(harness, stocked)

    rerun_converges_and_downgrades_exactly(project, harness, stocked)


def test_a_large_archive_comes_back_in_batches_and_a_stopped_rollback_finishes_on_rerun(
    project, harness, stocked
):
    """More archived rows than restore_batch_rows: the constraint goes first, then the rows
    come back a batch per transaction. Killed while a later batch waits for an archived row
    someone holds, the batches before it stay restored and the revision stays; an upgrade then
    refuses in one line, changing nothing; running the rollback again finishes it, every row
    byte for byte and the schema as before."""
    project.succeed("upgrade", "head")
    archived = archived_rows(harness)
    assert len(archived) > 4
    # A row half way through the archive: batches take its rows in their order on disk.
    halfway = harness.scalar(
        f"SELECT id FROM {TARGET.archive} ORDER BY ctid OFFSET {len(archived) // 2} LIMIT 1"
    )
    crash_while_held(
        project,
        harness,
        f"SELECT 1 FROM {TARGET.archive} WHERE id = {halfway} FOR UPDATE",
        "WITH batch AS%",
        "a later batch to wait for the held archived row",
        *("-x", "restore_batch_rows=2", "downgrade", "-1"),
    )

    assert version(harness) == "0002"
    assert uniques_on_the_key(harness) == []
    assert 0 < len(archived_rows(harness)) < len(archived)
    assert_rows_conserved(harness, stocked)
    # An upgrade would find revision 0002 applied and leave the table without its unique.
    half_way = table_rows(harness), archived_rows(harness)
    refused = project.alembic("upgrade", "head")
    assert refused.returncode != 0
    [line] = failed_lines(refused)
    assert f"a rollback of unique constraint {CONSTRAINT} on {TABLE}" in line
    assert "stopped midway" in line and "run the same `alembic downgrade` again" in line
    assert (table_rows(harness), archived_rows(harness)) == half_way

    finished = project.succeed("-x", "restore_batch_rows=2", "downgrade", "-1")

    assert "restored batch 1 of" in finished.output
    assert version(harness) == "0001"
    assert_restored(harness, stocked)


def test_crash_during_concurrent_build_then_rerun_converges(project, harness, stocked):
    """Killed while CREATE UNIQUE INDEX CONCURRENTLY waits for an old snapshot: the INVALID
    index it leaves is recognised, dropped and built again by the re-run, which converges and
    still downgrades exactly; no row is archived twice."""
    snapshot = holding(
        harness, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", f"SELECT count(*) FROM {TABLE}"
    )
    try:
        running = project.start("upgrade", "head")
        wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots", APPLICATION_NAME),
            migrator=running,
        )
        crash_migrator(harness, running, APPLICATION_NAME)
    finally:
        snapshot.rollback()
        snapshot.close()

    assert harness.invalid_indexes() == [CONSTRAINT]
    assert_rows_conserved(harness, stocked)

    rerun_converges_and_downgrades_exactly(project, harness, stocked)


# 3. Offline: the --sql scripts, run with psql, make the same decisions.


def test_offline_upgrade_and_downgrade_converge_and_restore(project, harness, stocked):
    """`alembic upgrade 0001:head --sql` applied with psql converges exactly as the online path
    does (same kept rows, same archive), and `alembic downgrade head:0001 --sql` applied with
    psql gives back every row byte for byte and a pg_dump -s identical to before."""
    upgrade = project.offline_script("upgrade", "0001:head")
    downgrade = project.offline_script("downgrade", "head:0001")

    apply_script(harness, upgrade)

    assert version(harness) == "0002"
    assert_converged(harness, stocked)

    apply_script(harness, downgrade)

    assert version(harness) == "0001"
    assert_restored(harness, stocked)


# A key of an extension's type, the way Supabase installs extensions: in a schema of their own.

EMAILS = """
CREATE SCHEMA extensions;
CREATE EXTENSION citext SCHEMA extensions;
CREATE TABLE public.emails (id bigint PRIMARY KEY, address extensions.citext, seen int NOT NULL);
INSERT INTO public.emails VALUES
    (1, 'ada@example.org', 1), (2, 'ADA@Example.org', 2), (3, 'bob@example.org', 1),
    (4, NULL, 1), (5, NULL, 1);
"""
EMAILS_ADDRESS = {
    "constraint_name": "emails_address_key",
    "table_name": "emails",
    "columns": ["address"],
    "keep_newest_by": ["seen"],
    "private_schema": "emails_private",
}


@pytest.fixture
def emails(harness):
    available = harness.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'")
    if not available:
        pytest.skip("this PostgreSQL build has no citext extension")
    harness.execute(EMAILS)
    return harness


def test_a_key_of_an_extension_type_is_compared_as_its_unique_index_compares_it(emails):
    """citext, from a schema that is on no search_path: to its unique index 'ada@' and 'ADA@'
    are one key. The dedupe compares with the type's own equality operator (found through its
    default btree operator class), not with text's, which a cast would have picked: the newest
    of the two stays, the other is archived, and the constraint builds the first time."""
    harness = emails
    preflight = subprocess.run(
        [
            sys.executable, "-m", "alembic_lossless_unique.preflight", "--json",
            "--table", "emails", "--columns", "address", "--keep-newest-by", "seen",
            "--constraint", "emails_address_key", "--private-schema", "emails_private",
        ],
        env={**os.environ, "DATABASE_URL": harness.url},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert preflight.returncode == 0, preflight.stderr
    report = json.loads(preflight.stdout)
    assert (report["state"], report["rows_to_archive"], report["null_key_rows"]) == (
        "drifted",
        1,
        2,
    )

    with harness.engine.connect() as connection:
        db = Database(connection, MigrationSettings())
        convergence.ensure_unique_constraint(db, target_from_arguments(**EMAILS_ADDRESS))

    assert harness.rows("SELECT id FROM public.emails ORDER BY id") == [(2,), (3,), (4,), (5,)]
    assert harness.rows("SELECT id, kept_id FROM emails_private.emails_address_key_archive") == [
        (1, 2)
    ]
    assert (
        harness.scalar(
            "SELECT count(*) FROM pg_constraint"
            " WHERE conname = 'emails_address_key' AND contype = 'u'"
        )
        == 1
    )


def test_a_publication_carrying_the_version_tables_schema_is_named_before_it_is_written(
    project, harness
):
    """A publication FOR ALL TABLES would carry the project's own version table
    (inventory_private.alembic_version) to its subscribers: the run refuses before the version
    table is created, naming the DDL command for it; declared ready, it runs."""
    harness.admin("CREATE PUBLICATION carrier FOR ALL TABLES")

    refused = project.alembic("upgrade", "head")

    assert refused.returncode != 0
    [line] = failed_lines(refused)
    assert "publication carrier (FOR ALL TABLES)" in line
    assert "--version-table inventory_private.alembic_version" in line
    assert not harness.scalar("SELECT to_regclass(:table) IS NOT NULL", table=VERSION_TABLE)
    project.succeed("-x", "subscribers_ready=carrier", "upgrade", "head")
    assert harness.scalar("SELECT to_regclass(:table) IS NOT NULL", table=VERSION_TABLE)
