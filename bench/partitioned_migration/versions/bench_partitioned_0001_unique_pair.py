"""The app's unique pair, with (id, workspace_id) as the row identity: the primary key a table
hash-partitioned on workspace_id must have, given to the plain table too so both compare alike.

Revision ID: bench_partitioned_0001
Revises:
Create Date: 2026-12-06
"""

from alembic import op

import alembic_lossless_unique  # noqa: F401 (registers op.ensure_unique_constraint)
from app.names import UNIQUE_PAIR

revision = "bench_partitioned_0001"
down_revision = None
branch_labels = None
depends_on = None

# The same archive, ledger and private schema as the app's revision, so the benchmark's row
# census reads this run's archive where it reads the app's; no seed index to adopt here.
ARGUMENTS = {**UNIQUE_PAIR, "row_identity": ("id", "workspace_id"), "adopt_first": ()}


def upgrade() -> None:
    op.ensure_unique_constraint(**ARGUMENTS)


def downgrade() -> None:
    op.undo_unique_constraint(**ARGUMENTS)
