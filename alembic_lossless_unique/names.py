"""Names of the objects the migrations touch, in one place."""

TABLE_SCHEMA = "public"
TABLE_NAME = "meta_assets_cache"
TABLE = f"{TABLE_SCHEMA}.{TABLE_NAME}"
# Autogenerate compares just the tables this package owns.
OWNED_TABLES = frozenset({TABLE_NAME})
# PostgreSQL's default name for the inline `unique (workspace_id, phone_number_id)` of the app's
# first migration: databases that never drifted already carry it, so every database converges on it.
CANONICAL_UNIQUE_NAME = "meta_assets_cache_workspace_id_phone_number_id_key"
PAIR = ("workspace_id", "phone_number_id")

# Kept out of the API-exposed `public` schema: nothing here is readable by anon or authenticated.
LEDGER_SCHEMA = "meta_assets_migration"
BASELINE_LEDGER = f"{LEDGER_SCHEMA}.baseline_created"
UNIQUE_PAIR_LEDGER = f"{LEDGER_SCHEMA}.unique_pair_steps"
ARCHIVE_NAME = "meta_assets_cache_archive"
ARCHIVE = f"{LEDGER_SCHEMA}.{ARCHIVE_NAME}"
# The dedupe's work list; it exists only inside the dedupe's transaction.
ROWS_TO_ARCHIVE = f"{LEDGER_SCHEMA}.rows_to_archive"

# The plain unique index that the hand-written fix (seed_migration.sql) adds.
SEED_INDEX_NAME = "idx_meta_assets_cache_ws_phone_unique"

# Supabase's API roles; absent on a plain PostgreSQL.
API_ROLES = ("anon", "authenticated")
