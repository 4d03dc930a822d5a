"""The unique pair: make (workspace_id, phone_number_id) safe for ON CONFLICT upserts.

Whatever the database holds (no unique and duplicate rows, a hand-made unique index, the
original constraint, or both), it ends with exactly one unique on the pair: the constraint
meta_assets_cache_workspace_id_phone_number_id_key that the model declares.

On the way, no write is blocked for longer than a lock timeout, no row is destroyed (duplicates
move to an archive the API cannot read), and rows whose phone_number_id is NULL are never touched.
The downgrade puts back exactly what the upgrade found.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import context, op

from alembic_lossless_unique import archive, catalog, convergence, ledger, offline
from alembic_lossless_unique.database import autocommit_database
from alembic_lossless_unique.report import RunReport

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TITLE = "meta_assets_cache unique (workspace_id, phone_number_id)"


def upgrade() -> None:
    if context.is_offline_mode():  # no connection: the script decides in the database
        op.execute(offline.unique_pair_upgrade_sql())
        return
    with autocommit_database(op.get_context()) as db:
        report = RunReport(TITLE)
        catalog.require_table_owned_by_current_role(db)

        with report.step("inspect"):
            ledger.create_unique_pair_ledger(db)
            archive.create_archive(db)
            steps = ledger.recorded_steps(db)
            found = catalog.pair_uniques(db)
            if not steps:
                ledger.record_step(db, "found", uniques=[u.describe() for u in found])
            plan = convergence.plan_convergence(found)
        created = "meta_assets_cache" in ledger.created_tables(db)
        report.fact("state found", convergence.describe_state(found, created))
        if steps:
            first_found = ", ".join(steps[0].detail.get("uniques", [])) or "no unique on the pair"
            report.fact("resumed", f"an interrupted earlier run, which first found: {first_found}")

        convergence.drop_invalid_indexes(db, plan, report)
        if plan.target is None:
            convergence.build_canonical_unique(db, report)
        else:
            convergence.adopt_existing_unique(db, plan.target, steps, report)
        with report.step("drop redundant uniques"):
            convergence.drop_redundant_uniques(db, plan, report)
        for unique in plan.untouched:
            report.fact("left alone", f"{unique.describe()}: partial or expression unique")

        report.log_summary()


def downgrade() -> None:
    if context.is_offline_mode():
        op.execute(offline.unique_pair_downgrade_sql())
        return
    with autocommit_database(op.get_context()) as db:
        report = RunReport(f"undo {TITLE}")
        catalog.require_table_owned_by_current_role(db)
        steps = ledger.recorded_steps(db)

        with report.step("recreate dropped uniques"):
            convergence.recreate_dropped_uniques(db, steps)
        with report.step("undo the canonical constraint"):
            convergence.undo_canonical_constraint(db, steps)
        with report.step("restore archived rows"):
            report.fact("rows restored", archive.restore_archived_rows(db))
        archive.drop_archive(db)
        ledger.drop_unique_pair_ledger(db)

        report.log_summary()
