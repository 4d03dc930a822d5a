"""Safe around the table: foreign keys into it, user triggers, columns the model does not know,
a downgrade that cannot strand the app, and duplicates that keep arriving.

Each test compares every table involved (md5 of its sorted rows) before, after the upgrade and
after the downgrade, on a real PostgreSQL, as the table's owner, which is not a superuser."""

import json
import subprocess
import sys
import threading
import time

import psycopg2
import pytest

from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME
from tests.online_support import (
    A_LOSER,
    SURVIVORS,
    Session,
    assert_canonical,
    crash_migrator,
    holding,
    libpq_dsn,
    migrator_waiting_on_lock,
    start_alembic,
    wait_until,
)
from tests.support import BASELINE, HEAD, MIGRATOR, PROJECT_ROOT, failed_lines, succeed

TABLE = "public.meta_assets_cache"
REPOINTED = "meta_assets_migration.meta_assets_cache_archive_repointed"


def fingerprint(harness, *tables: str) -> dict[str, str]:
    """Every table's rows, sorted, as one md5 each: equal means byte for byte."""
    return {
        table: harness.scalar(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)),"
            f" '') FROM {table} t"
        )
        for table in tables
    }


def database_state(harness, *tables: str) -> tuple:
    """The whole schema, every involved table's rows, and the revision."""
    return harness.schema_dump(), fingerprint(harness, TABLE, *tables), harness.version()


def one_failed_line(result) -> str:
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    [line] = failed_lines(result)
    return line


@pytest.fixture
def drifted(harness):
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    return harness


@pytest.fixture
def skips_triggers(harness):
    """The migrating role may set session_replication_role (PostgreSQL 15's GRANT SET ON
    PARAMETER): the move and the restore then run without firing user triggers."""
    harness.admin(f"GRANT SET ON PARAMETER session_replication_role TO {MIGRATOR}")
    yield
    harness.admin(f"REVOKE SET ON PARAMETER session_replication_role FROM {MIGRATOR}")


def losers(harness) -> list[str]:
    return [row[0] for row in harness.rows(A_LOSER.replace("LIMIT 1", ""))]


def kept_of(harness) -> dict[str, str]:
    """For each row the dedupe archives, the row kept for its pair."""
    return {
        row.loser: row.kept
        for row in harness.rows(
            "SELECT l.id::text AS loser, k.id::text AS kept FROM public.meta_assets_cache l"
            f" JOIN public.meta_assets_cache k USING (workspace_id, phone_number_id)"
            f" WHERE k.id::text IN ({SURVIVORS}) AND l.id <> k.id"
        )
    }


# 1. Foreign keys into the table.

CHILDREN = """
CREATE SCHEMA billing;
CREATE TABLE public.asset_notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id uuid REFERENCES public.meta_assets_cache(id) ON DELETE CASCADE,
    note text);
CREATE TABLE public.asset_links (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    asset_id uuid REFERENCES public.meta_assets_cache(id) ON DELETE SET NULL);
CREATE TABLE billing.asset_invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id uuid NOT NULL REFERENCES public.meta_assets_cache(id),
    amount numeric);
ALTER TABLE public.meta_assets_cache
    ADD CONSTRAINT meta_assets_cache_id_workspace_key UNIQUE (id, workspace_id);
CREATE TABLE public.asset_scoped (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id uuid, workspace_id uuid,
    FOREIGN KEY (asset_id, workspace_id)
        REFERENCES public.meta_assets_cache(id, workspace_id) ON DELETE CASCADE);
INSERT INTO public.asset_notes (asset_id, note)
    SELECT id, 'note ' || id FROM public.meta_assets_cache;
INSERT INTO public.asset_links (asset_id) SELECT id FROM public.meta_assets_cache;
INSERT INTO billing.asset_invoices (asset_id, amount) SELECT id, 1 FROM public.meta_assets_cache;
INSERT INTO public.asset_scoped (asset_id, workspace_id)
    SELECT id, workspace_id FROM public.meta_assets_cache;
"""
CHILD_TABLES = (
    "public.asset_notes",
    "public.asset_links",
    "billing.asset_invoices",
    "public.asset_scoped",
)


def test_child_rows_follow_the_kept_row_and_come_back(drifted):
    """CASCADE children are not deleted, SET NULL children not nulled, NO ACTION children do not
    stop the move, a composite and a cross-schema foreign key are handled: each child row of an
    archived row points at the row kept for its pair, and the downgrade points it back."""
    harness = drifted
    harness.execute(CHILDREN)
    before = database_state(harness, *CHILD_TABLES)
    children_before = {table: harness.count(table) for table in CHILD_TABLES}
    moved = kept_of(harness)
    assert moved

    result = harness.cli("upgrade", "head")

    succeed(result)
    for table in CHILD_TABLES:
        assert harness.count(table) == children_before[table], table  # none deleted
        orphans = harness.count(
            table, f"asset_id IS NULL OR asset_id NOT IN (SELECT id FROM {TABLE})"
        )
        assert orphans == 0, table
        pointing_at_archived = harness.count(
            table, f"asset_id::text IN (SELECT id::text FROM {ARCHIVE})"
        )
        assert pointing_at_archived == 0, table
    notes = dict(harness.rows("SELECT note, asset_id::text FROM public.asset_notes"))
    for loser, kept in moved.items():
        assert notes[f"note {loser}"] == kept
    assert harness.count(REPOINTED) == len(moved) * len(CHILD_TABLES)
    assert "re-pointed        " in result.stderr

    succeed(harness.cli("downgrade", "-1"))

    assert database_state(harness, *CHILD_TABLES) == before


def test_a_child_unique_that_would_collide_is_refused_before_anything(drifted):
    """One-to-one children: re-pointing two of them to the same kept row would break their
    unique, so the upgrade refuses with one line naming the foreign key and the child table."""
    harness = drifted
    harness.execute(
        "CREATE TABLE public.asset_profiles (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " asset_id uuid UNIQUE REFERENCES public.meta_assets_cache(id) ON DELETE CASCADE);"
        "INSERT INTO public.asset_profiles (asset_id) SELECT id FROM public.meta_assets_cache"
    )
    before = database_state(harness, "public.asset_profiles")

    line = one_failed_line(harness.cli("upgrade", "head"))

    assert "asset_profiles_asset_id_fkey" in line and "public.asset_profiles" in line
    assert "asset_profiles_asset_id_key" in line
    assert database_state(harness, "public.asset_profiles") == before


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        (
            "CREATE TABLE public.asset_tags (asset_id uuid REFERENCES public.meta_assets_cache(id),"
            " tag text);"
            " INSERT INTO public.asset_tags SELECT id, 't' FROM public.meta_assets_cache",
            "public.asset_tags has no primary key",
        ),
        (
            "ALTER TABLE public.meta_assets_cache ADD COLUMN parent_id uuid"
            " REFERENCES public.meta_assets_cache(id)",
            "references its own table",
        ),
    ],
    ids=["child-without-primary-key", "self-reference"],
)
def test_foreign_keys_that_cannot_be_repointed_are_refused(drifted, child, expected):
    harness = drifted
    harness.execute(child)
    before = database_state(harness)

    line = one_failed_line(harness.cli("upgrade", "head"))

    assert expected in line
    assert database_state(harness) == before


@pytest.mark.parametrize(
    ("schema", "grant"),
    [("public", "SELECT"), ("ledger", "SELECT, UPDATE")],
    ids=["read-only-child", "child-in-a-schema-without-usage"],
)
def test_a_child_the_role_may_not_update_is_refused(drifted, schema, grant):
    """A child table owned by another role, that the migrator may only read, or that lives in a
    schema the migrator may not use: one line naming the foreign key, the child and the grant it
    needs, before anything changed (preflight says so too)."""
    harness = drifted
    owner = f"billing_owner_{harness.dbname[-8:]}"
    harness.admin(f"CREATE ROLE {owner} NOLOGIN")
    try:
        harness.admin(
            f"CREATE SCHEMA IF NOT EXISTS {schema};"
            f" CREATE TABLE {schema}.asset_billing (id bigint PRIMARY KEY,"
            " asset_id uuid REFERENCES public.meta_assets_cache(id));"
            f" ALTER TABLE {schema}.asset_billing OWNER TO {owner};"
            f" GRANT {grant} ON {schema}.asset_billing TO {MIGRATOR}"
        )
        before = database_state(harness)
        assert harness.admin_scalar(
            f"SELECT has_table_privilege('{MIGRATOR}', '{schema}.asset_billing', 'SELECT')"
        )

        line = one_failed_line(harness.cli("upgrade", "head"))

        assert "asset_billing_asset_id_fkey" in line
        assert f"may not update {schema}.asset_billing" in line
        assert database_state(harness) == before
        assert line.removeprefix("FAILED: ") in preflight_report(harness)["problems"]
    finally:
        harness.admin(f"DROP TABLE IF EXISTS {schema}.asset_billing")
        if schema != "public":
            harness.admin(f"DROP SCHEMA {schema}")
        harness.admin(f"DROP ROLE {owner}")


def preflight_report(harness) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "app.preflight", "--json"],
        cwd=PROJECT_ROOT,
        env={"DATABASE_URL": harness.url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_crash_while_repointing_converges(drifted):
    """SIGKILL while the re-pointing waits for a child row the app holds: nothing of the move
    happened; the re-run converges; the downgrade is still exact."""
    harness = drifted
    harness.execute(CHILDREN)
    before = database_state(harness, *CHILD_TABLES)
    rows_before = harness.table_rows()
    survivors = {row[0] for row in harness.rows(SURVIVORS)}
    loser = losers(harness)[0]
    child_lock = holding(
        harness, f"SELECT 1 FROM public.asset_notes WHERE asset_id = '{loser}' FOR UPDATE"
    )
    try:
        running = start_alembic("upgrade", "head", env={"DATABASE_URL": harness.url})
        wait_until(
            "the re-pointing to wait for the locked child row",
            lambda: migrator_waiting_on_lock(harness, "DO $move$%"),
            migrator=running,
        )
        crash_migrator(harness, running)
    finally:
        child_lock.rollback()
        child_lock.close()
    assert harness.count(ARCHIVE) == 0
    assert harness.count(REPOINTED) == 0
    assert fingerprint(harness, TABLE, *CHILD_TABLES) == before[1]  # the move rolled back
    assert harness.guard_exists()  # the killed run's guard: the re-run removes it

    succeed(harness.cli("upgrade", "head"))
    assert_canonical(harness, rows_before, survivors)
    assert not harness.guard_exists()
    succeed(harness.cli("downgrade", "-1"))
    assert database_state(harness, *CHILD_TABLES) == before


# 2. User triggers.

TOUCH = """
CREATE FUNCTION public.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.updated_at = now(); RETURN NEW; END $$;
CREATE TRIGGER touch_updated_at BEFORE INSERT ON public.meta_assets_cache
    FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
"""
SOFT_DELETE = """
ALTER TABLE public.meta_assets_cache ADD COLUMN deleted_at timestamptz;
CREATE FUNCTION public.soft_delete() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN UPDATE public.meta_assets_cache SET deleted_at = now() WHERE id = OLD.id;
       RETURN NULL; END $$;
CREATE TRIGGER soft_delete BEFORE DELETE ON public.meta_assets_cache
    FOR EACH ROW EXECUTE FUNCTION public.soft_delete();
"""


def test_a_soft_delete_trigger_stops_the_move_naming_it(drifted):
    """Without leave to skip user triggers, a BEFORE DELETE trigger that keeps the rows makes
    the move's own count check fail: rolled back, one line naming the trigger, nothing changed
    (no guard left), and no blame on new duplicates."""
    harness = drifted
    harness.execute(SOFT_DELETE)
    before = database_state(harness)

    result = harness.cli("upgrade", "head")

    line = one_failed_line(result)
    assert "soft_delete (BEFORE DELETE)" in line
    assert "kept arriving" not in result.output
    assert "fires during the move" in result.output  # said up front
    assert database_state(harness) == before
    assert not harness.guard_exists()


def test_with_leave_to_skip_triggers_the_move_and_restore_are_exact(drifted, skips_triggers):
    """Where the role may set session_replication_role, neither the soft-delete trigger nor a
    BEFORE INSERT trigger that stamps updated_at sees the move or the restore."""
    harness = drifted
    harness.execute(SOFT_DELETE + TOUCH)
    before = database_state(harness)
    rows_before = harness.table_rows()

    result = harness.cli("upgrade", "head")

    succeed(result)
    assert "does not fire during the move" in result.output
    assert harness.count(ARCHIVE) > 0
    assert harness.count(TABLE, "deleted_at IS NOT NULL") == 0
    succeed(harness.cli("downgrade", "-1"))
    assert harness.table_rows() == rows_before
    assert database_state(harness) == before


def test_a_stamping_trigger_makes_the_downgrade_refuse_with_nothing_changed(drifted):
    """A BEFORE INSERT trigger that changes updated_at would restore rows that are not the ones
    archived: the restore checks itself, the downgrade's single transaction rolls back, the
    constraint and the revision stay (the app's upserts keep working), one line names the
    trigger. With the trigger disabled, the downgrade is exact."""
    harness = drifted
    rows_before = harness.table_rows()
    succeed(harness.cli("upgrade", "head"))
    harness.execute(TOUCH)
    before_downgrade = database_state(harness)

    line = one_failed_line(harness.cli("downgrade", "-1"))

    assert "touch_updated_at (BEFORE INSERT)" in line
    assert database_state(harness) == before_downgrade
    assert harness.version() == HEAD
    harness.execute("ALTER TABLE public.meta_assets_cache DISABLE TRIGGER touch_updated_at")
    succeed(harness.cli("downgrade", "-1"))
    assert harness.table_rows() == rows_before


def test_after_triggers_and_publications_are_announced(drifted):
    harness = drifted
    harness.execute(
        "CREATE TABLE public.audit (op text, id uuid);"
        "CREATE FUNCTION public.audit_row() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO public.audit VALUES (TG_OP, coalesce(NEW.id, OLD.id));"
        " RETURN NULL; END $$;"
        "CREATE TRIGGER audit_row AFTER INSERT OR DELETE ON public.meta_assets_cache"
        " FOR EACH ROW EXECUTE FUNCTION public.audit_row();"
        "CREATE PUBLICATION app_realtime FOR TABLE public.meta_assets_cache"
    )

    result = harness.cli("upgrade", "head")

    succeed(result)
    assert "user trigger audit_row (AFTER INSERT OR DELETE FOR EACH ROW) fires" in result.output
    assert "publication app_realtime publishes the table's inserts, deletes" in result.output
    # The trigger did fire (the role may not skip it): the audit table saw the deletes.
    assert harness.count("public.audit", "op = 'DELETE'") == harness.count(ARCHIVE)


# 3. Columns that differ from the model.

EXTRA_COLUMNS = """
ALTER TABLE public.meta_assets_cache
    ADD COLUMN "Display Name" text,
    ADD COLUMN phone_digits text
        GENERATED ALWAYS AS (regexp_replace(display_phone_number, '\\D', '', 'g')) STORED,
    ADD COLUMN sequence_number bigint GENERATED ALWAYS AS IDENTITY;
UPDATE public.meta_assets_cache SET "Display Name" = 'name ' || id;
"""


def test_extra_generated_identity_and_quoted_columns_round_trip(drifted):
    """Columns the model does not know, a generated column (recomputed on restore) and an
    identity column (restored as it was) come back byte for byte."""
    harness = drifted
    harness.execute(EXTRA_COLUMNS)
    before = database_state(harness)

    succeed(harness.cli("upgrade", "head"))
    assert harness.scalar(f'SELECT count(*) FROM {ARCHIVE} WHERE "Display Name" IS NOT NULL') > 0
    succeed(harness.cli("downgrade", "-1"))

    assert database_state(harness) == before


def test_a_column_added_after_the_upgrade_takes_its_default(drifted):
    harness = drifted
    succeed(harness.cli("upgrade", "head"))
    archived = [row[0] for row in harness.rows(f"SELECT id::text FROM {ARCHIVE}")]
    harness.execute(
        "ALTER TABLE public.meta_assets_cache ADD COLUMN region text NOT NULL DEFAULT 'eu'"
    )

    succeed(harness.cli("downgrade", "-1"))

    assert harness.count(TABLE, f"id::text = ANY (ARRAY{archived}) AND region = 'eu'") == len(
        archived
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "ALTER TABLE public.meta_assets_cache DROP COLUMN verified_name",
            "column verified_name was dropped from public.meta_assets_cache after the upgrade",
        ),
        (
            "ALTER TABLE public.meta_assets_cache ADD COLUMN region text NOT NULL"
            " DEFAULT 'eu'; ALTER TABLE public.meta_assets_cache ALTER COLUMN region DROP DEFAULT",
            "column region was added to public.meta_assets_cache after the upgrade, NOT NULL",
        ),
        (
            "INSERT INTO public.meta_assets_cache (id, workspace_id, phone_number_id)"
            f" SELECT id, workspace_id, 'reused' FROM {ARCHIVE} LIMIT 1",
            "values that a live row now uses",
        ),
        (
            f"INSERT INTO {ARCHIVE} SELECT * FROM {ARCHIVE} LIMIT 1",
            "share their (id) values with another archived row",
        ),
        (
            "ALTER TABLE public.meta_assets_cache ALTER COLUMN quality_rating TYPE varchar(10)",
            "column quality_rating of public.meta_assets_cache is character varying(10) now",
        ),
    ],
    ids=["dropped-column", "new-not-null-column", "reused-id", "archived-twice", "changed-type"],
)
def test_what_the_downgrade_cannot_restore_is_refused_before_anything(drifted, change, expected):
    """Found before the downgrade changes anything: one line that says what to do; the
    constraint, the archive and the revision stay."""
    harness = drifted
    succeed(harness.cli("upgrade", "head"))
    harness.execute(change)
    before = database_state(harness, ARCHIVE)

    line = one_failed_line(harness.cli("downgrade", "-1"))

    assert expected in line
    assert database_state(harness, ARCHIVE) == before
    assert harness.version() == HEAD


# 4. All-or-nothing downgrade.


def test_a_downgrade_that_fails_in_its_transaction_changes_nothing(drifted):
    """The downgrade drops the constraint, restores the rows and points the children back in
    one transaction with the revision change. When a child row the app holds makes it time out
    half way, all of it rolls back: the constraint stays (the app's upserts keep working), the
    revision, the rows and the archive are as they were; both directions re-run."""
    harness = drifted
    harness.execute(CHILDREN)
    at_baseline = database_state(harness, *CHILD_TABLES)
    succeed(harness.cli("upgrade", "head"))
    before = database_state(harness, ARCHIVE, REPOINTED, *CHILD_TABLES)
    repointed_child = harness.scalar(f"SELECT child_row->>'id' FROM {REPOINTED} LIMIT 1")
    app = holding(
        harness, f"SELECT 1 FROM public.asset_notes WHERE id = {int(repointed_child)} FOR UPDATE"
    )
    try:
        result = harness.cli(
            "-x", "lock_timeout=200ms", "-x", "lock_retries=2", "-x", "lock_retry_wait=50ms",
            "downgrade", "-1",
        )  # fmt: skip
    finally:
        app.rollback()
        app.close()

    assert "could not lock public.meta_assets_cache" in one_failed_line(result)
    assert database_state(harness, ARCHIVE, REPOINTED, *CHILD_TABLES) == before
    assert harness.pair_uniques()[0].constraint_name == CANONICAL_UNIQUE_NAME
    succeed(harness.cli("upgrade", "head"))
    succeed(harness.cli("downgrade", "-1"))
    assert database_state(harness, *CHILD_TABLES) == at_baseline


@pytest.mark.parametrize("rebuild", ["concurrently", "in_transaction"])
def test_indexes_rebuilt_for_a_failed_downgrade_are_dropped_again(harness, rebuild):
    """The seed fix's index is rebuilt concurrently before the downgrade's one transaction (or
    inside it). When that transaction fails (here a user trigger rejects a restored row), the
    rebuilt index is dropped again (or rolled back with it): the schema is exactly as before
    the downgrade, the revision unchanged."""
    harness.build_state("seedindex")
    harness.upgrade(BASELINE)
    succeed(harness.cli("upgrade", "head"))
    harness.execute(
        f"INSERT INTO {ARCHIVE} SELECT c.*, c.id, now(), 'test' FROM {TABLE} c LIMIT 1;"
        f" UPDATE {ARCHIVE} SET id = gen_random_uuid();"
        "CREATE FUNCTION public.no_inserts() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'inserts are closed today'; END $$;"
        "CREATE TRIGGER no_inserts BEFORE INSERT ON public.meta_assets_cache"
        " FOR EACH ROW EXECUTE FUNCTION public.no_inserts()"
    )
    before = database_state(harness, ARCHIVE)

    line = one_failed_line(harness.cli("-x", f"downgrade_rebuild={rebuild}", "downgrade", "-1"))

    assert "inserts are closed today" in line
    assert database_state(harness, ARCHIVE) == before
    assert [u.index_name for u in harness.pair_uniques()] == [CANONICAL_UNIQUE_NAME]


# 5. Duplicates that keep arriving.


def test_the_upgrade_completes_while_duplicates_keep_arriving(drifted):
    """A writer inserts duplicate keys of kept rows, ~50 a second, all through the upgrade: it
    completes; each duplicate written after the guard is rejected as the constraint would
    (unique_violation), no other write fails, nothing is lost."""
    harness = drifted
    rows_before = harness.table_rows()
    keys = harness.rows(
        "SELECT workspace_id::text, phone_number_id FROM public.meta_assets_cache"
        f" WHERE id::text IN ({SURVIVORS})"
    )
    stop = threading.Event()
    accepted, rejected, errors = [], [], []

    def write_duplicates() -> None:
        app = Session(libpq_dsn(harness.url))
        try:
            n = 0
            while not stop.is_set():
                workspace, phone = keys[n % len(keys)]
                n += 1
                try:
                    accepted.append(
                        app.run(
                            "INSERT INTO public.meta_assets_cache (workspace_id,"
                            " phone_number_id, updated_at)"
                            " VALUES (%s, %s, '2000-01-01') RETURNING id::text",
                            workspace,
                            phone,
                        )[0][0]
                    )
                except psycopg2.errors.UniqueViolation as error:
                    rejected.append(error.diag.constraint_name)
                except Exception as error:  # any other failure fails the test
                    errors.append(repr(error))
                time.sleep(0.02)
        finally:
            app.close()

    writer = threading.Thread(target=write_duplicates, daemon=True)
    writer.start()
    wait_until("the writer to start", lambda: accepted)
    result = harness.cli("upgrade", "head")
    stop.set()
    writer.join(timeout=30)

    succeed(result)
    assert errors == []
    assert rejected and set(rejected) == {CANONICAL_UNIQUE_NAME}
    assert not harness.guard_exists()
    table_and_archive = {row[0] for row in harness.rows(f"SELECT id::text FROM {TABLE}")}
    table_and_archive |= {row[0] for row in harness.rows(f"SELECT id::text FROM {ARCHIVE}")}
    assert table_and_archive == rows_before.keys() | set(accepted)


def test_a_crash_with_the_guard_in_place_is_cleaned_up_by_the_rerun(drifted):
    """Killed while the guard is in place: a re-run removes it and converges, and the downgrade
    is exact; the guard never outlives the run that needs it."""
    harness = drifted
    before = database_state(harness)
    rows_before = harness.table_rows()
    survivors = {row[0] for row in harness.rows(SURVIVORS)}
    loser = losers(harness)[0]
    row_lock = holding(harness, f"SELECT 1 FROM {TABLE} WHERE id = '{loser}' FOR UPDATE")
    try:
        running = start_alembic("upgrade", "head", env={"DATABASE_URL": harness.url})
        wait_until(
            "the move to wait for the locked row",
            lambda: migrator_waiting_on_lock(harness, "DO $move$%"),
            migrator=running,
        )
        crash_migrator(harness, running)
    finally:
        row_lock.rollback()
        row_lock.close()
    assert harness.guard_exists()

    succeed(harness.cli("upgrade", "head"))
    assert not harness.guard_exists()
    assert_canonical(harness, rows_before, survivors)
    succeed(harness.cli("downgrade", "-1"))
    assert database_state(harness) == before


# 6. Preflight tells all of this up front.


def test_preflight_reports_what_surrounds_the_table(drifted):
    harness = drifted
    harness.execute(
        CHILDREN + SOFT_DELETE + "ALTER TABLE public.meta_assets_cache ADD COLUMN notes text"
    )
    harness.execute("CREATE PUBLICATION app_realtime FOR TABLE public.meta_assets_cache")
    expected_repoint = len(kept_of(harness))

    report = preflight_report(harness)
    by_name = {fk["name"]: fk for fk in report["foreign_keys"]}
    assert by_name["asset_notes_asset_id_fkey"]["on_delete"] == "CASCADE"
    assert by_name["asset_links_asset_id_fkey"]["on_delete"] == "SET NULL"
    assert all(fk["rows_to_repoint"] == expected_repoint for fk in report["foreign_keys"])
    around = "\n".join(report["surroundings"])
    assert "user trigger soft_delete (BEFORE DELETE FOR EACH ROW) fires" in around
    assert "publication app_realtime" in around
    assert set(report["unknown_columns"]) == {"deleted_at", "notes"}
