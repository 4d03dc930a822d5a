"""The offline script: what `alembic upgrade head --sql` writes for a DBA to run with psql.

Offline there is no connection, so every decision that depends on what the database holds is
made by the database itself, in plpgsql DO blocks, from the same text the online path runs: the
plan query (plan.py), the checks (checks.py), the archive, the dedupe and the restore. The script
converges every starting state to the same end state as the online path and writes the same
archive and ledger, so either path's downgrade can undo the other's upgrade.

The one difference: CREATE INDEX CONCURRENTLY cannot run inside a transaction, so the script
builds the unique index with a plain CREATE UNIQUE INDEX, under a SHARE ROW EXCLUSIVE lock that
blocks the table's writes (not its reads) until the revision's COMMIT; no duplicate can arrive
meanwhile, so the script needs no guard. Each revision is one transaction: an error rolls all of
it back.
"""

from alembic_lossless_unique import checks, dedupe, indexes, ledger, private_schema, restore
from alembic_lossless_unique.locks import MIGRATOR_LOCK_KEY
from alembic_lossless_unique.plan import plan_sql
from alembic_lossless_unique.settings import MigrationSettings
from alembic_lossless_unique.sqltext import dollar_quoted, literal
from alembic_lossless_unique.surroundings import surroundings_sql
from alembic_lossless_unique.target import UniqueTarget

# How long one statement may queue for a table lock; the app's queries queue behind it. There
# are no retries offline: a timeout rolls the revision back whole, and the script can be re-run.
LOCK_TIMEOUT = "5s"

# The offline script does not read -x: it uses the default.
DEDUPE_WORK_MEM = MigrationSettings.dedupe_work_mem

# pg_dump's rule: nothing the role's search_path holds runs in the migration. SET LOCAL: the
# script's transaction ends it.
SESSION = f"""\
SET LOCAL search_path = pg_catalog, pg_temp;

SELECT pg_catalog.pg_advisory_xact_lock({MIGRATOR_LOCK_KEY[0]}, {MIGRATOR_LOCK_KEY[1]});

SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';

SET LOCAL statement_timeout = 0"""


def header(title: str) -> str:
    return f"""\
-- {title}
-- Run it with: psql -X -v ON_ERROR_STOP=1 -f THIS_FILE "$DATABASE_URL"
-- or paste it whole into the Supabase SQL editor. Decisions that depend on what the database
-- holds run in the database, in DO blocks. Unlike the online `alembic upgrade`, this script
-- builds a unique index WITHOUT CONCURRENTLY (a DO block runs inside a transaction): the
-- table's writes are blocked while the index builds, until this revision's COMMIT. Reads go on
-- until the short ACCESS EXCLUSIVE step at the end. Run it in a quiet moment.
"""


def private_schema_sql(schema: str) -> str:
    """Create the private schema unless it exists, then refuse it unless it is ours."""
    body = f"""
DECLARE
    problem text := {private_schema.problem_sql(literal(schema))};
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)}, MESSAGE = problem;
    END IF;
END
"""
    return (
        f"{private_schema.create_sql(schema)};\n\n"
        f"DO {dollar_quoted(body, 'private_schema')};\n\n"
        f"{private_schema.lock_down_sql(schema)}"
    )


def _announce(target: UniqueTarget) -> str:
    body = f"""
DECLARE
    neighbour record;
BEGIN
    FOR neighbour IN {surroundings_sql(target)} LOOP
        RAISE NOTICE '%: % (%)', pg_catalog.replace(neighbour.kind, '_', ' '), neighbour.name,
                     neighbour.detail;
    END LOOP;
END
"""
    return f"DO {dollar_quoted(body, 'announce')}"


def _record(target: UniqueTarget, action: str, detail: str) -> str:
    return f"INSERT INTO {target.ledger} (action, detail) VALUES ({literal(action)}, {detail});"


def _recreation_record(variable: str) -> str:
    return (
        f"pg_catalog.jsonb_build_object('index_name', {variable}.index_name,"
        f" 'constraint_name', {variable}.constraint_name,"
        f" 'definition', {variable}.definition, 'comment', {variable}.comment)"
    )


def upgrade_sql(target: UniqueTarget) -> str:
    """ensure_unique_constraint: from whatever uniques the key has to the target constraint."""
    name = literal(target.constraint_name)
    table = target.qualified_table
    index_of = f"pg_catalog.format('%I.%I', {literal(target.schema)}, step.index_name)"
    body = f"""
DECLARE
    built_before boolean := {ledger.built_before_sql(target)};
    step record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {target.ledger}) THEN
        {
        _record(
            target,
            "found",
            f'''pg_catalog.jsonb_build_object('uniques', coalesce(
            (SELECT pg_catalog.jsonb_agg(p.description ORDER BY p.index_name)
               FROM ({plan_sql(target, "built_before")}) AS p
              WHERE p.action NOT IN ('build', 'refuse')), '[]'::jsonb))''',
        )
    }
    ELSE
        RAISE NOTICE 'resuming an interrupted run';
    END IF;
    FOR step IN {plan_sql(target, "built_before")} LOOP
        CASE step.action
        WHEN 'refuse' THEN
            RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)}, MESSAGE = step.description;
        WHEN 'drop_invalid' THEN
            {
        _record(
            target,
            "dropped_invalid",
            "pg_catalog.jsonb_build_object('index_name', step.index_name)",
        )
    }
            EXECUTE 'DROP INDEX IF EXISTS ' || {index_of};
            RAISE NOTICE 'dropped INVALID index %', step.index_name;
        WHEN 'keep' THEN
            RAISE NOTICE 'constraint % is already there: nothing to build', {name};
        WHEN 'rename' THEN
            {
        _record(
            target,
            "renamed",
            "pg_catalog.jsonb_build_object('constraint_name', step.constraint_name)",
        )
    }
            EXECUTE pg_catalog.format('ALTER TABLE {table} RENAME CONSTRAINT %I TO %I',
                                      step.constraint_name, {name});
            RAISE NOTICE 'renamed constraint % to %', step.constraint_name, {name};
        WHEN 'promote' THEN
            IF NOT step.ours THEN
                {_record(target, "promoted", _recreation_record("step"))}
            END IF;
            EXECUTE pg_catalog.format('ALTER TABLE {table} ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                                      {name}, step.index_name);
            IF step.comment IS NOT NULL THEN
                EXECUTE {
        literal(indexes.set_index_comment_sql(target, target.constraint_name, None))
    };
            END IF;
            RAISE NOTICE 'promoted index % to constraint %', step.index_name, {name};
        WHEN 'build' THEN
            -- Writes wait from here to COMMIT: no duplicate can arrive between dedupe and build.
            EXECUTE {literal(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")};
            EXECUTE {literal(dedupe.list_sql(target, DEDUPE_WORK_MEM))};
            EXECUTE {literal(dedupe.move_sql(target))};
            {_record(target, "built", f"pg_catalog.jsonb_build_object('index_name', {name})")}
            -- Not CONCURRENTLY: a DO block runs inside a transaction.
            EXECUTE {literal(indexes.unique_index_definition(target, target.constraint_name))};
            EXECUTE {literal(indexes.promote_sql(target, target.constraint_name))};
            RAISE NOTICE 'archived duplicates, built unique index % and promoted it', {name};
        WHEN 'drop_redundant' THEN
            {_record(target, "dropped_redundant", _recreation_record("step"))}
            IF step.constraint_name IS NOT NULL THEN
                EXECUTE pg_catalog.format('ALTER TABLE {table} DROP CONSTRAINT IF EXISTS %I',
                                          step.constraint_name);
            ELSE
                EXECUTE 'DROP INDEX IF EXISTS ' || {index_of};
            END IF;
            RAISE NOTICE 'dropped redundant %', step.description;
        ELSE
            RAISE NOTICE 'left alone %: partial or expression unique', step.description;
        END CASE;
    END LOOP;
END
"""
    return f"""\
{header(f"unique constraint {target.constraint_name} on {target.key_description}, offline")}
{SESSION};

{checks.upgrade_checks_sql(target, refuse=True)};

{private_schema_sql(target.private_schema)};

{ledger.create_ledger_sql(target)};

{dedupe.archive_sql(target)};

{private_schema.lock_down_sql(target.private_schema)};

{_announce(target)};

DO {dollar_quoted(body, "offline")}"""


def _recreate(target: UniqueTarget, detail: str) -> str:
    """The unique a step's detail describes, unless its constraint is back already (plpgsql)."""
    table = target.qualified_table
    return f"""
        IF {detail}->>'constraint_name' IS NULL OR NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_constraint
                WHERE conrelid = {literal(table)}::pg_catalog.regclass
                  AND conname = {detail}->>'constraint_name') THEN
            EXECUTE pg_catalog.format('DROP INDEX IF EXISTS %I.%I', {literal(target.schema)},
                                      {detail}->>'index_name');
            EXECUTE {detail}->>'definition';
            IF {detail}->>'comment' IS NOT NULL THEN
                EXECUTE pg_catalog.format('COMMENT ON INDEX %I.%I IS %L', {literal(target.schema)},
                                          {detail}->>'index_name', {detail}->>'comment');
            END IF;
            IF {detail}->>'constraint_name' IS NOT NULL THEN
                EXECUTE pg_catalog.format(
                    'ALTER TABLE {table} ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                    {detail}->>'constraint_name', {detail}->>'index_name');
            END IF;
            RAISE NOTICE 'recreated %', {detail}->>'index_name';
        END IF;"""


def downgrade_sql(target: UniqueTarget) -> str:
    """undo_unique_constraint, from the ledger, whichever path (online or offline) wrote it."""
    table = target.qualified_table
    name = literal(target.constraint_name)
    latest_constraint_step = (
        f"SELECT action, detail FROM {target.ledger}"
        " WHERE action IN ('built', 'renamed', 'promoted') ORDER BY seq DESC LIMIT 1"
    )
    body = f"""
DECLARE
    step record;
    detail jsonb;
BEGIN
    IF pg_catalog.to_regclass({literal(target.ledger)}) IS NULL THEN
        RAISE NOTICE 'nothing to undo: no ledger for %', {name};
        RETURN;
    END IF;
    EXECUTE {literal(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")};
    -- The uniques the upgrade dropped as redundant, latest first.
    FOR step IN EXECUTE {literal(f"SELECT action, detail FROM {target.ledger} ORDER BY seq DESC")}
    LOOP
        detail := step.detail;
        IF step.action = 'dropped_redundant' THEN
{_recreate(target, "detail")}
        END IF;
    END LOOP;
    -- The target constraint: the latest of built, renamed or promoted, undone.
    FOR step IN EXECUTE {literal(latest_constraint_step)}
    LOOP
        detail := step.detail;
        IF step.action = 'built' THEN
            EXECUTE {literal(indexes.drop_constraint_sql(target, target.constraint_name))};
        ELSIF step.action = 'renamed' THEN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                            WHERE conrelid = {literal(table)}::pg_catalog.regclass
                              AND conname = detail->>'constraint_name') THEN
                EXECUTE pg_catalog.format('ALTER TABLE {table} RENAME CONSTRAINT %I TO %I',
                                          {name}, detail->>'constraint_name');
            END IF;
        ELSE
            -- The constraint (and its index) go before the original returns: it may share
            -- the name, and the lock is held to the end anyway.
            EXECUTE {literal(indexes.drop_constraint_sql(target, target.constraint_name))};
{_recreate(target, "detail")}
        END IF;
    END LOOP;
END
"""
    return f"""\
{header(f"undo unique constraint {target.constraint_name} on {target.key_description}, offline")}
{SESSION};

{checks.downgrade_checks_sql(target, refuse=True)};

DO {dollar_quoted(body, "offline")};

{restore.restore_sql(target)};

{restore.cleanup_sql(target)}"""
