"""Baseline: adopt public.meta_assets_cache as it is, or create it on an empty database.

A production database already has the table (and its rows, policies and grants): it is adopted
unchanged. An empty database (CI, local dev) gets a working table, with the unique constraint
the app's first migration declared, RLS enabled, and the `workspaces` table its foreign key
needs. The baseline notes which tables it created, and its downgrade drops only those.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import logging
from collections.abc import Sequence

from alembic import context, op

from alembic_lossless_unique import ledger, offline
from alembic_lossless_unique.catalog import relation_exists
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.settings import MigrationSettings

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("meta_assets")

CREATE_WORKSPACES = """
CREATE TABLE public.workspaces (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL DEFAULT 'ws',
    slug text,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

CREATE_META_ASSETS_CACHE = """
CREATE TABLE public.meta_assets_cache (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES public.workspaces(id) ON DELETE CASCADE,
    business_id text NULL,
    waba_id text NULL,
    phone_number_id text NULL,
    display_phone_number text NULL,
    verified_name text NULL,
    quality_rating text NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
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


def upgrade() -> None:
    if context.is_offline_mode():  # no connection: the script decides in the database
        op.execute(offline.baseline_upgrade_sql(CREATE_WORKSPACES, CREATE_META_ASSETS_CACHE))
        return
    db = Database(op.get_bind(), MigrationSettings.from_context(op.get_context()))
    ledger.create_ledger_schema(db)
    ledger.create_baseline_ledger(db)

    if not relation_exists(db, "public.workspaces"):
        create_table(db, "workspaces", CREATE_WORKSPACES)

    if relation_exists(db, "public.meta_assets_cache"):
        log.info("adopted the existing public.meta_assets_cache unchanged")
    else:
        create_table(db, "meta_assets_cache", CREATE_META_ASSETS_CACHE)


def downgrade() -> None:
    if context.is_offline_mode():
        op.execute(offline.baseline_downgrade_sql())
        return
    db = Database(op.get_bind(), MigrationSettings.from_context(op.get_context()))
    if ledger.unique_pair_ledger_exists(db):
        raise MigrationAbort(
            "an interrupted upgrade of revision 0002 left its ledger behind:"
            " run `alembic upgrade head` to finish it, then downgrade"
        )
    created = ledger.created_tables(db)
    for table in ("meta_assets_cache", "workspaces"):  # dependants first
        if table in created:
            db.execute(f"DROP TABLE IF EXISTS public.{table}")
            log.info("dropped public.%s, which the baseline had created", table)
    ledger.drop_baseline_ledger(db)
    ledger.drop_ledger_schema(db)


def create_table(db: Database, table: str, ddl: str) -> None:
    for statement in ddl.split(";"):
        db.execute(statement)
    ledger.record_created_table(db, table)
    log.info("created public.%s", table)
