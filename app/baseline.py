"""The baseline's mechanics: what must hold before anything is created, the tables an empty
database needs, the ledger of what the baseline created (so its downgrade drops only that), and
the one-time move of a version table left in `public` by the first releases."""

import logging

from alembic_lossless_unique.ddl import private_schema
from alembic_lossless_unique.ddl.dedupe import REFUSED
from alembic_lossless_unique.ddl.sqltext import dollar_quoted, ident, literal, qualified
from alembic_lossless_unique.operations import offline
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from app.names import (
    BASELINE_LEDGER,
    LEGACY_REVISIONS,
    PRIVATE_SCHEMA,
    TABLE,
    TABLE_SCHEMA,
    UNIQUE_PAIR_LEDGER,
    VERSION_TABLE,
)

log = logging.getLogger("alembic_lossless_unique")

CREATE_WORKSPACES = """
CREATE TABLE public.workspaces (
    id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    name text NOT NULL DEFAULT 'ws',
    slug text,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
)
"""

CREATE_META_ASSETS_CACHE = """
CREATE TABLE public.meta_assets_cache (
    id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES public.workspaces(id) ON DELETE CASCADE,
    business_id text NULL,
    waba_id text NULL,
    phone_number_id text NULL,
    display_phone_number text NULL,
    verified_name text NULL,
    quality_rating text NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_synced_at timestamptz NULL,
    last_error text NULL,
    CONSTRAINT meta_assets_cache_workspace_id_phone_number_id_key
        UNIQUE (workspace_id, phone_number_id)
);
CREATE INDEX idx_meta_assets_cache_workspace ON public.meta_assets_cache (workspace_id);
CREATE INDEX idx_meta_assets_cache_ws_waba ON public.meta_assets_cache (workspace_id, waba_id);
CREATE INDEX idx_meta_assets_cache_last_synced
    ON public.meta_assets_cache (workspace_id, last_synced_at DESC NULLS LAST);
ALTER TABLE public.meta_assets_cache ENABLE ROW LEVEL SECURITY
"""

# The tables the baseline creates when missing, dependants last.
TABLES = (("workspaces", CREATE_WORKSPACES), ("meta_assets_cache", CREATE_META_ASSETS_CACHE))

# What the migrating role lacks, as one line naming the role, the owner and what is missing;
# NULL when nothing. Read-only: checked before anything is created.
PRIVILEGE_PROBLEM = f"""(
SELECT CASE
    WHEN c.oid IS NOT NULL AND NOT (pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
                                    OR r.rolsuper)
        THEN pg_catalog.format('role %s cannot alter {TABLE} (owned by %s): run the migration'
                               ' as the table''s owner or a member of its role', current_user,
                               pg_catalog.pg_get_userbyid(c.relowner))
    WHEN c.oid IS NULL AND NOT pg_catalog.has_schema_privilege({literal(TABLE_SCHEMA)}, 'CREATE')
        THEN pg_catalog.format('role %s may not create tables in schema {TABLE_SCHEMA}, and'
                               ' {TABLE} does not exist yet: GRANT CREATE ON SCHEMA'
                               ' {TABLE_SCHEMA} TO %s, or point DATABASE_URL at the app''s'
                               ' database', current_user, current_user)
    ELSE {private_schema.problem_sql(literal(PRIVATE_SCHEMA))}
    END
  FROM pg_catalog.pg_roles r
  LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass({literal(TABLE)})
 WHERE r.rolname = current_user)"""


def require_privileges(db: Database) -> None:
    problem = db.scalar("SELECT " + PRIVILEGE_PROBLEM)
    if problem:
        raise MigrationAbort(problem)


def prepare(db: Database) -> None:
    """Run by env.py under the migrator lock, after its replication refusal and before Alembic
    reads its version table (which env.py then makes sure of, in the private schema): the
    checks first (nothing is created when one fails), then the version table moved from public
    if an earlier release left it there."""
    require_privileges(db)
    if not db.concurrent:
        return  # inside a caller's transaction: nothing is committed early
    if db.relation_exists("public.alembic_version"):
        private_schema.ensure(db, PRIVATE_SCHEMA)
        move_legacy_version_table(db)


def move_legacy_version_table(db: Database) -> None:
    """Earlier releases kept their version table as public.alembic_version, where Supabase's
    API roles can read and change it. Moved once, under the new revision ids, and said so."""
    with db.transaction():
        db.execute(move_legacy_sql())
        db.execute(private_schema.lock_down_sql(PRIVATE_SCHEMA))
    if not db.relation_exists("public.alembic_version"):
        log.info("moved the version table from public.alembic_version to %s", VERSION_TABLE)


def move_legacy_sql() -> str:
    """A DO block doing the move; shared by the online prepare and the offline preamble."""
    mapping = " ".join(
        f"WHEN {literal(old)} THEN {literal(new)}" for old, new in LEGACY_REVISIONS.items()
    )
    body = f"""
DECLARE
    found text[];
BEGIN
    IF pg_catalog.to_regclass('public.alembic_version') IS NULL
       OR pg_catalog.to_regclass({literal(BASELINE_LEDGER)}) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT pg_catalog.array_agg(version_num::text) FROM public.alembic_version'
       INTO found;
    IF found IS NULL OR NOT found <@ {_legacy_ids()} THEN
        RETURN;  -- not this package's: left alone
    END IF;
    CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
        version_num varchar(32) NOT NULL,
        CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
    IF EXISTS (SELECT 1 FROM {VERSION_TABLE}) THEN
        RETURN;  -- already moved: the old table is a leftover, for a person to look at
    END IF;
    INSERT INTO {VERSION_TABLE} (version_num)
    SELECT CASE old {mapping} END FROM pg_catalog.unnest(found) AS old;
    DROP TABLE public.alembic_version;
    RAISE NOTICE 'moved the version table from public.alembic_version to {VERSION_TABLE}';
END
"""
    return f"DO {dollar_quoted(body, 'move_version_table')}"


def _legacy_ids() -> str:
    return "ARRAY[" + ", ".join(literal(old) for old in LEGACY_REVISIONS) + "]::text[]"


def offline_preamble() -> str:
    """Before Alembic's own statements, in a transaction of their own: the checks, the private
    schema its version table lives in (ours, or refused), and the move of a legacy one."""
    check = f"""
DECLARE
    problem text := {PRIVILEGE_PROBLEM};
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = {literal(REFUSED)}, MESSAGE = problem;
    END IF;
END
"""
    return f"""\
-- squawk-ignore-file prefer-text-field
-- (For alembic's own `CREATE TABLE IF NOT EXISTS ...alembic_version (version_num VARCHAR(32)
-- ...)`, as alembic defines it. The revisions' own SQL is linted without this ignore:
-- tests/test_lint.py.)
BEGIN;

{offline.SESSION};

DO {dollar_quoted(check, "privileges")};

{offline.private_schema_sql(PRIVATE_SCHEMA)};

{move_legacy_sql()};

{private_schema.lock_down_sql(PRIVATE_SCHEMA)};

COMMIT;
"""


# Revision 0001's ledger of the tables it created.

CREATE_BASELINE_LEDGER = (
    f"CREATE TABLE IF NOT EXISTS {BASELINE_LEDGER} ("
    " table_name text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT pg_catalog.now())"
)


def created_tables(db: Database) -> set[str]:
    if not db.relation_exists(BASELINE_LEDGER):
        return set()
    return {row.table_name for row in db.rows(f"SELECT table_name FROM {BASELINE_LEDGER}")}


# Revision 0001, online.

INTERRUPTED = (
    "an interrupted upgrade of the unique pair left its ledger behind:"
    " run `alembic upgrade head` to finish it, then downgrade"
)


def upgrade(db: Database) -> None:
    require_privileges(db)
    private_schema.ensure(db, PRIVATE_SCHEMA)
    with db.transaction():
        db.execute(CREATE_BASELINE_LEDGER)
        db.execute(private_schema.lock_down_sql(PRIVATE_SCHEMA))
        for name, ddl in TABLES:
            if db.relation_exists(f"{TABLE_SCHEMA}.{name}"):
                log.info("adopted the existing %s.%s unchanged", TABLE_SCHEMA, name)
                continue
            for statement in ddl.split(";"):
                db.execute(statement)
            db.execute(
                f"INSERT INTO {BASELINE_LEDGER} (table_name) VALUES (:name) ON CONFLICT DO NOTHING",
                {"name": name},
            )
            log.info("created %s.%s", TABLE_SCHEMA, name)


def downgrade(db: Database) -> None:
    if db.relation_exists(UNIQUE_PAIR_LEDGER):
        raise MigrationAbort(INTERRUPTED)
    created = created_tables(db)
    with db.transaction():
        for name, _ in reversed(TABLES):  # dependants first
            if name in created:
                db.execute(f"DROP TABLE IF EXISTS {TABLE_SCHEMA}.{name}")
                log.info("dropped %s.%s, which the baseline had created", TABLE_SCHEMA, name)
        db.execute(f"DROP TABLE IF EXISTS {BASELINE_LEDGER}")
        db.execute(DROP_PRIVATE_SCHEMA_IF_EMPTY)


# The private schema goes with the baseline, unless something still lives there (the version
# table, when env.py keeps it there).
_DROP_PRIVATE_SCHEMA_IF_EMPTY = f"""
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = {literal(PRIVATE_SCHEMA)}) THEN
        DROP SCHEMA IF EXISTS {ident(PRIVATE_SCHEMA)};
    END IF;
END
"""
DROP_PRIVATE_SCHEMA_IF_EMPTY = f"DO {dollar_quoted(_DROP_PRIVATE_SCHEMA_IF_EMPTY, 'schema')}"


# Revision 0001, offline: the same decisions, made by the database.


def _statements(ddl: str) -> str:
    return "\n".join(f"        {part.strip()};" for part in ddl.split(";") if part.strip())


def upgrade_sql() -> str:
    creates = "\n".join(
        f"""    IF pg_catalog.to_regclass({literal(f"{TABLE_SCHEMA}.{name}")}) IS NULL THEN
{_statements(ddl)}
        INSERT INTO {BASELINE_LEDGER} (table_name) VALUES ({literal(name)}) ON CONFLICT DO NOTHING;
        RAISE NOTICE 'created {TABLE_SCHEMA}.{name}';
    ELSE
        RAISE NOTICE 'adopted the existing {TABLE_SCHEMA}.{name} unchanged';
    END IF;"""
        for name, ddl in TABLES
    )
    body = f"\nBEGIN\n{creates}\nEND\n"
    statements = [
        *offline.private_schema_statements(PRIVATE_SCHEMA),
        CREATE_BASELINE_LEDGER,
        private_schema.lock_down_sql(PRIVATE_SCHEMA),
        f"DO {dollar_quoted(body, 'baseline')}",
    ]
    return f"""\
{offline.revision_header("meta_assets_cache baseline")}
{offline.SESSION};

{offline.gated_statements(statements)}"""


def downgrade_sql() -> str:
    drops = "\n".join(
        f"""    IF {literal(name)} = ANY (created) THEN
        DROP TABLE IF EXISTS {qualified(TABLE_SCHEMA, name)};
        RAISE NOTICE 'dropped {TABLE_SCHEMA}.{name}, which the baseline had created';
    END IF;"""
        for name, _ in reversed(TABLES)
    )
    body = f"""
DECLARE
    created text[] := ARRAY[]::text[];
BEGIN
    IF pg_catalog.to_regclass({literal(UNIQUE_PAIR_LEDGER)}) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = {literal(REFUSED)}, MESSAGE = {literal(INTERRUPTED)};
    END IF;
    IF pg_catalog.to_regclass({literal(BASELINE_LEDGER)}) IS NOT NULL THEN
        EXECUTE 'SELECT coalesce(pg_catalog.array_agg(table_name), ARRAY[]::text[])'
                ' FROM {BASELINE_LEDGER}' INTO created;
    END IF;
{drops}
    DROP TABLE IF EXISTS {BASELINE_LEDGER};
END
"""
    statements = [f"DO {dollar_quoted(body, 'baseline')}", DROP_PRIVATE_SCHEMA_IF_EMPTY]
    return f"""\
{offline.revision_header("meta_assets_cache baseline, downgrade")}
{offline.SESSION};

{offline.gated_statements(statements)}"""
