"""The offline script: what `alembic upgrade head --sql` writes for a DBA to run with psql.

Offline there is no connection, so every decision that depends on what the database holds (which
uniques the pair has, which tables the baseline must create, which steps the ledger recorded) is
made by the database itself, in plpgsql DO blocks. The script converges every starting state to
the same end state as the online path and writes the same archive and ledger, so either path's
downgrade can undo the other's upgrade.

The one difference: CREATE INDEX CONCURRENTLY cannot run inside a DO block or a transaction, so
the offline script builds the unique index with a plain CREATE UNIQUE INDEX, under a SHARE ROW
EXCLUSIVE lock that blocks the table's writes (not its reads) until the script's transaction
commits. Each revision is one transaction: an error rolls all of it back.
"""

from alembic_lossless_unique.archive import (
    ARCHIVE_REASON,
    CREATE_ARCHIVE_SQL,
    list_rows_to_archive_sql,
    move_listed_rows_sql,
)
from alembic_lossless_unique.catalog import unique_indexes_with_two_keys_sql
from alembic_lossless_unique.locks import MIGRATOR_LOCK_KEY
from alembic_lossless_unique.names import (
    API_ROLES,
    ARCHIVE,
    BASELINE_LEDGER,
    CANONICAL_UNIQUE_NAME,
    LEDGER_SCHEMA,
    ROWS_TO_ARCHIVE,
    SEED_INDEX_NAME,
    TABLE,
    UNIQUE_PAIR_LEDGER,
)
from alembic_lossless_unique.settings import MigrationSettings

CANONICAL = CANONICAL_UNIQUE_NAME

HEADER = """\
-- meta_assets_cache migrations, offline script (alembic --sql), revision {revision}.
-- Run it with: psql -X -v ON_ERROR_STOP=1 -f THIS_FILE "$DATABASE_URL"
-- or paste it whole into the Supabase SQL editor. Decisions that depend on what the database
-- holds run in the database, in DO blocks. Unlike the online `alembic upgrade`, this script
-- builds the unique index WITHOUT CONCURRENTLY (a DO block runs inside a transaction): the
-- table's writes are blocked while the index builds, until this revision's COMMIT. Reads go on
-- until the short ACCESS EXCLUSIVE step at the end. Run it in a quiet moment.
"""

# How long one statement may queue for a table lock; the app's queries queue behind it. There
# are no retries offline: a timeout rolls the revision back whole, and the script can be re-run.
LOCK_TIMEOUT = "5s"

# First, wait for an online migrator of this database (it holds the same key as a session lock),
# then bound every lock wait. No statement_timeout: the index build takes as long as the table
# needs, and cancelling it half way would only roll everything back.
MIGRATOR_LOCK = f"""\
SELECT pg_advisory_xact_lock({MIGRATOR_LOCK_KEY[0]}, {MIGRATOR_LOCK_KEY[1]});

SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';

SET LOCAL statement_timeout = 0;"""

# Written once at the top of every script by env.py, before alembic's own statements.
PREAMBLE = """\
-- squawk-ignore-file prefer-robust-stmts, prefer-text-field
-- (Both for alembic's own `CREATE TABLE alembic_version (version_num VARCHAR(32) ...)`, which
-- alembic writes, as it defines it, only when the database has no version table yet. The
-- revisions' own SQL is linted without these two ignores: tests/test_lint.py.)"""

_ROLES_ARRAY = "ARRAY[" + ", ".join(f"'{role}'" for role in API_ROLES) + "]"


def _revoke_from_api_roles(on: str) -> str:
    return f"""\
DO $offline$
DECLARE
    api_role text;
BEGIN
    FOR api_role IN SELECT rolname FROM pg_roles WHERE rolname = ANY ({_ROLES_ARRAY})
                     ORDER BY rolname LOOP
        EXECUTE format('REVOKE ALL ON {on} FROM %I', api_role);
    END LOOP;
END
$offline$;"""


def _statements(ddl: str) -> str:
    """The baseline's DDL (statements split by ';') as plpgsql statements."""
    return "\n".join(
        f"        {statement.strip()};" for statement in ddl.split(";") if statement.strip()
    )


def baseline_upgrade_sql(create_workspaces: str, create_meta_assets_cache: str) -> str:
    """Revision 0001: the ledger schema, and the two tables when (and only when) missing."""
    return f"""\
{HEADER.format(revision="0001 (baseline)")}
{MIGRATOR_LOCK}

CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA};

REVOKE ALL ON SCHEMA {LEDGER_SCHEMA} FROM PUBLIC;

{_revoke_from_api_roles(f"SCHEMA {LEDGER_SCHEMA}")}

CREATE TABLE IF NOT EXISTS {BASELINE_LEDGER} (
    table_name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

DO $offline$
BEGIN
    IF to_regclass('public.workspaces') IS NULL THEN
{_statements(create_workspaces)}
        INSERT INTO {BASELINE_LEDGER} (table_name) VALUES ('workspaces') ON CONFLICT DO NOTHING;
        RAISE NOTICE 'created public.workspaces';
    END IF;
    IF to_regclass('{TABLE}') IS NULL THEN
{_statements(create_meta_assets_cache)}
        INSERT INTO {BASELINE_LEDGER} (table_name)
        VALUES ('meta_assets_cache') ON CONFLICT DO NOTHING;
        RAISE NOTICE 'created {TABLE}';
    ELSE
        RAISE NOTICE 'adopted the existing {TABLE} unchanged';
    END IF;
END
$offline$"""


def baseline_downgrade_sql() -> str:
    """Revision 0001 undone: drop only the tables the baseline created, then its ledger."""
    return f"""\
{HEADER.format(revision="0001 (baseline), downgrade")}
{MIGRATOR_LOCK}

DO $offline$
DECLARE
    created text[] := ARRAY[]::text[];
BEGIN
    IF to_regclass('{UNIQUE_PAIR_LEDGER}') IS NOT NULL THEN
        RAISE EXCEPTION 'an interrupted upgrade of revision 0002 left its ledger behind:'
            ' run `alembic upgrade head` to finish it, then downgrade';
    END IF;
    IF to_regclass('{BASELINE_LEDGER}') IS NOT NULL THEN
        EXECUTE 'SELECT coalesce(array_agg(table_name), ARRAY[]::text[])'
                ' FROM {BASELINE_LEDGER}' INTO created;
    END IF;
    -- Dependants first; tables the baseline adopted are never dropped.
    IF 'meta_assets_cache' = ANY (created) THEN
        DROP TABLE IF EXISTS {TABLE};
        RAISE NOTICE 'dropped {TABLE}, which the baseline had created';
    END IF;
    IF 'workspaces' = ANY (created) THEN
        DROP TABLE IF EXISTS public.workspaces;
        RAISE NOTICE 'dropped public.workspaces, which the baseline had created';
    END IF;
    DROP TABLE IF EXISTS {BASELINE_LEDGER};
END
$offline$;

-- The package's own private schema, which no client uses; RESTRICT (the default) refuses if
-- anything but the baseline's ledger was left in it.
-- squawk-ignore ban-drop-schema
DROP SCHEMA IF EXISTS {LEDGER_SCHEMA}"""


_REQUIRE_OWNER = f"""\
DO $offline$
DECLARE
    owner_row record;
BEGIN
    SELECT pg_get_userbyid(c.relowner) AS owner,
           pg_has_role(current_user, c.relowner, 'USAGE')
             OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS may_alter,
           current_user AS role
      INTO owner_row
      FROM pg_class c WHERE c.oid = to_regclass('{TABLE}');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table {TABLE} does not exist in database %: check you are connected'
            ' to the app''s database', current_database();
    END IF;
    IF NOT owner_row.may_alter THEN
        RAISE EXCEPTION 'role % cannot alter {TABLE} (owned by %):'
            ' run the migration as the table''s owner', owner_row.role, owner_row.owner;
    END IF;
END
$offline$;"""


# The uniques whose key columns are exactly the pair, in either order: catalog.pair_uniques.
_PAIR_UNIQUES = f"""\
    CREATE TEMPORARY TABLE offline_pair_uniques ON COMMIT DROP AS
    SELECT found.*,
           found.valid AND found.plain AS serves,
           found.columns = ARRAY['workspace_id', 'phone_number_id'] AS exact,
           format('%s %s (%s)%s',
                  CASE WHEN found.constraint_name IS NULL THEN 'index'
                       ELSE 'constraint ' || found.constraint_name END,
                  found.index_name, array_to_string(found.columns, ', '),
                  CASE WHEN found.valid THEN '' ELSE ' (INVALID)' END) AS description
      FROM (
{unique_indexes_with_two_keys_sql(f"'{TABLE}'::regclass")}
      ) AS found
     WHERE ARRAY(SELECT c FROM unnest(found.columns) AS c ORDER BY c COLLATE "C")
           = ARRAY['phone_number_id', 'workspace_id'];"""

# The offline script does not read -x: it uses the default.
DEDUPE_WORK_MEM = MigrationSettings.dedupe_work_mem

# archive.archive_duplicates's statements, with the live table's columns filled in by format().
_ARCHIVE_DUPLICATES = f"""\
        -- As online: more work_mem for this transaction, never less than the DBA configured.
        PERFORM set_config('work_mem', '{DEDUPE_WORK_MEM}', true)
          WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('{DEDUPE_WORK_MEM}');
        DROP TABLE IF EXISTS {ROWS_TO_ARCHIVE};
        {list_rows_to_archive_sql().strip()};
        ANALYZE {ROWS_TO_ARCHIVE};
        EXECUTE format($archive${move_listed_rows_sql("%1$s", "%2$s", reason="$1")}
            SELECT count(DISTINCT kept_id), count(*) FROM archived
            $archive$, column_list, removed_columns)
          INTO groups, archived_rows
          USING '{ARCHIVE_REASON}'::text;
        DROP TABLE {ROWS_TO_ARCHIVE};"""

_COLUMN_LISTS = f"""\
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum),
           string_agg('c.' || quote_ident(attname), ', ' ORDER BY attnum)
      INTO column_list, removed_columns
      FROM pg_attribute
     WHERE attrelid = '{TABLE}'::regclass AND attnum > 0 AND NOT attisdropped;"""


def _record(action: str, detail: str) -> str:
    return f"INSERT INTO {UNIQUE_PAIR_LEDGER} (action, detail) VALUES ('{action}', {detail});"


def unique_pair_upgrade_sql() -> str:
    """Revision 0002: from whatever uniques the pair has to the canonical constraint."""
    return f"""\
{HEADER.format(revision="0002 (unique pair)")}
{MIGRATOR_LOCK}

{_REQUIRE_OWNER}

CREATE TABLE IF NOT EXISTS {UNIQUE_PAIR_LEDGER} (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action text NOT NULL,
    detail jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

{CREATE_ARCHIVE_SQL};

ALTER TABLE {ARCHIVE} ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON TABLE {ARCHIVE} FROM PUBLIC;

{_revoke_from_api_roles(f"TABLE {ARCHIVE}")}

DO $offline$
DECLARE
    canonical constant text := '{CANONICAL}';
    seed_index constant text := '{SEED_INDEX_NAME}';
    unique_found record;
    target record;
    has_target boolean := false;
    ours boolean;
    column_list text;
    removed_columns text;
    groups bigint;
    archived_rows bigint;
BEGIN
{_PAIR_UNIQUES}

    IF NOT EXISTS (SELECT 1 FROM {UNIQUE_PAIR_LEDGER}) THEN
        {
        _record(
            "found",
            '''jsonb_build_object('uniques', coalesce(
            (SELECT jsonb_agg(description ORDER BY index_name) FROM offline_pair_uniques),
            '[]'::jsonb))''',
        )
    }
    ELSE
        RAISE NOTICE 'resuming an interrupted run';
    END IF;

    -- INVALID indexes left by an interrupted concurrent build.
    FOR unique_found IN SELECT * FROM offline_pair_uniques
                         WHERE NOT valid AND constraint_name IS NULL ORDER BY index_name LOOP
        {_record("dropped_invalid", "jsonb_build_object('index_name', unique_found.index_name)")}
        EXECUTE format('DROP INDEX IF EXISTS public.%I', unique_found.index_name);
        RAISE NOTICE 'dropped INVALID index %', unique_found.index_name;
    END LOOP;

    -- The target: the canonical constraint, else a constraint to rename, else an index to
    -- promote (the canonical name first, then the seed fix's index, then by name).
    SELECT * INTO target FROM offline_pair_uniques
     WHERE serves AND exact AND constraint_name = canonical ORDER BY index_name LIMIT 1;
    has_target := FOUND;
    IF NOT has_target THEN
        SELECT * INTO target FROM offline_pair_uniques
         WHERE serves AND exact AND constraint_name IS NOT NULL ORDER BY index_name LIMIT 1;
        has_target := FOUND;
    END IF;
    IF NOT has_target THEN
        SELECT * INTO target FROM offline_pair_uniques
         WHERE serves AND exact AND constraint_name IS NULL
         ORDER BY CASE index_name WHEN canonical THEN 0 WHEN seed_index THEN 1 ELSE 2 END,
                  index_name
         LIMIT 1;
        has_target := FOUND;
    END IF;

    IF NOT has_target THEN
        IF EXISTS (SELECT 1 FROM offline_pair_uniques WHERE valid AND index_name = canonical)
        THEN
            RAISE EXCEPTION 'index % exists but cannot become the canonical constraint (%):'
                ' rename or drop it, then re-run', canonical,
                (SELECT definition FROM offline_pair_uniques WHERE index_name = canonical);
        END IF;
        -- Writes wait from here to COMMIT, so no duplicate can arrive between archive and build.
        LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE;
{_COLUMN_LISTS}
{_ARCHIVE_DUPLICATES}
        RAISE NOTICE 'archived % rows from % duplicate groups (moved to {ARCHIVE})',
            archived_rows, groups;
        {_record("built", "jsonb_build_object('index_name', canonical)")}
        -- Not CONCURRENTLY: a DO block runs inside a transaction.
        CREATE UNIQUE INDEX {CANONICAL} ON {TABLE} USING btree (workspace_id, phone_number_id);
        ALTER TABLE {TABLE} ADD CONSTRAINT {CANONICAL} UNIQUE USING INDEX {CANONICAL};
        RAISE NOTICE 'built unique index % and promoted it to the constraint', canonical;
    ELSIF target.constraint_name = canonical THEN
        RAISE NOTICE 'the canonical constraint is already there: nothing to build';
    ELSIF target.constraint_name IS NOT NULL THEN
        {_record("renamed", "jsonb_build_object('constraint_name', target.constraint_name)")}
        EXECUTE format('ALTER TABLE {TABLE} RENAME CONSTRAINT %I TO %I',
                       target.constraint_name, canonical);
        RAISE NOTICE 'renamed constraint % to %', target.constraint_name, canonical;
    ELSE
        ours := target.index_name = canonical
                AND EXISTS (SELECT 1 FROM {UNIQUE_PAIR_LEDGER} WHERE action = 'built');
        IF NOT ours THEN
            {
        _record(
            "promoted",
            "jsonb_build_object('index_name', target.index_name,"
            " 'definition', target.definition, 'comment', target.comment)",
        )
    }
        END IF;
        EXECUTE format('ALTER TABLE {TABLE} ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                       canonical, target.index_name);
        IF target.comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON INDEX public.%I IS NULL', canonical);
        END IF;
        RAISE NOTICE 'promoted index % to constraint %', target.index_name, canonical;
    END IF;

    -- Every other unique that serves the upsert is redundant now.
    FOR unique_found IN SELECT * FROM offline_pair_uniques
                         WHERE serves AND (NOT has_target OR index_name <> target.index_name)
                         ORDER BY index_name LOOP
        {
        _record(
            "dropped_redundant",
            "jsonb_build_object('index_name', unique_found.index_name,"
            " 'constraint_name', unique_found.constraint_name,"
            " 'definition', unique_found.definition, 'comment', unique_found.comment)",
        )
    }
        IF unique_found.constraint_name IS NOT NULL THEN
            EXECUTE format('ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS %I',
                           unique_found.constraint_name);
        ELSE
            EXECUTE format('DROP INDEX IF EXISTS public.%I', unique_found.index_name);
        END IF;
        RAISE NOTICE 'dropped redundant %', unique_found.description;
    END LOOP;

    FOR unique_found IN SELECT * FROM offline_pair_uniques WHERE valid AND NOT plain LOOP
        RAISE NOTICE 'left alone %: partial or expression unique', unique_found.description;
    END LOOP;
END
$offline$"""


def _recreate(detail: str) -> str:
    """convergence._recreate: the unique a step's detail describes, unless its constraint is
    back already."""
    table_oid = f"'{TABLE}'::regclass"
    return f"""\
        IF {detail}->>'constraint_name' IS NULL OR NOT EXISTS (
               SELECT 1 FROM pg_constraint
                WHERE conrelid = {table_oid} AND conname = {detail}->>'constraint_name') THEN
            index_valid := (SELECT i.indisvalid AND i.indisready
                              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                             WHERE i.indrelid = {table_oid}
                               AND c.relname = {detail}->>'index_name');
            IF index_valid IS FALSE THEN
                EXECUTE format('DROP INDEX IF EXISTS public.%I', {detail}->>'index_name');
            END IF;
            IF index_valid IS NOT TRUE THEN
                EXECUTE {detail}->>'definition';
            END IF;
            IF {detail}->>'comment' IS NOT NULL THEN
                EXECUTE format('COMMENT ON INDEX public.%I IS %L',
                               {detail}->>'index_name', {detail}->>'comment');
            END IF;
            IF {detail}->>'constraint_name' IS NOT NULL THEN
                EXECUTE format('ALTER TABLE {TABLE} ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                               {detail}->>'constraint_name', {detail}->>'index_name');
            END IF;
            RAISE NOTICE 'recreated %', {detail}->>'index_name';
        END IF;"""


def unique_pair_downgrade_sql() -> str:
    """Revision 0002 undone from its ledger, whichever path (online or offline) wrote it."""
    return f"""\
{HEADER.format(revision="0002 (unique pair), downgrade")}
{MIGRATOR_LOCK}

{_REQUIRE_OWNER}

DO $offline$
DECLARE
    canonical constant text := '{CANONICAL}';
    step record;
    detail jsonb;
    index_valid boolean;
    column_list text;
    restored bigint;
BEGIN
    IF to_regclass('{UNIQUE_PAIR_LEDGER}') IS NOT NULL THEN
        -- Recreate the uniques the upgrade dropped as redundant, latest first.
        FOR step IN EXECUTE 'SELECT action, detail FROM {UNIQUE_PAIR_LEDGER} ORDER BY seq DESC'
        LOOP
            detail := step.detail;
            IF step.action = 'dropped_redundant' THEN
{_recreate("detail")}
            END IF;
        END LOOP;

        -- Undo the canonical constraint: the latest of built, renamed or promoted.
        FOR step IN EXECUTE 'SELECT action, detail FROM {UNIQUE_PAIR_LEDGER}'
                            ' WHERE action IN (''built'', ''renamed'', ''promoted'')'
                            ' ORDER BY seq DESC LIMIT 1'
        LOOP
            detail := step.detail;
            IF step.action = 'built' THEN
                EXECUTE format('ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS %I', canonical);
                EXECUTE format('DROP INDEX IF EXISTS public.%I', canonical);
            ELSIF step.action = 'renamed' THEN
                IF NOT EXISTS (SELECT 1 FROM pg_constraint
                                WHERE conrelid = '{TABLE}'::regclass
                                  AND conname = detail->>'constraint_name') THEN
                    EXECUTE format('ALTER TABLE {TABLE} RENAME CONSTRAINT %I TO %I',
                                   canonical, detail->>'constraint_name');
                END IF;
            ELSIF detail->>'index_name' = canonical THEN
                -- Same name: the constraint (and its index) go before the original returns.
                EXECUTE format('ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS %I', canonical);
{_recreate("detail")}
            ELSE
                -- The original first, so the pair is never without a unique.
{_recreate("detail")}
                EXECUTE format('ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS %I', canonical);
            END IF;
        END LOOP;
    END IF;

    -- Every archived row back, unchanged.
    IF to_regclass('{ARCHIVE}') IS NOT NULL THEN
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO column_list
          FROM pg_attribute
         WHERE attrelid = '{TABLE}'::regclass AND attnum > 0 AND NOT attisdropped;
        EXECUTE format('WITH moved AS (DELETE FROM {ARCHIVE} RETURNING %1$s),'
                       ' restored AS (INSERT INTO {TABLE} (%1$s)'
                       ' SELECT %1$s FROM moved RETURNING 1)'
                       ' SELECT count(*) FROM restored', column_list)
          INTO restored;
        RAISE NOTICE 'restored % archived rows', restored;
    END IF;
    DROP TABLE IF EXISTS {ARCHIVE};
    DROP TABLE IF EXISTS {UNIQUE_PAIR_LEDGER};
END
$offline$"""
