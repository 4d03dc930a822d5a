"""op.ensure_unique_index / op.undo_unique_index: expression and partial uniques of real schemas
(Mastodon's accounts, tags and statuses; the soft-delete users), on tables with duplicates.

Each ends with exactly the index op.create_index(..., unique=True, same arguments) makes
(pg_get_indexdef compared with a twin table's), every row in the table or the archive, a writer
that gets no error but the expected unique_violation (the guard's, judging as the index will)
while duplicates move, and a downgrade that gives back pg_dump -s and every row."""

import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from alembic_lossless_unique.operations.ops import target_from_index_arguments
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import MigrationSettings
from tests.offline_support import apply_script, other_database, run_psql
from tests.online_support import (
    Session,
    converge,
    libpq_dsn,
    migrating_while_held,
    undo_with_the_revision,
)
from tests.support import failed_lines, run_child, through

# On PostgreSQL 18 too (tests/conftest.py).
pytestmark = pytest.mark.pg18

TEMPLATE = Path(__file__).resolve().parent / "projects" / "inventory"
PRIVATE = "accounts_private"

ACCOUNTS = """
CREATE TABLE public.accounts (
    id bigint PRIMARY KEY, username character varying, domain character varying,
    updated_at int NOT NULL);
INSERT INTO public.accounts VALUES
    -- A NULL domain and '' are one key to COALESCE(lower(domain), ''): the older goes.
    (1, 'Ada', NULL, 1), (2, 'ada', '', 2),
    -- Case variants of username and domain: one key.
    (3, 'bob', 'Example.org', 1), (4, 'BOB', 'example.ORG', 3), (5, 'Bob', 'EXAMPLE.org', 2),
    -- NULL usernames: never a key, never touched.
    (6, NULL, 'x.org', 1), (7, NULL, 'x.org', 1),
    (8, 'cy', NULL, 1);
-- Child rows of archived accounts follow the kept one; a unique that holds the foreign key
-- (checked before the move: re-pointing must not make two child rows equal) stays satisfied.
CREATE TABLE public.follows (id bigint PRIMARY KEY, account_id bigint REFERENCES public.accounts,
                             target int NOT NULL, UNIQUE (account_id, target));
INSERT INTO public.follows VALUES (1, 1, 10), (2, 3, 10), (3, 5, 11), (4, 6, 10);
"""
ACCOUNTS_INDEX = {
    "index_name": "index_accounts_on_username_and_domain_lower",
    "table_name": "accounts",
    "columns": [
        sa.text("lower((username)::text)"),
        sa.text("COALESCE(lower((domain)::text), ''::text)"),
    ],
    "keep_newest_by": ["updated_at"],
    "private_schema": PRIVATE,
}

TAGS = """
CREATE TABLE public.tags (id bigint PRIMARY KEY, name character varying NOT NULL,
                          updated_at int NOT NULL);
INSERT INTO public.tags VALUES (1, 'Rust', 1), (2, 'rust', 2), (3, 'RUST', 0), (4, 'go', 1);
"""
TAGS_INDEX = {
    "index_name": "index_tags_on_name_lower_btree",
    "table_name": "tags",
    "columns": [sa.text("lower((name)::text) text_pattern_ops")],
    "keep_newest_by": ["updated_at"],
    "private_schema": PRIVATE,
}

TAGS_INDEXED = """
CREATE TABLE public.tags (id bigint PRIMARY KEY, name character varying NOT NULL,
                          updated_at int NOT NULL);
INSERT INTO public.tags VALUES (1, 'Rust', 1), (2, 'go', 2);
CREATE UNIQUE INDEX tags_lower ON public.tags (lower((name)::text) text_pattern_ops);
CREATE UNIQUE INDEX tags_lower_copy ON public.tags (lower((name)::text) text_pattern_ops);
-- Not the same key: the operator class differs; it stays.
CREATE UNIQUE INDEX tags_lower_plain ON public.tags (lower((name)::text));
"""

STATUSES = """
CREATE TABLE public.statuses (id bigint PRIMARY KEY, uri character varying,
                              updated_at int NOT NULL);
INSERT INTO public.statuses VALUES
    (1, 'https://a/1', 1), (2, 'https://a/1', 2), (3, NULL, 1), (4, NULL, 2), (5, 'https://a/2', 1);
"""
STATUSES_INDEX = {
    "index_name": "index_statuses_on_uri",
    "table_name": "statuses",
    "columns": ["uri"],
    "postgresql_ops": {"uri": "text_pattern_ops"},
    "postgresql_where": sa.text("(uri IS NOT NULL)"),
    "keep_newest_by": ["updated_at"],
    "private_schema": PRIVATE,
}

USERS = """
CREATE TABLE public.users (id bigint PRIMARY KEY, email text, deleted_at timestamptz,
                           updated_at int NOT NULL, team int);
INSERT INTO public.users VALUES
    (1, 'Ann@x.org', NULL, 1, 1), (2, 'ann@X.org', NULL, 2, 1),
    -- Soft-deleted: outside the predicate, stays although it repeats a live key.
    (3, 'ANN@x.org', '2020-01-01', 9, 1),
    (4, 'eve@x.org', NULL, 1, NULL), (5, 'EVE@x.org', NULL, 2, NULL);
"""
USERS_INDEX = {
    "index_name": "users_email_lower_key",
    "table_name": "users",
    "columns": [sa.text("lower(email)")],
    "postgresql_where": "deleted_at IS NULL",
    "keep_newest_by": ["updated_at"],
    "private_schema": PRIVATE,
}
# NULLS NOT DISTINCT on an index form: (lower(email), team) with team NULL conflicts too.
USERS_NND_INDEX = {
    **USERS_INDEX,
    "index_name": "users_email_team_key",
    "columns": [sa.text("lower(email)"), "team"],
    "postgresql_nulls_not_distinct": True,
    "postgresql_include": ["updated_at"],
}


def ensure(harness, arguments: dict) -> None:
    converge(harness, target_from_index_arguments(**arguments))


def undo(harness, arguments: dict, settings: MigrationSettings | None = None) -> None:
    undo_with_the_revision(harness, target_from_index_arguments(**arguments), settings)


def indexdef(harness, schema_table: str, name: str) -> str:
    """pg_get_indexdef from USING on: the same for the same index, whatever its names."""
    definition = harness.scalar(
        "SELECT pg_get_indexdef(c.oid) FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.relname = :name AND n.nspname = :schema",
        name=name,
        schema=schema_table.split(".")[0],
    )
    assert definition is not None, f"no index {name}"
    return definition[definition.index(" USING ") :]


def create_index_on_twin(harness, arguments: dict) -> str:
    """What op.create_index(..., unique=True, same arguments) makes, on a copy of the table."""
    table = arguments["table_name"]
    harness.execute(f"CREATE SCHEMA twin; CREATE TABLE twin.{table} (LIKE public.{table})")
    options = {
        k: v
        for k, v in arguments.items()
        if k.startswith("postgresql_") and k != "postgresql_where"
    }
    if "postgresql_where" in arguments:
        where = arguments["postgresql_where"]
        # A colon escaped, as text() needs to keep it (the operations take the SQL verbatim).
        options["postgresql_where"] = (
            sa.text(where.replace(":", "\\:")) if isinstance(where, str) else where
        )
    with harness.engine.begin() as connection:
        Operations(MigrationContext.configure(connection)).create_index(
            arguments["index_name"],
            table,
            arguments["columns"],
            unique=True,
            schema="twin",
            **options,
        )
    twin = indexdef(harness, f"twin.{table}", arguments["index_name"])
    harness.execute("DROP SCHEMA twin CASCADE")
    return twin


def rows(harness, table: str) -> dict[int, str]:
    return {r.id: r.body for r in harness.rows(f"SELECT t.id, t::text AS body FROM {table} t")}


def archived(harness, arguments: dict, table: str) -> dict[int, str]:
    """The archived rows, as the table's rows (the archive's bookkeeping columns left out)."""
    columns = [
        r[0]
        for r in harness.rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            t=f"public.{table}",
        )
    ]
    archive = f"{PRIVATE}.{arguments['index_name']}_archive"
    return {
        r.id: r.body
        for r in harness.rows(
            f"SELECT a.id, ROW({', '.join(f'a.{c}' for c in columns)})::text AS body"
            f" FROM {archive} a"
        )
    }


def converge_with_a_writer(
    harness, arguments: dict, locked_id: int, duplicate: str, welcome: list[str]
):
    """The upgrade, while the app writes: the app holds row `locked_id` (a duplicate the move
    must lock) so the migrator waits in the move, guard on and no index yet; meanwhile
    `duplicate` (an INSERT of a key the index will hold) fails with unique_violation naming the
    index, the guard's doing, and each of `welcome` succeeds."""
    table = arguments["table_name"]
    lock = f"SELECT 1 FROM public.{table} WHERE id = {locked_id} FOR UPDATE"
    with migrating_while_held(harness, lock, lambda: ensure(harness, arguments)) as (_, failure):
        assert not harness.scalar(
            "SELECT count(*) FROM pg_class WHERE relname = :n", n=arguments["index_name"]
        )
        app = Session(libpq_dsn(harness.url))
        with pytest.raises(psycopg2.errors.UniqueViolation) as rejected:
            app.run(duplicate)
        for statement in welcome:
            app.run(statement)
        app.close()
    assert not failure, failure
    assert rejected.value.diag.constraint_name == arguments["index_name"]


def assert_form_converges_and_undoes(
    harness,
    setup: str,
    arguments: dict,
    duplicate: str,
    welcome: list[str],
    kept: set[int],
    locked_id: int = 1,
    undo_settings: MigrationSettings | None = None,
    between: Callable[[], None] = lambda: None,
) -> None:
    table = arguments["table_name"]
    harness.execute(setup)
    expected = create_index_on_twin(harness, arguments)
    schema_before, rows_before = harness.schema_dump(), rows(harness, f"public.{table}")

    converge_with_a_writer(harness, arguments, locked_id, duplicate, welcome)

    assert indexdef(harness, f"public.{table}", arguments["index_name"]) == expected
    assert not harness.scalar(
        "SELECT count(*) FROM pg_constraint WHERE conname = :n", n=arguments["index_name"]
    )
    after = rows(harness, f"public.{table}")
    written = {i: body for i, body in after.items() if i not in rows_before}
    assert set(after) - set(written) == kept
    gone = archived(harness, arguments, table)
    assert {**{i: after[i] for i in kept}, **gone} == rows_before  # every row, unchanged
    between()

    harness.execute(f"DELETE FROM public.{table} WHERE id IN ({', '.join(map(str, written))})")
    undo(harness, arguments, undo_settings)

    assert harness.schema_dump() == schema_before
    assert rows(harness, f"public.{table}") == rows_before


def test_mastodon_accounts_expression_key(harness):
    """(lower(username), COALESCE(lower(domain), '')): a NULL domain and '' are one key, case
    variants one key; NULL usernames (a NULL key element) are never touched, and a writer may
    still add them twice while the guard rejects a case variant of a kept key. Follows of an
    archived account point at the kept one, and back after the downgrade."""
    assert_form_converges_and_undoes(
        harness,
        ACCOUNTS,
        ACCOUNTS_INDEX,
        duplicate="INSERT INTO public.accounts VALUES (100, 'CY', '', 5)",
        welcome=[
            "INSERT INTO public.accounts VALUES (101, NULL, 'x.org', 5)",
            "INSERT INTO public.accounts VALUES (102, 'dee', 'y.org', 5)",
        ],
        kept={2, 4, 6, 7, 8},
        between=lambda: assert_follows(harness, {1: 2, 2: 4, 3: 4, 4: 6}),
    )
    assert_follows(harness, {1: 1, 2: 3, 3: 5, 4: 6})


def assert_follows(harness, account_of: dict[int, int]) -> None:
    assert dict(harness.rows("SELECT id, account_id FROM public.follows")) == account_of


def test_mastodon_tags_operator_class_inside_the_text(harness):
    """The downgrade restores in batches of one row: the index goes first, on its own."""
    assert_form_converges_and_undoes(
        harness,
        TAGS,
        TAGS_INDEX,
        duplicate="INSERT INTO public.tags VALUES (100, 'GO', 5)",
        welcome=["INSERT INTO public.tags VALUES (101, 'zig', 5)"],
        kept={2, 4},
        undo_settings=MigrationSettings(restore_batch_rows=1),
    )


def test_mastodon_statuses_partial_with_postgresql_ops(harness):
    assert_form_converges_and_undoes(
        harness,
        STATUSES,
        STATUSES_INDEX,
        duplicate="INSERT INTO public.statuses VALUES (100, 'https://a/2', 5)",
        welcome=["INSERT INTO public.statuses VALUES (101, NULL, 5)"],
        kept={2, 3, 4, 5},
    )


def test_soft_delete_partial_key_leaves_deleted_rows_alone(harness):
    """WHERE deleted_at IS NULL: the soft-deleted 'ANN@' stays although it repeats a live key
    (and is the newest of them), and another deleted one may still be written."""
    assert_form_converges_and_undoes(
        harness,
        USERS,
        USERS_INDEX,
        duplicate="INSERT INTO public.users VALUES (100, 'EVE@X.ORG', NULL, 5, NULL)",
        welcome=["INSERT INTO public.users VALUES (101, 'eve@x.org', now(), 5, NULL)"],
        kept={2, 3, 5},
    )


def test_nulls_not_distinct_on_an_index_form(harness, pg_major):
    """(lower(email), team) NULLS NOT DISTINCT INCLUDE (updated_at): the two eve rows (team
    NULL) are one key and one is archived; a third is rejected by the guard."""
    if pg_major < 15:
        pytest.skip("NULLS NOT DISTINCT is PostgreSQL 15+")
    assert_form_converges_and_undoes(
        harness,
        USERS,
        USERS_NND_INDEX,
        duplicate="INSERT INTO public.users VALUES (100, 'Eve@x.org', NULL, 5, NULL)",
        welcome=["INSERT INTO public.users VALUES (101, 'eve@x.org', NULL, 5, 2)"],
        kept={2, 3, 5},
        locked_id=4,
    )


def test_a_volatile_expression_is_refused_before_anything_changes(harness):
    harness.execute(ACCOUNTS)
    schema_before, rows_before = harness.schema_dump(), rows(harness, "public.accounts")
    arguments = {**ACCOUNTS_INDEX, "columns": [sa.text("(username || random()::text)")]}

    with pytest.raises(Exception) as refused:
        ensure(harness, arguments)

    assert "IMMUTABLE" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert harness.schema_dump() == schema_before
    assert rows(harness, "public.accounts") == rows_before

    # Offline, the script's probe refuses in the same words, before anything changes.
    result = run_psql(harness, offline_script(arguments, "ensure_unique_index"))
    assert result.returncode != 0
    [error] = [line for line in result.stderr.splitlines() if "ERROR:" in line]
    assert error.endswith(str(refused.value).removeprefix("FAILED: "))
    assert harness.schema_dump() == schema_before
    assert rows(harness, "public.accounts") == rows_before

    # Two key columns in one entry of `columns`: online reads them; the script, written for
    # one, refuses rather than judge keys by the first.
    combined = {**ACCOUNTS_INDEX, "columns": [sa.text("lower(username), lower(domain)")]}
    result = run_psql(harness, offline_script(combined, "ensure_unique_index"))
    assert result.returncode != 0
    assert "its key has 2 columns where `columns` gives 1" in result.stderr
    assert harness.schema_dump() == schema_before
    assert rows(harness, "public.accounts") == rows_before


# Offline: the script `alembic --sql` writes, run by psql.


def offline_script(arguments: dict, operation: str) -> str:
    """What `alembic --sql` writes for `operation` in a revision, in the revision's transaction
    (the CLI test below runs a whole project's script)."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        dialect_opts={"paramstyle": "named"},  # as environment.py writes scripts
        opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True},
    )
    getattr(Operations(context), operation)(**arguments)
    script = f"BEGIN;\n{buffer.getvalue()}\nCOMMIT;\n"
    assert ("CREATE UNIQUE INDEX CONCURRENTLY" in script) == (
        operation == "ensure_unique_index"
        and os.environ.get("MIGRATION_OFFLINE_BUILD", "concurrent") == "concurrent"
    )
    return script


def end_state(harness, arguments: dict) -> tuple:
    table = arguments["table_name"]
    return (
        harness.schema_dump(),
        rows(harness, f"public.{table}"),
        archived(harness, arguments, table),
    )


# NULLS NOT DISTINCT and INCLUDE, and a predicate with quotes, % and a colon (which text()
# would take for a parameter) that the script carries verbatim.
USERS_NND_QUOTED_INDEX = {
    **USERS_NND_INDEX,
    "postgresql_where": "deleted_at IS NULL AND email NOT LIKE '%@test.invalid :bounce'",
}


@pytest.mark.parametrize(
    ("setup", "arguments", "kept", "duplicate", "form"),
    [
        (USERS, USERS_INDEX, {2, 3, 5}, "(100, 'EVE@X.ORG', NULL, 5, NULL)", "concurrent"),
        (
            USERS,
            USERS_NND_QUOTED_INDEX,
            {2, 3, 5},
            "(100, 'Eve@x.org', NULL, 5, NULL)",
            "concurrent",
        ),
        (ACCOUNTS, ACCOUNTS_INDEX, {2, 4, 6, 7, 8}, None, "blocking"),
        # A fitting index renamed, another dropped as redundant: both back after the downgrade.
        (TAGS_INDEXED, TAGS_INDEX, {1, 2}, None, "concurrent"),
    ],
    ids=[
        "soft_delete_users",
        "nulls_not_distinct_quoted_predicate",
        "mastodon_accounts_blocking",
        "tags_renamed_and_redundant",
    ],
)
def test_the_offline_script_ends_where_online_ends_and_runs_again(
    harness, monkeypatch, pg_major, setup, arguments, kept, duplicate, form
):
    """The key is read by the script itself (its probe): the upgrade, run twice by psql, ends
    with the index op.create_index makes, the rows and the archive the online run leaves; the
    downgrade, twice, gives back pg_dump -s and every row. Both forms of the build; the
    concurrent one stopped before its build first (its guard rejects a duplicate as the index
    will), and completed by the next run."""
    if arguments.get("postgresql_nulls_not_distinct") and pg_major < 15:
        pytest.skip("NULLS NOT DISTINCT is PostgreSQL 15+")
    monkeypatch.setenv("MIGRATION_OFFLINE_BUILD", form)
    harness.execute(setup)
    table = arguments["table_name"]
    expected = create_index_on_twin(harness, arguments)
    schema_before, rows_before = harness.schema_dump(), rows(harness, f"public.{table}")
    with other_database(harness, "online") as on:
        on.execute(setup)
        ensure(on, arguments)
        online_end = end_state(on, arguments)

    upgrade = offline_script(arguments, "ensure_unique_index")
    if duplicate is not None:  # stopped before the build: archived, the guard on
        apply_script(harness, upgrade[: upgrade.index("CREATE UNIQUE INDEX CONCURRENTLY")])
        app = Session(libpq_dsn(harness.url))
        with pytest.raises(psycopg2.errors.UniqueViolation) as rejected:
            app.run(f"INSERT INTO public.{table} VALUES {duplicate}")
        app.close()
        assert rejected.value.diag.constraint_name == arguments["index_name"]
    for _ in range(2):
        apply_script(harness, upgrade)
        assert indexdef(harness, f"public.{table}", arguments["index_name"]) == expected
        assert end_state(harness, arguments) == online_end
    assert rows(harness, f"public.{table}").keys() == kept

    downgrade = offline_script(arguments, "undo_unique_index")
    for _ in range(2):
        apply_script(harness, downgrade)
        assert harness.schema_dump() == schema_before
        assert rows(harness, f"public.{table}") == rows_before


# Through the real CLI: `alembic upgrade` / `downgrade`, and the scripts of `--sql`.

TAGS_REVISION = '''"""One tag per lowercase name, as Mastodon's index judges it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import alembic_lossless_unique  # noqa: F401 (registers op.ensure_unique_index)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TAGS = {
    "index_name": "index_tags_on_name_lower_btree",
    "table_name": "tags",
    "columns": [sa.text("lower((name)::text) text_pattern_ops")],
    "keep_newest_by": ["updated_at"],
    "private_schema": "accounts_private",
}


def upgrade() -> None:
    op.ensure_unique_index(**TAGS)


def downgrade() -> None:
    op.undo_unique_index(**TAGS)
'''


# What differs between drivers, not between servers: each runs on one major.
@pytest.mark.any_major
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg", "asyncpg"])
def test_through_the_alembic_cli_and_offline(harness, tmp_path, driver):
    """The index form as a user runs it, through each driver (the probe's temporary table, the
    expression's `::` casts and the guard's plpgsql reach the server unchanged through each),
    and offline: the project's upgrade and downgrade scripts, each run twice by psql.
    The plan lists it with what it archives, as the index judges it, and its hazards; a deploy
    against a plan whose index changed since is refused, the one reviewed runs."""
    directory = tmp_path / "inventory"
    shutil.copytree(TEMPLATE, directory, ignore=shutil.ignore_patterns("__pycache__"))
    revision = directory / "migrations" / "versions" / "0003_tags_unique.py"
    revision.write_text(TAGS_REVISION)

    def alembic(*args: str, database: bool = True, module: str = "alembic"):
        return run_child(
            [sys.executable, "-m", module, *args],
            cwd=directory,
            env={**os_environ(), **({"DATABASE_URL": url} if database else {})},
            timeout=120,
        )

    def plan() -> dict:
        planned = alembic("plan", "--json", module="alembic_lossless_unique")
        assert planned.returncode == 0, planned.output
        return json.loads(planned.stdout)

    url = through(harness.url, driver)
    harness.execute(TAGS)
    assert alembic("upgrade", "0002").returncode == 0
    schema_before, rows_before = harness.schema_dump(), rows(harness, "public.tags")

    if driver == "psycopg2":  # offline, no driver speaks: the project's scripts, by psql
        upgrade, downgrade = (
            alembic(direction, revisions, "--sql", database=False)
            for direction, revisions in (("upgrade", "0002:head"), ("downgrade", "head:0002"))
        )
        assert upgrade.returncode == downgrade.returncode == 0, upgrade.output + downgrade.output
        for _ in range(2):  # again: already applied, nothing changes
            apply_script(harness, upgrade.stdout)
            assert rows(harness, "public.tags").keys() == {2, 4}
            assert indexdef(harness, "public.tags", TAGS_INDEX["index_name"]) == (
                " USING btree (lower((name)::text) text_pattern_ops)"
            )
        for _ in range(2):
            apply_script(harness, downgrade.stdout)
            assert harness.schema_dump() == schema_before
            assert rows(harness, "public.tags") == rows_before

    planned = plan()
    assert planned["pending_revisions"] == ["0003"]
    [operation] = planned["operations"]
    assert (operation["operation"], operation["table"], operation["constraint"]) == (
        "ensure_unique_index",
        "public.tags",
        TAGS_INDEX["index_name"],
    )
    assert operation["hazards"] == [
        "ARCHIVES_ROWS",
        "BUILDS_INDEX_CONCURRENTLY",
        "TAKES_STRONG_LOCKS",
    ]
    report = operation["preflight"]
    assert (report["kind"], report["state"], report["problems"]) == ("unique index", "drifted", [])
    assert (report["rows_to_archive"], report["duplicate_groups"]) == (2, 1)  # Rust, RUST
    assert harness.schema_dump() == schema_before
    assert rows(harness, "public.tags") == rows_before

    if driver == "psycopg2":  # the refusal is the driver's no more than the plan is
        # Another index: the same elements, a predicate now (only the index form's part of the
        # fingerprint tells them apart).
        revision.write_text(
            TAGS_REVISION.replace(
                '"keep_newest_by"', '"postgresql_where": "updated_at >= 0",\n    "keep_newest_by"'
            )
        )
        changed = plan()["fingerprint"]
        refused = alembic("-x", f"expect_plan={planned['fingerprint']}", "upgrade", "head")
        assert refused.returncode != 0
        [line] = failed_lines(refused)
        assert f"it was {planned['fingerprint']}, it is now {changed}" in line
        assert harness.schema_dump() == schema_before
        revision.write_text(TAGS_REVISION)  # the plan that was reviewed

    upgraded = alembic("-x", f"expect_plan={planned['fingerprint']}", "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.output
    assert failed_lines(upgraded) == []
    assert rows(harness, "public.tags").keys() == {2, 4}
    assert indexdef(harness, "public.tags", TAGS_INDEX["index_name"]) == (
        " USING btree (lower((name)::text) text_pattern_ops)"
    )

    downgraded = alembic("downgrade", "0002")
    assert downgraded.returncode == 0, downgraded.output
    assert harness.schema_dump() == schema_before
    assert rows(harness, "public.tags") == rows_before


def os_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}


# The plan: an index that judges the key as the target will is adopted, whatever its name.


def index_names(harness, table: str) -> list[str]:
    return [
        r[0]
        for r in harness.rows(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = CAST(:t AS regclass) ORDER BY 1",
            t=table,
        )
    ]


def test_a_fitting_index_is_renamed_another_dropped_and_both_come_back(harness):
    """tags_lower judges the key as the target will (same expression, operator class,
    collation): renamed, nothing built or scanned; tags_lower_copy is redundant and dropped;
    tags_lower_plain (another operator class) stays. A second run has nothing to do; the
    downgrade puts both back exactly. The name taken by another relation is refused."""
    harness.execute(TAGS_INDEXED)
    schema_before = harness.schema_dump()

    ensure(harness, TAGS_INDEX)

    assert index_names(harness, "public.tags") == [
        "index_tags_on_name_lower_btree",
        "tags_lower_plain",
        "tags_pkey",
    ]
    actions = [r[0] for r in harness.rows(f"SELECT action FROM {PRIVATE}.{LEDGER} ORDER BY seq")]
    assert actions == ["found", "renamed", "dropped_redundant"]
    ensure(harness, TAGS_INDEX)  # converged: nothing to do
    assert harness.scalar(f"SELECT count(*) FROM {PRIVATE}.{LEDGER}") == 3

    undo(harness, TAGS_INDEX)
    assert harness.schema_dump() == schema_before

    harness.execute("CREATE TABLE public.index_tags_on_name_lower_btree (id int)")
    with pytest.raises(MigrationAbort) as refused:
        ensure(harness, TAGS_INDEX)
    assert "relation index_tags_on_name_lower_btree exists" in str(refused.value)


LEDGER = "index_tags_on_name_lower_btree_steps"


def test_an_invalid_index_left_by_a_failed_build_is_dropped_and_built_again(harness):
    """A hand-run CREATE UNIQUE INDEX CONCURRENTLY that met the duplicates left an INVALID index
    under the target's name: dropped first, the duplicates archived, the index built."""
    harness.execute(TAGS)
    app = Session(libpq_dsn(harness.url))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        app.run(
            "CREATE UNIQUE INDEX CONCURRENTLY index_tags_on_name_lower_btree"
            " ON public.tags (lower((name)::text) text_pattern_ops)"
        )
    app.close()
    assert harness.invalid_indexes() == ["index_tags_on_name_lower_btree"]

    ensure(harness, TAGS_INDEX)

    assert harness.invalid_indexes() == []
    assert rows(harness, "public.tags").keys() == {2, 4}
    actions = [r[0] for r in harness.rows(f"SELECT action FROM {PRIVATE}.{LEDGER} ORDER BY seq")]
    assert actions[:2] == ["found", "dropped_invalid"]
