"""One count per (warehouse, sku, batch): the latest revision of each is kept, the others are
archived in the private schema `inventory_private`.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

import alembic_lossless_unique  # noqa: F401 (registers op.ensure_unique_constraint)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNIQUE_COUNT = {
    "constraint_name": "stock_counts_warehouse_sku_batch_key",
    "table_name": "stock_counts",
    "columns": ["warehouse_id", "sku", "Batch Code"],
    "schema": "inventory",
    "keep_newest_by": ["revision", "recorded_at"],
    "row_identity": ["id"],
    "private_schema": "inventory_private",
}


def upgrade() -> None:
    op.ensure_unique_constraint(**UNIQUE_COUNT)


def downgrade() -> None:
    op.undo_unique_constraint(**UNIQUE_COUNT)
