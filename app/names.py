"""The objects this package's revisions act on, named in one place."""

TABLE_SCHEMA = "public"
TABLE_NAME = "meta_assets_cache"
TABLE = f"{TABLE_SCHEMA}.{TABLE_NAME}"
# Autogenerate compares just the tables this package owns.
OWNED_TABLES = frozenset({TABLE_NAME})
# PostgreSQL's default name for the inline `unique (workspace_id, phone_number_id)` of the app's
# first migration: databases that never drifted already carry it, so every database converges on it.
CANONICAL_UNIQUE_NAME = "meta_assets_cache_workspace_id_phone_number_id_key"
PAIR = ("workspace_id", "phone_number_id")
# The plain unique index that the hand-written fix (seed_migration.sql) adds.
SEED_INDEX_NAME = "idx_meta_assets_cache_ws_phone_unique"

# Kept out of the API-exposed `public` schema: the version table, ledgers and archive.
PRIVATE_SCHEMA = "meta_assets_migration"
BASELINE_LEDGER = f"{PRIVATE_SCHEMA}.baseline_created"
VERSION_TABLE = f"{PRIVATE_SCHEMA}.alembic_version"
# The archive and ledger keep the names the first releases gave them, so databases those
# releases migrated still downgrade.
ARCHIVE_TABLE = "meta_assets_cache_archive"
ARCHIVE = f"{PRIVATE_SCHEMA}.{ARCHIVE_TABLE}"
LEDGER_TABLE = "unique_pair_steps"
UNIQUE_PAIR_LEDGER = f"{PRIVATE_SCHEMA}.{LEDGER_TABLE}"
# Prints what a logical subscriber needs of the private schema before the upgrade.
SUBSCRIBER_DDL_COMMAND = "python -m app.subscriber_ddl"

# Revision ids that no other project's numbering collides with, and the branch they form.
BRANCH_LABEL = "meta_assets_cache"
BASELINE_REVISION = "meta_assets_cache_0001"
UNIQUE_PAIR_REVISION = "meta_assets_cache_0002"
# What the revisions were called when this package kept its version table in public.
LEGACY_REVISIONS = {"0001": BASELINE_REVISION, "0002": UNIQUE_PAIR_REVISION}

# The unique pair, as ensure_unique_constraint / undo_unique_constraint take it. Per pair the
# newest row stays: greatest updated_at, then last_synced_at (NULL oldest), then id.
UNIQUE_PAIR = {
    "constraint_name": CANONICAL_UNIQUE_NAME,
    "table_name": TABLE_NAME,
    "columns": PAIR,
    "schema": TABLE_SCHEMA,
    "keep_newest_by": ("updated_at", "last_synced_at"),
    "row_identity": ("id",),
    "private_schema": PRIVATE_SCHEMA,
    "archive_table": ARCHIVE_TABLE,
    "ledger_table": LEDGER_TABLE,
    "adopt_first": (SEED_INDEX_NAME,),
}
