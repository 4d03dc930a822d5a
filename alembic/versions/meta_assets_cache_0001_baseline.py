"""Baseline: adopt public.meta_assets_cache as it is, or create it on an empty database.

A production database already has the table (and its rows, policies and grants): it is adopted
unchanged. An empty database (CI, local dev) gets a working table, with the unique constraint
the app's first migration declared, RLS enabled, and the `workspaces` table its foreign key
needs. The baseline notes which tables it created, and its downgrade drops only those.

Revision ID: meta_assets_cache_0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import context, op

from alembic_lossless_unique.runtime.database import transactional_database
from app import baseline
from app.names import BASELINE_REVISION, BRANCH_LABEL

revision: str = BASELINE_REVISION
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = (BRANCH_LABEL,)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if context.is_offline_mode():  # no connection: the script decides in the database
        op.execute(baseline.upgrade_sql())
        return
    baseline.upgrade(transactional_database(op.get_context()))


def downgrade() -> None:
    if context.is_offline_mode():
        op.execute(baseline.downgrade_sql())
        return
    baseline.downgrade(transactional_database(op.get_context()))
