"""The unique pair: make (workspace_id, phone_number_id) safe for ON CONFLICT upserts.

Whatever the database holds (no unique and duplicate rows, a hand-made unique index, the
original constraint, or both), it ends with exactly one unique on the pair: the constraint
meta_assets_cache_workspace_id_phone_number_id_key that the model declares.

On the way, no write is blocked for longer than a lock timeout, no row is destroyed (duplicates
move to an archive the API cannot read, and rows pointing at them follow the row kept), and
rows whose phone_number_id is NULL are never touched. The downgrade puts back exactly what the
upgrade found, in one transaction.

Revision ID: meta_assets_cache_0002
Revises: meta_assets_cache_0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

import alembic_lossless_unique  # noqa: F401 (registers op.ensure_unique_constraint)
from app.names import BASELINE_REVISION, UNIQUE_PAIR, UNIQUE_PAIR_REVISION

revision: str = UNIQUE_PAIR_REVISION
down_revision: str | None = BASELINE_REVISION
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.ensure_unique_constraint(**UNIQUE_PAIR)


def downgrade() -> None:
    op.undo_unique_constraint(**UNIQUE_PAIR)
