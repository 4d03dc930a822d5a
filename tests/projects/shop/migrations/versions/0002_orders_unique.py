"""One order per (customer_id, number), for ON CONFLICT upserts: of each number the latest
updated order stays, the others move to the archive, and their lines follow the order kept.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

import alembic_lossless_unique  # noqa: F401 (registers op.ensure_unique_constraint)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.ensure_unique_constraint(
        "orders_customer_id_number_key",
        "orders",
        ["customer_id", "number"],
        keep_newest_by=["updated_at"],
    )


def downgrade() -> None:
    op.undo_unique_constraint(
        "orders_customer_id_number_key",
        "orders",
        ["customer_id", "number"],
        keep_newest_by=["updated_at"],
    )
