"""inventory.stock_counts, with no unique on its key yet.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA inventory")
    op.execute(
        """
        CREATE TABLE inventory.stock_counts (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            warehouse_id integer,
            sku text,
            "Batch Code" text,
            quantity integer NOT NULL DEFAULT 0,
            unit_cost numeric(12, 2),
            total_value numeric GENERATED ALWAYS AS (quantity * unit_cost) STORED,
            revision integer,
            recorded_at timestamp with time zone,
            tags text[],
            note text
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE inventory.stock_counts")
    op.execute("DROP SCHEMA inventory")
