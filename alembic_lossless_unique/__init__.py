"""An Alembic operation that adds a unique constraint online, without losing a row.

    from alembic import op
    import alembic_lossless_unique  # registers op.ensure_unique_constraint / undo_unique_constraint
                                    # and the index form, op.ensure_unique_index / undo_unique_index

    def upgrade():
        op.ensure_unique_constraint("orders_customer_number_key", "orders",
                                    ["customer_id", "number"], keep_newest_by=["updated_at"])

    def downgrade():
        op.undo_unique_constraint("orders_customer_number_key", "orders",
                                  ["customer_id", "number"], keep_newest_by=["updated_at"])

and in env.py, `run_migrations(context, target_metadata=...)` for the migrator's session.

Its folders are its layers, as in Alembic's own package:

- ``operations``: the two operations, what they act on, and their story online and offline
- ``ddl``: the SQL each step runs, written once for every path
- ``runtime``: the migrator's session and settings: env.py's one call, connections, locks,
  standbys, the surroundings of the table
- ``autogenerate``: the rewriter that writes the safe operation
- ``reports``: preflight, the plan command, hazard codes, the run's summary
"""

__version__ = "1.1.0"

from alembic_lossless_unique.autogenerate.rewriter import (
    safe_unique_constraints,
    safe_unique_constraints_with,
)
from alembic_lossless_unique.operations import ops as _operations  # noqa: F401 (registers the ops)
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime.environment import run_migrations

__all__ = [
    "UniqueTarget",
    "__version__",
    "run_migrations",
    "safe_unique_constraints",
    "safe_unique_constraints_with",
]
