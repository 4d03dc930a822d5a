"""Partitioned tables: op.ensure_unique_constraint / op.undo_unique_constraint, online, on hash,
list and range partitioning, sub-partitioned, with DEFAULT partitions.

Each ends as `ALTER TABLE parent ADD CONSTRAINT name UNIQUE (...)` ends on a twin of the table
(every constraint and index definition, and which index is attached to which, compared), with
writers inserting into the partitioned table throughout (no error but the expected
unique_violation, the worst insert wait reported), and a downgrade that gives back pg_dump -s
and every row, each archived row in its partition.
"""

import json
import threading
import time
from contextlib import contextmanager

import psycopg2
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from alembic_lossless_unique.ddl import dedupe
from alembic_lossless_unique.ddl.sqltext import literal
from alembic_lossless_unique.operations.ops import (
    target_from_arguments,
    target_from_index_arguments,
)
from alembic_lossless_unique.runtime.errors import MigrationAbort
from tests.offline_support import offline_script, run_psql
from tests.online_support import (
    Session,
    converge,
    libpq_dsn,
    migrating_while_held,
    undo_with_the_revision,
)
from tests.test_preflight import library_preflight

# PostgreSQL 18 changed how the non-ONLY form locks, which this path avoids: proved there too.
pytestmark = pytest.mark.pg18

PRIVATE = "events_private"
NAME = "ev_workspace_phone_key"
ARGUMENTS = {
    "constraint_name": NAME,
    "table_name": "ev",
    "columns": ["workspace_id", "phone_number_id"],
    "keep_newest_by": ["updated_at"],
    "row_identity": ["id", "workspace_id"],
    "private_schema": PRIVATE,
}

# Hash-partitioned four ways on the tenant, as the app's table would be: duplicates in some
# partitions, one partition with a hand-made unique index (promoted), one with its own unique
# constraint (adopted as it is), one with an INVALID index left by a failed build.
HASH = """
CREATE TABLE public.ev (id bigint NOT NULL, workspace_id int NOT NULL, phone_number_id text,
                        updated_at int NOT NULL, PRIMARY KEY (id, workspace_id))
    PARTITION BY HASH (workspace_id);
CREATE TABLE public.ev_p0 PARTITION OF public.ev FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE public.ev_p1 PARTITION OF public.ev FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE public.ev_p2 PARTITION OF public.ev FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE public.ev_p3 PARTITION OF public.ev FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO public.ev
SELECT g, g % 40, 'phone-' || (g % 31), g FROM generate_series(1, 2000) AS g;
"""
# Which workspaces land in which partition is the hash's business: the hand-made fixes go on
# partitions found to have no duplicates after the dedupe-free part of the setup.
HAND_MADE = """
DELETE FROM public.ev_p1 a USING public.ev_p1 b
 WHERE a.workspace_id = b.workspace_id AND a.phone_number_id = b.phone_number_id AND a.id < b.id;
CREATE UNIQUE INDEX ev_p1_hand_fix ON public.ev_p1 (workspace_id, phone_number_id);
DELETE FROM public.ev_p2 a USING public.ev_p2 b
 WHERE a.workspace_id = b.workspace_id AND a.phone_number_id = b.phone_number_id AND a.id < b.id;
ALTER TABLE public.ev_p2 ADD CONSTRAINT ev_p2_fixed UNIQUE (workspace_id, phone_number_id);
"""


def ensure(harness, arguments: dict = ARGUMENTS, form=target_from_arguments) -> None:
    """The upgrade's operation; `form` makes its target (the index form's: its own)."""
    converge(harness, form(**arguments))


def undo(harness, arguments: dict = ARGUMENTS, form=target_from_arguments) -> None:
    undo_with_the_revision(harness, form(**arguments))


def rows(harness, table: str = "public.ev") -> dict[tuple, str]:
    """Every row, by identity, with the partition that holds it."""
    return {
        (r.id, r.workspace_id): f"{r.partition} {r.body}"
        for r in harness.rows(
            f"SELECT t.id, t.workspace_id, t.tableoid::regclass::text AS partition,"
            f" t::text AS body FROM {table} t"
        )
    }


def unique_names(harness, table: str) -> list[tuple]:
    """(table, unique index) of every table of `table`'s tree: the names PostgreSQL chose."""
    return harness.rows(
        "SELECT c.relname::text, ic.relname::text FROM pg_partition_tree(CAST(:t AS regclass)) t"
        " JOIN pg_class c ON c.oid = t.relid JOIN pg_index i ON i.indrelid = c.oid"
        " JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indisunique AND NOT i.indisprimary"
        " ORDER BY 1, 2",
        t=table,
    )


def uniques(harness, table: str) -> list[tuple]:
    """Every unique of every table of `table`'s tree, its names left out where PostgreSQL
    chose them: (table, constraint definition, index definition from USING on, the index it is
    attached to, valid)."""
    return harness.rows(
        """
SELECT c.relname::text, pg_get_constraintdef(con.oid), substr(pg_get_indexdef(i.indexrelid),
       strpos(pg_get_indexdef(i.indexrelid), ' USING ')),
       (SELECT p.relname::text FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent
         WHERE h.inhrelid = i.indexrelid) AS attached_to, i.indisvalid
  FROM pg_partition_tree(CAST(:t AS regclass)) t
  JOIN pg_class c ON c.oid = t.relid
  JOIN pg_index i ON i.indrelid = c.oid AND i.indisunique
  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype = 'u'
 WHERE NOT i.indisprimary
 ORDER BY 1, 2, 3""",
        t=table,
    )


def twin_uniques(
    harness, setup: str, columns: str = "workspace_id, phone_number_id", names: bool = False
) -> list:
    """What ALTER TABLE parent ADD CONSTRAINT makes, on a twin of the setup (its rows without
    duplicates) in its own schema; with `names`, the names PostgreSQL gives them."""
    harness.execute(f"CREATE SCHEMA twin; {setup.split('INSERT')[0].replace('public.', 'twin.')}")
    harness.execute(f"ALTER TABLE twin.ev ADD CONSTRAINT {NAME} UNIQUE ({columns})")
    made = (unique_names if names else uniques)(harness, "twin.ev")
    harness.execute("DROP SCHEMA twin CASCADE")
    return made


def autogenerate_differences(harness) -> list:
    """What `alembic check` would find between the table and its model, which declares the
    constraint as SQLAlchemy does."""
    model = sa.MetaData()
    sa.Table(
        "ev",
        model,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("workspace_id", sa.Integer, primary_key=True),
        sa.Column("phone_number_id", sa.Text),
        sa.Column("updated_at", sa.Integer, nullable=False),
        sa.UniqueConstraint("workspace_id", "phone_number_id", name=NAME),
        schema="public",
    )
    with harness.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"include_name": lambda name, kind, _: kind != "table" or name == "ev"},
        )
        return compare_metadata(context, model)


class Writer:
    """The app: inserts into the partitioned table as fast as it can, each insert timed; one of
    every `duplicate_every` repeats a key that exists: a unique_violation on the key (the
    guard's, or a unique's: a partition's own names itself) is its only expected error."""

    def __init__(self, harness, first_id: int, duplicate_every: int = 10) -> None:
        self.session = Session(libpq_dsn(harness.url))
        self.next_id, self.duplicate_every = first_id, duplicate_every
        self.worst, self.inserted, self.rejected = 0.0, 0, 0
        self.unexpected: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.next_id += 1
            n = self.next_id
            phone = "phone-1" if n % self.duplicate_every == 0 else f"new-{n}"
            started = time.monotonic()
            try:
                self.session.run(
                    "INSERT INTO public.ev VALUES (%s, %s, %s, %s)", n, n % 40, phone, n
                )
                self.inserted += 1
            except psycopg2.errors.UniqueViolation as error:
                if "Key (workspace_id, phone_number_id)=" not in str(error.diag.message_detail):
                    self.unexpected.append(error)
                self.rejected += 1
            except BaseException as error:
                self.unexpected.append(error)
                return
            finally:
                self.worst = max(self.worst, time.monotonic() - started)

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.session.close()


def test_hash_partitions_every_starting_state_with_writers(harness, capsys):
    harness.execute(HASH + HAND_MADE)
    # An INVALID leftover of a concurrent build that met a duplicate, on one partition:
    # dropped and built again.
    with pytest.raises(Exception, match="could not create unique index"):
        harness.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY ev_p3_leftover"
            " ON public.ev_p3 (workspace_id, phone_number_id)"
        )
    # Every partition ends with exactly one unique on the key, attached: a hand-made one
    # adopted, not doubled (where ADD CONSTRAINT would build a second beside an index).
    expected = twin_uniques(harness, HASH)
    schema_before, rows_before = harness.schema_dump(), rows(harness)
    assert autogenerate_differences(harness)  # the model's constraint, not there yet

    with Writer(harness, first_id=10_000) as writer:
        time.sleep(0.2)
        ensure(harness)
        time.sleep(0.2)
    assert not writer.unexpected, writer.unexpected
    assert writer.inserted and writer.rejected
    with capsys.disabled():
        print(f"\n  worst insert wait during the upgrade: {writer.worst * 1000:.0f} ms")

    assert uniques(harness, "public.ev") == expected
    assert not autogenerate_differences(harness)
    # ON CONFLICT on the partitioned table's key works.
    harness.execute(
        "INSERT INTO public.ev VALUES (1, 1, 'phone-1', 0)"
        " ON CONFLICT (workspace_id, phone_number_id) DO UPDATE SET updated_at = -1"
    )
    after = rows(harness)
    archived = harness.scalar(f"SELECT count(*) FROM {PRIVATE}.{NAME}_archive")
    assert archived > 0
    assert (
        harness.scalar(
            "SELECT count(*) FROM (SELECT 1 FROM public.ev GROUP BY workspace_id, phone_number_id"
            " HAVING count(*) > 1) d"
        )
        == 0
    )
    del after

    harness.execute("UPDATE public.ev SET updated_at = id WHERE updated_at = -1")
    undo(harness)
    assert harness.schema_dump() == schema_before
    # The writer's rows, some archived as duplicates before the guard was on, now back too.
    restored = rows(harness)
    assert {k: v for k, v in restored.items() if k[0] < 10_000} == rows_before
    assert len(restored) - len(rows_before) == writer.inserted


# Sub-partitioned: LIST by region, its partitions RANGE by workspace, DEFAULT partitions at
# both levels; the key holds both levels' partition columns.
LEVELS = """
CREATE TABLE public.ev (id bigint NOT NULL, region text NOT NULL, workspace_id int NOT NULL,
                        phone_number_id text, updated_at int NOT NULL,
                        PRIMARY KEY (id, region, workspace_id))
    PARTITION BY LIST (region);
CREATE TABLE public.ev_eu PARTITION OF public.ev FOR VALUES IN ('eu')
    PARTITION BY RANGE (workspace_id);
CREATE TABLE public.ev_eu_low PARTITION OF public.ev_eu FOR VALUES FROM (0) TO (20);
CREATE TABLE public.ev_eu_rest PARTITION OF public.ev_eu DEFAULT;
CREATE TABLE public.ev_us PARTITION OF public.ev FOR VALUES IN ('us');
CREATE TABLE public.ev_other PARTITION OF public.ev DEFAULT;
INSERT INTO public.ev
SELECT g, (ARRAY['eu', 'us', 'ap'])[g % 3 + 1], g % 40, 'phone-' || (g % 7), g
  FROM generate_series(1, 1500) AS g;
"""
LEVELS_ARGUMENTS = {
    **ARGUMENTS,
    "columns": ["region", "workspace_id", "phone_number_id"],
    "row_identity": ["id", "region", "workspace_id"],
}


def test_sub_partitioned_list_and_range_with_default_partitions(harness):
    harness.execute(LEVELS)
    expected = twin_uniques(harness, LEVELS, columns="region, workspace_id, phone_number_id")
    schema_before, rows_before = harness.schema_dump(), rows(harness)

    ensure(harness, LEVELS_ARGUMENTS)

    assert uniques(harness, "public.ev") == expected
    assert unique_names(harness, "public.ev") == twin_uniques(
        harness, LEVELS, columns="region, workspace_id, phone_number_id", names=True
    )
    # One row of each key stays, in its partition; every other is in the archive.
    assert harness.count("public.ev") == harness.scalar(
        "SELECT count(DISTINCT (region, workspace_id, phone_number_id)) FROM public.ev"
    )
    assert harness.count(f"{PRIVATE}.{NAME}_archive") == 1500 - harness.count("public.ev") > 0
    ensure(harness, LEVELS_ARGUMENTS)  # converged: nothing to do
    undo(harness, LEVELS_ARGUMENTS)
    assert harness.schema_dump() == schema_before
    assert rows(harness) == rows_before


@contextmanager
def upgrade_waiting_on(harness, arguments: dict, partition: str):
    """The upgrade in a thread, waiting in `partition`'s move on the app's lock of one of its
    duplicate rows: the partitioned tables' constraints and the guard are on by then.
    Yields the holder's session and the list that gets the thread's failure, if any."""
    # Locked in the partition itself: the partitioned table's own locks are left to DDL.
    lock = f"SELECT 1 FROM {partition} WHERE {a_duplicate_in(harness, partition)} FOR UPDATE"
    with migrating_while_held(
        harness, lock, lambda: ensure(harness, arguments), waiting_in="DO $move$%"
    ) as held:
        yield held


def a_duplicate_in(harness, partition: str) -> str:
    """A WHERE for one row of `partition` that repeats another's key."""
    row = harness.rows(
        f"SELECT id, workspace_id FROM {partition} a WHERE EXISTS (SELECT 1 FROM {partition} b"
        " WHERE (b.workspace_id, b.phone_number_id) = (a.workspace_id, a.phone_number_id)"
        " AND b.id <> a.id) ORDER BY id LIMIT 1"
    )[0]
    return f"id = {row.id} AND workspace_id = {row.workspace_id}"


@pytest.mark.parametrize("crash", [False, True], ids=["run", "crash-then-re-run"])
def test_a_partition_created_during_the_upgrade_ends_covered(harness, crash):
    """While the upgrade waits on a row the app holds, the app creates a partition, which
    copies the partitioned table's invalid index, and writes to it: it ends covered, by this
    run or (its session killed there) by the re-run; and its unique, PostgreSQL's copy of the
    upgrade's, goes with the downgrade, which is not what becomes of a partition's own."""
    harness.execute(
        HASH + "ALTER TABLE public.ev DETACH PARTITION public.ev_p3;DROP TABLE public.ev_p3;"
    )
    with upgrade_waiting_on(harness, ARGUMENTS, "public.ev_p0") as (holder, failure):
        app = Session(libpq_dsn(harness.url))
        app.run(
            "CREATE TABLE public.ev_p3 PARTITION OF public.ev"
            " FOR VALUES WITH (MODULUS 4, REMAINDER 3)"
        )
        app.run(
            "INSERT INTO public.ev SELECT 100000 + g, g, 'late', 1 FROM generate_series(1, 40) g"
            " WHERE NOT EXISTS (SELECT 1 FROM public.ev WHERE workspace_id = g"
            " AND phone_number_id = 'late')"
        )
        app.close()
        if crash:
            kill_the_migrator_waiting_on(harness, holder)
    if crash:
        assert failure
        ensure(harness)
    else:
        assert not failure, failure
    assert harness.count("public.ev_p3") > 0
    assert uniques(harness, "public.ev") == twin_uniques(harness, HASH)
    undo(harness)
    assert not unique_names(harness, "public.ev")  # no unique of the upgrade's left anywhere


def kill_the_migrator_waiting_on(harness, holder: Session) -> None:
    harness.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE {holder.pid()} = ANY (pg_blocking_pids(pid))"
    )


def test_a_crashed_run_is_finished_by_a_re_run(harness):
    """The migrator's session is killed while a partition's move waits on the app (the
    partitioned tables' constraints, the guard and earlier partitions done, the partitioned
    table's index invalid); the re-run finishes; the downgrade is exact."""
    harness.execute(HASH + HAND_MADE)
    schema_before, rows_before = harness.schema_dump(), rows(harness)
    with upgrade_waiting_on(harness, ARGUMENTS, "public.ev_p3") as (
        holder,
        failure,
    ):
        kill_the_migrator_waiting_on(harness, holder)
    assert failure
    assert harness.scalar(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = CAST(:i AS regclass)",
        i=f"public.{NAME}",
    )
    ensure(harness)
    assert uniques(harness, "public.ev") == twin_uniques(harness, HASH)
    undo(harness)
    assert harness.schema_dump() == schema_before
    assert rows(harness) == rows_before


# Neither an expression partition key nor a foreign-table partition allows any unique.
WITHOUT_KEYS = HASH.replace(", PRIMARY KEY (id, workspace_id)", "")


@pytest.mark.parametrize(
    "setup, arguments, refusal",
    [
        (HASH, {"columns": ["phone_number_id"]}, "lacks column workspace_id, which partitions"),
        (
            WITHOUT_KEYS.replace("HASH (workspace_id)", "HASH ((workspace_id + 0))"),
            {},
            "partitioned by an expression",
        ),
        (
            HASH,
            {"row_identity": ["id"]},
            "row_identity \\(id\\) is not a primary key .* holds the partition key's columns",
        ),
        (
            LEVELS,
            {
                "columns": ["region", "phone_number_id"],
                "row_identity": ["id", "region", "workspace_id"],
            },
            "lacks column workspace_id, which partitions public.ev_eu",
        ),
    ],
)
def test_refusals_before_anything_changes(harness, setup, arguments, refusal):
    harness.execute(setup)
    before = harness.schema_dump()
    with pytest.raises(MigrationAbort, match=refusal):
        ensure(harness, {**ARGUMENTS, **arguments})
    assert harness.schema_dump() == before


def test_a_foreign_table_partition_is_refused(harness):
    harness.execute(
        WITHOUT_KEYS.replace(
            "CREATE TABLE public.ev_p3 PARTITION OF public.ev"
            " FOR VALUES WITH (MODULUS 4, REMAINDER 3);\n",
            "",
        ).split("INSERT")[0]
    )
    harness.admin(
        "CREATE FOREIGN DATA WRAPPER nothing_fdw; CREATE SERVER nowhere FOREIGN DATA WRAPPER"
        " nothing_fdw; CREATE FOREIGN TABLE public.ev_p3 PARTITION OF public.ev"
        " FOR VALUES WITH (MODULUS 4, REMAINDER 3) SERVER nowhere"
    )
    before = harness.schema_dump()
    with pytest.raises(
        MigrationAbort, match=r"partition public\.ev_p3 of public\.ev is a foreign table"
    ):
        ensure(harness)
    assert harness.schema_dump() == before


def test_the_offline_script_refuses_a_partitioned_table_before_changing_it(harness):
    """The app's own script, as psql runs it, meets meta_assets_cache partitioned by tenant:
    it says why in one line and names the online command; the table is as it was."""
    harness.execute(
        "CREATE TABLE public.workspaces (id uuid PRIMARY KEY);"
        "CREATE TABLE public.meta_assets_cache (id uuid NOT NULL, workspace_id uuid NOT NULL"
        " REFERENCES public.workspaces, business_id text, waba_id text, phone_number_id text,"
        " display_phone_number text, verified_name text, quality_rating text,"
        " updated_at timestamptz NOT NULL DEFAULT now(), last_synced_at timestamptz,"
        " last_error text, PRIMARY KEY (id, workspace_id)) PARTITION BY HASH (workspace_id);"
        "CREATE TABLE public.meta_assets_cache_p0 PARTITION OF public.meta_assets_cache"
        " FOR VALUES WITH (MODULUS 2, REMAINDER 0);"
        "CREATE TABLE public.meta_assets_cache_p1 PARTITION OF public.meta_assets_cache"
        " FOR VALUES WITH (MODULUS 2, REMAINDER 1);"
    )
    script = offline_script("upgrade", "head")
    assert "-- A partitioned table is refused" in script
    before = harness.schema_dump("--schema=public")
    result = run_psql(harness, script)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert "public.meta_assets_cache is partitioned: the offline script cannot" in errors[0]
    assert "alembic upgrade, without --sql" in errors[0]
    assert harness.schema_dump("--schema=public") == before


def test_preflight_lists_the_partitions_and_counts_what_the_upgrade_archives(harness):
    harness.execute(HASH + HAND_MADE)
    flags = [
        "--table", "ev", "--constraint", NAME, "--columns", "workspace_id,phone_number_id",
        "--keep-newest-by", "updated_at", "--row-identity", "id,workspace_id",
        "--private-schema", PRIVATE,
    ]  # fmt: skip
    schema_before = harness.schema_dump()
    result = library_preflight(harness, "--json", *flags)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert harness.schema_dump() == schema_before  # read only
    assert not report["problems"]
    by_partition = {line.split(":")[0]: line for line in report["partitions"]}
    assert sorted(by_partition) == [f"public.ev_p{n}" for n in range(4)]
    assert "adopts index ev_p1_hand_fix" in by_partition["public.ev_p1"]
    assert "adopts constraint ev_p2_fixed" in by_partition["public.ev_p2"]
    assert "built concurrently" in by_partition["public.ev_p0"]
    assert "until the last partition's unique is attached" in report["on_conflict"]
    assert any("refuses a partitioned table" in line for line in report["offline"])
    text = library_preflight(harness, *flags).stdout
    assert "partition            public.ev_p0:" in text

    ensure(harness)
    archived = harness.scalar(f"SELECT count(*) FROM {PRIVATE}.{NAME}_archive")
    assert report["rows_to_archive"] == archived > 0
    after = json.loads(library_preflight(harness, "--json", *flags).stdout)
    assert after["state"] == "constrained" and not after["steps"]
    assert "works already" in after["on_conflict"]
    # The downgrade puts back the partitions' own uniques it adopted.
    downgrade = json.dumps(after["downgrade_steps"])
    assert "ev_p1_hand_fix" in downgrade and "ev_p2_fixed" in downgrade, downgrade
    assert after["rows_already_archived"] == archived


# The soft-delete pattern, per tenant, on a table partitioned by tenant: the index form.
USERS = """
CREATE TABLE public.users (id bigint NOT NULL, workspace_id int NOT NULL, email text,
                           deleted_at timestamptz, updated_at int NOT NULL,
                           PRIMARY KEY (id, workspace_id))
    PARTITION BY HASH (workspace_id);
CREATE TABLE public.users_p0 PARTITION OF public.users FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE public.users_p1 PARTITION OF public.users FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO public.users
SELECT g, g % 7, (ARRAY['Ann', 'ann', 'ANN', 'eve'])[g % 4 + 1] || '@x.org',
       CASE WHEN g % 5 = 0 THEN '2020-01-01'::timestamptz END, g
  FROM generate_series(1, 300) AS g;
"""
USERS_INDEX = {
    "index_name": "users_workspace_email_key",
    "table_name": "users",
    "columns": ["workspace_id", sa.text("lower(email)")],
    "postgresql_where": "deleted_at IS NULL",
    "keep_newest_by": ["updated_at"],
    "row_identity": ["id", "workspace_id"],
    "private_schema": PRIVATE,
}


def test_the_index_form_on_a_partitioned_table(harness):
    """An expression and partial unique, per tenant, partition by partition: it ends as CREATE
    UNIQUE INDEX on the partitioned table ends; soft-deleted rows are never touched."""
    harness.execute(USERS)
    harness.execute("CREATE SCHEMA twin;" + USERS.split("INSERT")[0].replace("public.", "twin."))
    harness.execute(
        "CREATE UNIQUE INDEX users_workspace_email_key ON twin.users"
        " (workspace_id, lower(email)) WHERE deleted_at IS NULL"
    )
    expected = uniques(harness, "twin.users")
    expected_names = unique_names(harness, "twin.users")
    harness.execute("DROP SCHEMA twin CASCADE")
    schema_before = harness.schema_dump()
    rows_before = rows(harness, "public.users")

    ensure(harness, USERS_INDEX, form=target_from_index_arguments)
    assert uniques(harness, "public.users") == expected
    assert unique_names(harness, "public.users") == expected_names
    assert harness.count("public.users", "deleted_at IS NOT NULL") == 60
    assert harness.count("public.users", "deleted_at IS NULL") == harness.scalar(
        "SELECT count(DISTINCT (workspace_id, lower(email))) FROM public.users"
        " WHERE deleted_at IS NULL"
    )
    undo(harness, USERS_INDEX, form=target_from_index_arguments)
    assert harness.schema_dump() == schema_before
    assert rows(harness, "public.users") == rows_before


def test_the_move_finds_changed_rows_by_a_several_column_identity_without_a_nested_loop(harness):
    """The move's search for listed rows the app changed joins them to the table by the row
    identity; on (id, workspace_id) the planner estimates that join at one row, and, were the
    rows not locked yet found in the same join, checked every listed row against every locked
    one in a nested loop: 45 s a batch at 1M rows. Found first, they take a hash."""
    harness.execute(
        "CREATE TABLE public.ev (id bigint NOT NULL, workspace_id int NOT NULL,"
        " phone_number_id text, updated_at int NOT NULL, PRIMARY KEY (id, workspace_id));"
        "INSERT INTO public.ev SELECT g, g % 10000, 'phone-' || (g / 2), g"
        "  FROM generate_series(1, 40000) AS g;"
        f"ANALYZE public.ev; CREATE SCHEMA {PRIVATE}"
    )
    target = target_from_arguments(**ARGUMENTS)
    members = ", ".join(dedupe.member_columns(target))
    # As the move has them: the listed rows, and half of them locked at their listed ctid.
    harness.execute(
        f"CREATE UNLOGGED TABLE {target.work} AS SELECT ctid AS {dedupe.ROW_CTID}, {members}"
        f"  FROM public.ev WHERE id <= 6000;"
        f"CREATE UNLOGGED TABLE {dedupe.locked_work(target)} AS SELECT * FROM {target.work}"
        f"  WHERE id % 2 = 0"
    )
    statement = harness.scalar(
        f"SELECT pg_catalog.format(:template, VARIADIC"
        f" {dedupe.comparisons(target).operators_sql(literal('public.ev') + '::regclass')})",
        template=dedupe.lock_changed_sql(target),
    )

    plan = "\n".join(row[0] for row in harness.rows(f"EXPLAIN {statement}"))

    assert "Nested Loop Anti Join" not in plan, plan
