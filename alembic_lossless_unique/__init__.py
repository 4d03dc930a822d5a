"""An Alembic operation that adds a unique constraint online, without losing a row.

    from alembic import op
    import alembic_lossless_unique  # registers op.ensure_unique_constraint / undo_unique_constraint

    def upgrade():
        op.ensure_unique_constraint("orders_customer_number_key", "orders",
                                    ["customer_id", "number"], keep_newest_by=["updated_at"])

    def downgrade():
        op.undo_unique_constraint("orders_customer_number_key", "orders",
                                  ["customer_id", "number"], keep_newest_by=["updated_at"])

and in env.py, `run_migrations(context, target_metadata=...)` for the migrator's session.

Mechanics, one job per module:

- ``target``: what an operation acts on, and every name derived from it
- ``plan``: the one decision (build, adopt, rename, drop), as a query for every reader
- ``checks``: every refusal, before anything changes (refuse, or report for preflight)
- ``dedupe``: duplicates moved to the archive, child rows re-pointed, counts checked
- ``restore``: archived rows back, child rows pointed back, checked
- ``foreign_keys``: the foreign keys into the table and out of it, as the catalog has them
- ``comparisons``: equality as the unique index judges it, whatever the column types
- ``guard``: new duplicates rejected while the constraint is being built
- ``indexes``: concurrent builds and drops, catalog changes under lock retries, progress
- ``locks``: one migrator at a time; short lock timeouts with bounded retries
- ``replicas``: how far the physical standbys lag, and the pacer that waits for them
- ``ledger``: what an operation found and did, for re-runs and the downgrade
- ``private_schema``: where archive, ledger and guard live, closed to every other role
- ``session``: pooler refusal, a safe search_path, a clean exit
- ``surroundings``: foreign keys, triggers, publications: announced, never hidden; a
  publication that would carry the private tables to subscribers not declared ready: refused
- ``convergence``: the story, online; ``offline``: the same decisions as a standalone script
- ``rerunnable``: that script can always be run again (the one module that hooks Alembic)
- ``environment``: the one call in env.py; ``preflight``: the read-only report
- ``revision_plan``: ``python -m alembic_lossless_unique plan``; ``pending``: the operations the
  pending revisions would run; ``hazards``: the versioned hazard codes; ``expected_plan``: the
  fingerprint, and ``-x expect_plan``'s refusal
- ``operations``: the two Alembic operations; ``database``, ``database_url``, ``settings``,
  ``sqltext``, ``errors``: sessions, the URL, the knobs, SQL text, one-line failures
"""

__version__ = "1.1.0"

from alembic_lossless_unique import operations as _operations  # noqa: F401 (registers the ops)
from alembic_lossless_unique.autogenerate import (
    safe_unique_constraints,
    safe_unique_constraints_with,
)
from alembic_lossless_unique.environment import run_migrations
from alembic_lossless_unique.target import UniqueTarget

__all__ = [
    "UniqueTarget",
    "__version__",
    "run_migrations",
    "safe_unique_constraints",
    "safe_unique_constraints_with",
]
